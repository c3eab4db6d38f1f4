"""Unsubscribe: the personal link in every newsletter, its page, and the RFC 8058 one-click POST."""

from __future__ import annotations

import re

from sqlalchemy import func, select

from newsletter import stats, tokens
from newsletter.extensions import db
from newsletter.mail import builders, smtp
from newsletter.models import Subscriber
from tests.conftest import csrf_token, link_in, path_of

LONG_PUBLIC_URL = (
    "https://newsletter-subscriptions.customer-communication.example-company.example.com/nl"
)


def subscriber(email: str) -> Subscriber | None:
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def subscriber_count() -> int:
    return db.session.scalar(select(func.count()).select_from(Subscriber))


def send_newsletter(smtp_server, reader: Subscriber):
    """Send one edition to ``reader`` the way campaigns do; return what the server received."""
    template = builders.edition_template(
        "November news", "<p>Hello, readers.</p>", "Hello, readers."
    )
    smtp.send(template.render(reader.email, {"unsubscribe_url": tokens.unsubscribe_url(reader)}))
    return smtp_server.messages[-1]


def one_click(app, path: str, **kwargs):
    """POST like a mail client: no cookies, no CSRF token, no Referer."""
    client = app.test_client(use_cookies=False)
    return client.post(path, **kwargs)


def gmail_one_click(app, path: str):
    return one_click(
        app,
        path,
        data=b"List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )


def test_newsletter_carries_the_link_in_both_parts_and_plain_list_headers_on_the_wire(
    app, subscribed, smtp
):
    assert len(LONG_PUBLIC_URL) > 80
    subscribed("wire@example.com")
    app.config["PUBLIC_URL"] = LONG_PUBLIC_URL
    url = tokens.unsubscribe_url(subscriber("wire@example.com"))
    assert url.startswith(f"{LONG_PUBLIC_URL}/unsubscribe/") and len(url) > 140

    mail = send_newsletter(smtp, subscriber("wire@example.com"))
    assert link_in(mail.text, "unsubscribe") == url
    assert link_in(mail.html, "unsubscribe") == url
    raw = mail.data.decode("ascii")
    header_block = raw.split("\r\n\r\n", 1)[0]
    assert f"\r\nList-Unsubscribe: <{url}>\r\n" in header_block  # one line, not folded
    assert "\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in header_block
    assert re.search(r"\r\nList-Id: [^\r\n]+\r\n", header_block)
    assert "=?utf-8?" not in header_block.lower()
    assert mail.message["List-Unsubscribe"] == f"<{url}>"

    response = gmail_one_click(app, url.replace(LONG_PUBLIC_URL, "", 1))
    assert response.status_code == 200
    assert subscriber("wire@example.com") is None


def test_one_click_post_exactly_as_gmail_sends_it_erases_at_once(app, subscribed):
    subscribed("gmail@example.com")
    path = path_of(tokens.unsubscribe_url(subscriber("gmail@example.com")))

    response = gmail_one_click(app, path)

    assert response.status_code == 200  # a page, not a redirect
    assert "Location" not in response.headers and "Set-Cookie" not in response.headers
    assert "unsubscribed" in response.get_data(as_text=True)
    assert subscriber_count() == 0
    assert stats.monthly(["erased_unsubscribe"])
    assert sum(m["erased_unsubscribe"] for m in stats.monthly(["erased_unsubscribe"]).values()) == 1


def test_one_click_post_as_multipart_form_data(app, subscribed):
    subscribed("multipart@example.com")
    path = path_of(tokens.unsubscribe_url(subscriber("multipart@example.com")))
    response = one_click(
        app, path, data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data"
    )
    assert response.status_code == 200
    assert subscriber_count() == 0


def test_one_click_from_another_origin_and_with_an_empty_body(app, subscribed):
    subscribed("origin@example.com")
    subscribed("empty@example.com")
    origin_path = path_of(tokens.unsubscribe_url(subscriber("origin@example.com")))
    empty_path = path_of(tokens.unsubscribe_url(subscriber("empty@example.com")))
    response = one_click(
        app,
        origin_path,
        data=b"List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
        headers={"Origin": "https://mail.google.com"},
    )
    assert response.status_code == 200
    assert one_click(app, empty_path).status_code == 200
    assert subscriber_count() == 0


def test_get_and_head_change_nothing(app, client, subscribed):
    subscribed("scanner@example.com")
    path = path_of(tokens.unsubscribe_url(subscriber("scanner@example.com")))
    for _ in range(3):
        page = client.get(path)
        assert page.status_code == 200
        assert client.head(path).status_code == 200
    body = page.get_data(as_text=True)
    assert body.count("<button") == 1 and "Unsubscribe" in body
    assert subscriber_count() == 1


def test_the_button_on_the_page_works_with_or_without_csrf_token(app, client, subscribed):
    subscribed("button@example.com")
    subscribed("button2@example.com")
    path = path_of(tokens.unsubscribe_url(subscriber("button@example.com")))
    page = client.get(path).get_data(as_text=True)
    action = re.search(r'<form method="post" action="([^"]+)"', page).group(1)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page))
    assert action == path
    assert client.post(action, data=fields).status_code == 200
    assert subscriber("button@example.com") is None

    other = path_of(tokens.unsubscribe_url(subscriber("button2@example.com")))
    with_token = {**fields, "csrf_token": csrf_token(client)}
    assert client.post(other, data=with_token).status_code == 200
    assert subscriber_count() == 0


def test_repeat_and_unknown_subscriber_get_the_same_page(app, subscribed):
    subscribed("repeat@example.com")
    subscribed("stays@example.com")
    path = path_of(tokens.unsubscribe_url(subscriber("repeat@example.com")))
    first = gmail_one_click(app, path)
    second = gmail_one_click(app, path)
    unknown = gmail_one_click(
        app, f"/unsubscribe/{tokens.make(tokens.Purpose.UNSUBSCRIBE, 'nobody')}"
    )
    assert first.status_code == second.status_code == unknown.status_code == 200
    assert first.get_data() == second.get_data() == unknown.get_data()
    assert [s.email for s in db.session.scalars(select(Subscriber))] == ["stays@example.com"]
    counts = stats.monthly(["erased_unsubscribe"])
    assert sum(m["erased_unsubscribe"] for m in counts.values()) == 1  # repeats count nothing


def test_tampered_and_foreign_tokens_get_the_400_page_and_change_nothing(app, client, subscribed):
    subscribed("tamper@example.com")
    reader = subscriber("tamper@example.com")
    path = path_of(tokens.unsubscribe_url(reader))
    tampered = path[:-3] + ("aaa" if not path.endswith("aaa") else "bbb")
    foreign = [
        tampered,
        f"/unsubscribe/{tokens.make(tokens.Purpose.MANAGE, reader.token_key)}",
        f"/unsubscribe/{tokens.make(tokens.Purpose.CONFIRM, reader.token_key)}",
        "/unsubscribe/not-a-token",
    ]
    for bad in foreign:
        assert client.get(bad).status_code == 400, bad
        response = gmail_one_click(app, bad)
        assert response.status_code == 400, bad
        assert "not valid" in response.get_data(as_text=True)
    assert subscriber_count() == 1


def test_old_token_does_nothing_to_a_later_subscription_of_the_same_address(app, subscribed):
    subscribed("returns@example.com")
    old_path = path_of(tokens.unsubscribe_url(subscriber("returns@example.com")))
    assert gmail_one_click(app, old_path).status_code == 200
    assert subscriber_count() == 0

    subscribed("returns@example.com")
    new = subscriber("returns@example.com")
    assert path_of(tokens.unsubscribe_url(new)) != old_path
    assert gmail_one_click(app, old_path).status_code == 200
    assert subscriber("returns@example.com") is not None
    assert gmail_one_click(app, path_of(tokens.unsubscribe_url(new))).status_code == 200
    assert subscriber("returns@example.com") is None


def test_unsubscribe_link_carries_no_address(app, subscribed):
    import base64

    subscribed("hidden.reader@example.com")
    url = tokens.unsubscribe_url(subscriber("hidden.reader@example.com"))
    assert "hidden" not in url
    for piece in url.rsplit("/", 1)[1].split("."):
        decoded = base64.urlsafe_b64decode(piece + "=" * (-len(piece) % 4))
        assert b"hidden" not in decoded and b"example" not in decoded


SUBRESOURCE = re.compile(r"<(script|img|iframe|link|source|video|audio|embed|object)\b[^>]*>", re.I)
URL_ATTRIBUTE = re.compile(r"\b(src|href|srcset|data|poster)=\"([^\"]*)\"", re.I)


def assert_loads_nothing_third_party(response) -> None:
    assert response.headers["Referrer-Policy"] == "same-origin"
    assert "default-src 'self'" in response.headers["Content-Security-Policy"]
    body = response.get_data(as_text=True)
    assert '<meta name="referrer" content="same-origin">' in body
    assert "@import" not in body and "url(" not in body
    tags = SUBRESOURCE.findall(body)
    for tag in SUBRESOURCE.finditer(body):
        for _, value in URL_ATTRIBUTE.findall(tag.group(0)):
            assert value.startswith("/") and not value.startswith("//"), (tag.group(0), tags)


def test_token_pages_load_nothing_from_third_parties_and_keep_the_referrer(
    app, client, work, smtp, subscribed
):
    confirm_path = subscribed("pages@example.com")
    reader = subscriber("pages@example.com")
    manage_path = path_of(tokens.manage_url(reader))
    pages = [
        client.get(confirm_path),
        client.get(path_of(tokens.unsubscribe_url(reader))),
        client.get(manage_path),
        client.get("/manage"),
        client.get(f"{manage_path}x"),  # error pages carry the token in their URL too
        client.get("/unsubscribe/bad-token"),
    ]
    for response in pages:
        assert_loads_nothing_third_party(response)
    assert (
        gmail_one_click(app, path_of(tokens.unsubscribe_url(reader))).headers["Referrer-Policy"]
        == "same-origin"
    )
