"""The local outbox of ``make run``: mail caught in a Maildir, listed at /dev/outbox."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect
from sqlalchemy import select

from newsletter import create_app
from newsletter.extensions import db, get_redis
from newsletter.models import Subscriber
from tests.conftest import PUBLIC_URL, csrf_token, outbox_config, path_of

MAIL_LINK = re.compile(r'href="(/dev/outbox/[^"]+)"')


@pytest.fixture
def app_config(outbox):
    return outbox_config(outbox)


def sign_up(client, email):
    response = client.post(
        "/subscribe", data={"email": email, "consent": "yes", "csrf_token": csrf_token(client)}
    )
    assert response.status_code == 200


def test_outbox_is_empty_before_any_mail(client):
    page = client.get("/dev/outbox")
    assert page.status_code == 200
    assert "No mail caught yet" in page.get_data(as_text=True)


def test_outbox_lists_caught_mail_newest_first(client, work):
    sign_up(client, "first@example.com")
    work()
    sign_up(client, "second@example.com")
    work()
    page = client.get("/dev/outbox").get_data(as_text=True)
    assert page.count("Please confirm your newsletter subscription") == 2
    assert page.index("second@example.com") < page.index("first@example.com")


def test_caught_mail_shows_its_text_with_a_clickable_confirmation_link(client, work):
    sign_up(client, "reader@example.com")
    work()
    [mail_path] = MAIL_LINK.findall(client.get("/dev/outbox").get_data(as_text=True))
    page = client.get(mail_path)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "reader@example.com" in html and "Please confirm" in html
    links = re.findall(r'<a href="(https?://[^"]+/confirm/[^"]+)"', html)
    assert links and all(link.startswith(f"{PUBLIC_URL}/confirm/") for link in links)
    confirm_path = path_of(links[0])
    assert client.get(confirm_path).status_code == 200
    client.post(confirm_path, data={"csrf_token": csrf_token(client, confirm_path)})
    assert db.session.scalar(select(Subscriber.email)) == "reader@example.com"


@pytest.mark.parametrize("key", ["1795930278.M1P1Q1.nohost", "..", "a%2F..%2F..%2Fetc"])
def test_unknown_mail_is_404(client, work, key):
    sign_up(client, "someone@example.com")
    work()
    assert client.get(f"/dev/outbox/{key}").status_code == 404


@pytest.mark.parametrize(
    "settings",
    [
        {"NEWSLETTER_ENV": "testing"},
        {"NEWSLETTER_ENV": "production"},
        {"NEWSLETTER_ENV": "development", "DEV_OUTBOX_DIR": ""},
    ],
)
def test_outbox_does_not_exist_outside_make_run(base_environ, tmp_path, settings):
    environ = {**base_environ, "DEV_OUTBOX_DIR": str(tmp_path), **settings}
    app = create_app(environ=environ)
    client = app.test_client()
    with app.app_context():
        try:
            assert client.get("/dev/outbox").status_code == 404
            assert client.get("/dev/outbox/1795930278.M1P1Q1.host").status_code == 404
        finally:
            # The 404 page read the look from the database: close that connection, or it
            # outlives the test (and SQLite's locks with it).
            db.session.remove()
            db.engine.dispose()
            get_redis().close()
    assert "dev" not in app.blueprints


@pytest.mark.browser
def test_newcomer_confirms_through_the_outbox_in_a_browser(page, live_server, work):
    page.goto("/")
    page.get_by_label("Email address").fill("newcomer@example.com")
    page.locator("#consent").check()
    page.get_by_role("button", name="Subscribe").click()
    expect(page.get_by_role("heading", name="Check your inbox")).to_be_visible()
    work()

    page.goto("/dev/outbox")
    page.get_by_role("link", name="Please confirm your newsletter subscription").click()
    page.locator("#links a").first.click()
    page.get_by_role("button", name="Yes, subscribe me").click()
    expect(page.get_by_role("heading", name="You're subscribed")).to_be_visible()
    assert db.session.scalar(select(Subscriber.email)) == "newcomer@example.com"


def test_caught_mail_shows_its_html_sandboxed_its_headers_and_its_source(client, work):
    sign_up(client, "reader@example.com")
    work()
    [mail_path] = MAIL_LINK.findall(client.get("/dev/outbox").get_data(as_text=True))
    page = client.get(mail_path).get_data(as_text=True)
    frame = re.search(r'<iframe class="mail-html" src="([^"]+)" sandbox="" title="[^"]+"', page)
    assert frame, "the HTML part is shown in a frame with every sandbox restriction"
    html = client.get(frame.group(1))
    assert html.mimetype == "text/html" and "Confirm subscription" in html.get_data(as_text=True)
    policy = html.headers["Content-Security-Policy"]
    assert "sandbox" in policy and "default-src 'none'" in policy
    assert "frame-ancestors 'self'" in policy
    headers = re.search(r'<dl class="data card" id="headers">(.*?)</dl>', page, re.S).group(1)
    for name in ("Message-ID", "Date", "Subject", "MIME-Version"):
        assert f"<dt>{name}</dt>" in headers
    assert '<pre class="mail-text" id="raw">' in page
    assert "Content-Type: multipart/alternative" in page
