"""Bounces made by a real Postfix: an edition sent with our VERP sender comes back.

The test starts a throwaway Postfix (Debian's postfix package; root, as CI runs) with its
own config_directory, queue_directory and data_directory under /tmp, listening on a free
loopback port. Its local domain mx.example.net has no users, so local(8) bounces every
message to it (5.1.1); soft.example.net is relayed to the test's SMTP server, which
answers 451, and with maximal_queue_lifetime = 0 Postfix gives up at once with a 4.x.x
notice. Our domain news.example.com is relayed to the test's SMTP server too, which
captures the DSN as our MX would receive it.

tests/data/bounces/postfix-3.7-unknown-user.eml was captured this way:
``NL_CAPTURE_POSTFIX_DSN=tests/data/bounces/postfix-3.7-unknown-user.eml pytest
tests/test_bounce_postfix.py -k unknown``.
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from newsletter import bounces, verp
from newsletter.extensions import db
from newsletter.mail import builders as mailing
from newsletter.models import Campaign, Subscriber
from tests.bounce_mail import (
    BOUNCE_ADDRESS,
    SAMPLES,
    add_edition,
    add_reader,
    bounces_read,
    return_path,
    rewritten,
)
from tests.postfix import throwaway_postfix

ROOT = Path(__file__).resolve().parent.parent
CAPTURED = SAMPLES / "postfix-3.7-unknown-user.eml"

SETTINGS = """\
mynetworks = 127.0.0.0/8
# Accept any local part at SMTP time, so that local(8) bounces it after queueing.
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject
transport_maps = inline:{{news.example.com=smtp:[127.0.0.1]:{capture_port},
    soft.example.net=smtp:[127.0.0.1]:{capture_port}}}
maximal_queue_lifetime = 0
bounce_queue_lifetime = 0
"""


@pytest.fixture(scope="module")
def postfix(smtp_server):
    """A throwaway Postfix on 127.0.0.1; returns its SMTP port."""
    with throwaway_postfix(SETTINGS.format(capture_port=smtp_server.port)) as server:
        yield server.port


def _send_edition_and_catch_the_notice(app, smtp, postfix_port, rcpt, subscriber_id, campaign):
    """Send an edition built by the project, from our VERP sender, through Postfix."""
    template = mailing.edition_template("Our news", "<p>Hello</p>", "Hello")
    mail = template.render(rcpt, {"unsubscribe_url": "http://news.example.org/unsubscribe/x"})
    sender = verp.envelope_sender("edition", campaign, subscriber_id)
    assert sender == return_path(campaign, subscriber_id)
    with smtplib.SMTP("127.0.0.1", postfix_port, timeout=30) as connection:
        connection.sendmail(sender, [rcpt], mail.data)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        notices = [m for m in smtp.messages if m.rcpt_tos == [sender]]
        if notices:
            assert notices[0].mail_from in ("", "<>")  # a bounce has the null sender
            return notices[0].data
        time.sleep(0.1)
    raise AssertionError("no notice came back from Postfix")


@pytest.fixture
def app_config():
    return {"BOUNCE_ADDRESS": BOUNCE_ADDRESS}


@pytest.mark.slow
def test_a_postfix_unknown_user_notice_erases_the_reader(app, smtp, postfix):
    reader_id = add_reader("reader@example.net")
    campaign_id = add_edition()
    notice = _send_edition_and_catch_the_notice(
        app, smtp, postfix, "nosuchuser@mx.example.net", reader_id, campaign_id
    )
    if os.environ.get("NL_CAPTURE_POSTFIX_DSN"):
        Path(os.environ["NL_CAPTURE_POSTFIX_DSN"]).write_bytes(notice)
    assert b"Status: 5.1.1" in notice

    # Through the command the MTA's pipe runs, as a real process reading standard input.
    result = _bounces_read(app, notice)

    assert result.returncode == 0, result.stderr
    summary = f"erase_bounced subscriber {reader_id} campaign {campaign_id}"
    assert summary in result.stdout.decode()
    db.session.expire_all()
    assert db.session.get(Subscriber, reader_id) is None
    assert db.session.get(Campaign, campaign_id).bounced == 1


@pytest.mark.slow
def test_a_postfix_notice_after_a_451_counts_a_soft_bounce(app, smtp, postfix):
    reader_id = add_reader("reader@example.net")
    campaign_id = add_edition()
    smtp.handler.rcpt_replies["busy@soft.example.net"] = "451 4.2.1 Mailbox busy, try later"
    notice = _send_edition_and_catch_the_notice(
        app, smtp, postfix, "busy@soft.example.net", reader_id, campaign_id
    )
    assert b"Action: failed" in notice and b"Status: 4.2.1" in notice

    outcome = bounces.handle(notice)

    assert (outcome.act, outcome.why) == (bounces.Act.COUNT_SOFT_BOUNCE, "1 in a row")
    subscriber = db.session.get(Subscriber, reader_id)
    assert (subscriber.soft_bounces, subscriber.last_soft_bounce_campaign_id) == (1, campaign_id)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("reply", "status"),
    [
        ("552 5.2.2 Mailbox full, over quota", b"Status: 5.2.2"),
        ("554 5.7.1 Message refused by policy: client host blocked", b"Status: 5.7.1"),
    ],
)
def test_a_postfix_notice_of_a_full_mailbox_or_a_policy_block_is_a_soft_bounce(
    app, smtp, postfix, reply, status
):
    """Permanent for Postfix, but not the reader's fault: counted, nobody erased."""
    reader_id = add_reader("reader@example.net")
    campaign_id = add_edition()
    smtp.handler.rcpt_replies["full@soft.example.net"] = reply
    notice = _send_edition_and_catch_the_notice(
        app, smtp, postfix, "full@soft.example.net", reader_id, campaign_id
    )
    assert b"Action: failed" in notice and status in notice

    result = _bounces_read(app, notice)

    assert result.returncode == 0, result.stderr
    assert f"count_soft_bounce subscriber {reader_id}" in result.stdout.decode()
    db.session.expire_all()
    subscriber = db.session.get(Subscriber, reader_id)
    assert subscriber is not None and subscriber.soft_bounces == 1
    assert db.session.get(Campaign, campaign_id).bounced == 0


def test_the_captured_postfix_notice_erases_the_reader_it_names(app):
    """The committed capture, readdressed to a VERP address of this test's reader."""
    reader_id = add_reader("captured@example.net")
    campaign_id = add_edition()
    message = rewritten(
        CAPTURED.read_bytes(), "To", return_path(campaign_id, reader_id), [], "captured@example.net"
    )
    assert bounces.classify(message).kind is bounces.VerdictKind.PERMANENT
    assert bounces.handle(message).act is bounces.Act.ERASE_BOUNCED
    assert db.session.get(Subscriber, reader_id) is None


def _bounces_read(app, message: bytes) -> subprocess.CompletedProcess:
    """``flask bounces read`` in a real process; the factory line is added by the wiring."""
    environ = {
        "NEWSLETTER_ENV": "testing",
        "NEWSLETTER_INSTANCE": app.instance_path,
        "SECRET_KEY": app.config["SECRET_KEY"],
        "DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"].replace("+psycopg", ""),
        "REDIS_URL": app.config["REDIS_URL"],
        "BOUNCE_ADDRESS": BOUNCE_ADDRESS,
    }
    return bounces_read(message, environ)
