"""Settings an operator types: converted once at start, or refused with one clear line."""

from __future__ import annotations

import email
import email.policy

import pytest

from newsletter import config, create_app
from newsletter.extensions import db, get_redis
from tests.conftest import SECRET


def test_secret_key_check_and_message_agree():
    with pytest.raises(config.ConfigError, match="at least 32"):
        config.load({"SECRET_KEY": "k" * 31})
    assert config.load({"SECRET_KEY": "k" * 32})["SECRET_KEY"] == "k" * 32


@pytest.mark.parametrize(
    "value, says",
    [
        ("0", "must be at least 1, not 0"),
        ("65", "must be at most 64, not 65"),
        ("four", "must be a whole number, not 'four'"),
        ("2.5", "must be a whole number, not '2.5'"),
    ],
)
def test_smtp_connections_out_of_range_is_refused_with_one_clear_line(value, says):
    with pytest.raises(config.ConfigError, match=f"^SMTP_CONNECTIONS {says}$"):
        config.load({"SECRET_KEY": SECRET, "SMTP_CONNECTIONS": value})


def test_smtp_connections_defaults_to_four_and_takes_what_is_given():
    assert config.load({"SECRET_KEY": SECRET})["SMTP_CONNECTIONS"] == 4
    assert config.load({"SECRET_KEY": SECRET, "SMTP_CONNECTIONS": "16"})["SMTP_CONNECTIONS"] == 16


def test_idn_public_url_and_list_id_are_converted_to_ascii_at_start():
    loaded = config.load(
        {
            "SECRET_KEY": SECRET,
            "PUBLIC_URL": "https://Nachrichten.Bücher.example/über/",
            "LIST_ID": "Bücher-News <news.bücher.example>",
        }
    )
    assert loaded["PUBLIC_URL"] == "https://nachrichten.xn--bcher-kva.example/%C3%BCber"
    assert loaded["LIST_ID"] == "=?utf-8?q?B=C3=BCcher-News?= <news.xn--bcher-kva.example>"


def test_an_edition_goes_out_with_an_idn_public_url_and_list_id(
    base_environ, migrated, smtp, subscribed_reader
):
    """Every reader counted failed before: the non-ASCII URL could not be put on the wire."""
    from sqlalchemy import select

    from newsletter import campaigns
    from newsletter.models import Campaign
    from tests.conftest import run_jobs

    environ = {
        **base_environ,
        "PUBLIC_URL": "http://nachrichten.bücher.example",
        "LIST_ID": "Bücher-News <news.bücher.example>",
    }
    app = create_app(test_config={"TESTING": True}, environ=environ)
    with app.app_context():
        try:
            campaign_id = campaigns.create("Hallo", "<p>Hallo</p>").id
            campaigns.schedule(campaign_id, "now")
            for _ in range(3):
                run_jobs(app)  # the jobs share this thread's session and detach its objects
            sent = db.session.scalar(select(Campaign).where(Campaign.id == campaign_id))
            assert (sent.status.value, sent.sent, sent.failed) == ("sent", 1, 0)
        finally:
            db.session.remove()
            db.engine.dispose()
            get_redis().close()
    message = email.message_from_bytes(smtp.messages[-1].data, policy=email.policy.default)
    assert message["List-Unsubscribe"].startswith("<http://nachrichten.xn--bcher-kva.example/")
    assert message["List-Id"].endswith("<news.xn--bcher-kva.example>")


@pytest.fixture
def subscribed_reader(app, subscribed, smtp):
    subscribed("idn.reader@example.com")
    db.session.remove()
    smtp.reset()


def test_hsts_behind_a_tls_proxy_only(base_environ, migrated):
    proxied = create_app(environ={**base_environ, "PROXY_COUNT": "1"})
    client = proxied.test_client()
    with proxied.app_context():
        try:
            secure = client.get("/subscribe", headers={"X-Forwarded-Proto": "https"})
            plain = client.get("/subscribe")
        finally:
            db.session.remove()
            db.engine.dispose()
            get_redis().close()
    assert secure.headers["Strict-Transport-Security"] == "max-age=31536000"
    assert "Strict-Transport-Security" not in plain.headers
