"""The sign-up journey: form, confirmation mail, confirm page and button."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from newsletter.extensions import db
from newsletter.models import ConsentText, PendingSignup, Subscriber
from tests.conftest import PUBLIC_URL, csrf_token, link_in, path_of, post_signup


def count(model):
    return db.session.scalar(select(func.count()).select_from(model))


def test_full_journey_stores_subscriber_with_proof_of_consent(client, work, smtp):
    response = post_signup(client, "Reader@Example.COM")
    assert response.status_code == 200
    assert "Check your inbox" in response.get_data(as_text=True)
    assert count(Subscriber) == 0

    work()
    [mail] = smtp.messages
    assert mail.rcpt_tos == ["reader@example.com"]
    message = mail.message
    assert message.get_content_type() == "multipart/alternative"
    assert message["From"] == "Example News <news@example.com>"
    assert message["Message-ID"] and message["Date"]
    text_link = link_in(mail.text, "confirm")
    assert text_link == link_in(mail.html, "confirm")
    assert text_link.startswith(f"{PUBLIC_URL}/confirm/")

    page = client.get(path_of(text_link))
    assert page.status_code == 200 and "Yes, subscribe me" in page.get_data(as_text=True)
    assert count(Subscriber) == 0

    response = client.post(
        path_of(text_link), data={"csrf_token": csrf_token(client, path_of(text_link))}
    )
    assert response.status_code == 200 and "subscribed" in response.get_data(as_text=True)
    subscriber = db.session.scalar(select(Subscriber))
    assert subscriber.email == "reader@example.com"
    assert subscriber.requested_at <= subscriber.confirmed_at
    assert subscriber.consent_text.text in client.get("/subscribe").get_data(as_text=True)
    assert len(subscriber.consent_text.sha256) == 64
    assert subscriber.ip_prefix is None  # off unless the operator turns it on
    assert count(PendingSignup) == 0  # confirming consumed the sign-up


def test_confirm_get_and_head_change_nothing(client, work, smtp):
    post_signup(client, "scan@example.com")
    work()
    path = path_of(link_in(smtp.messages[0].text, "confirm"))
    for _ in range(3):
        assert client.get(path).status_code == 200
        assert client.head(path).status_code == 200
    assert count(Subscriber) == 0 and count(PendingSignup) == 1


def test_confirm_is_idempotent_and_survives_unsubscribe_in_between(client, work, smtp):
    post_signup(client, "twice@example.com")
    work()
    path = path_of(link_in(smtp.messages[0].text, "confirm"))
    token = csrf_token(client, path)
    assert client.post(path, data={"csrf_token": token}).status_code == 200
    assert client.post(path, data={"csrf_token": token}).status_code == 200
    assert count(Subscriber) == 1
    db.session.execute(Subscriber.__table__.delete())  # the reader left in between
    db.session.commit()
    again = client.post(path, data={"csrf_token": token})
    assert again.status_code == 200 and "subscribed" in again.get_data(as_text=True)
    assert count(Subscriber) == 0


def test_bad_and_expired_tokens_get_their_pages(app, client, work, smtp):
    post_signup(client, "exp@example.com")
    work()
    path = path_of(link_in(smtp.messages[0].text, "confirm"))
    token = csrf_token(client, path)
    tampered = path[:-3] + ("aaa" if not path.endswith("aaa") else "bbb")
    for method in (client.get, client.post):
        response = method(tampered, data={"csrf_token": token})
        assert response.status_code == 400
        assert "Sign up again" in response.get_data(as_text=True)
    app.config["CONFIRM_MAX_AGE"] = -1  # every token is now too old
    assert client.get(path).status_code == 410
    response = client.post(path, data={"csrf_token": token})
    assert response.status_code == 410 and "expired" in response.get_data(as_text=True)
    assert count(Subscriber) == 0


def test_token_of_another_purpose_is_refused(app, client):
    from newsletter import tokens

    unsubscribe_token = tokens.make(tokens.Purpose.UNSUBSCRIBE, "abc")
    manage_token = tokens.make(tokens.Purpose.MANAGE, "abc")
    assert client.get(f"/confirm/{unsubscribe_token}").status_code == 400
    assert client.get(f"/confirm/{manage_token}").status_code == 400


def test_keys_rotate_through_secret_key_fallbacks(app, client, work, smtp):
    post_signup(client, "rotate@example.com")
    work()
    path = path_of(link_in(smtp.messages[0].text, "confirm"))
    old = app.config["SECRET_KEY"]
    app.config.update(SECRET_KEY="a-brand-new-secret-key-0123456789", SECRET_KEY_FALLBACKS=[old])
    assert client.get(path).status_code == 200
    app.config["SECRET_KEY_FALLBACKS"] = None
    assert client.get(path).status_code == 400


def test_tokens_carry_no_address(client, work, smtp):
    import base64

    post_signup(client, "hidden.reader@example.com")
    work()
    link = link_in(smtp.messages[0].text, "confirm")
    token = link.rsplit("/", 1)[1]
    for piece in token.split("."):
        decoded = base64.urlsafe_b64decode(piece + "=" * (-len(piece) % 4))
        assert b"hidden" not in decoded and b"example" not in decoded
    assert "hidden" not in link


def test_confirmed_address_signing_up_again_gets_no_second_subscription(
    client, work, smtp, subscribed
):
    subscribed("again@example.com")
    mails_before = len(smtp.messages)
    first = post_signup(client, "again@example.com")
    fresh = post_signup(client, "unknown@example.com")
    assert first.status_code == fresh.status_code == 200
    assert first.get_data() == fresh.get_data()
    work()
    assert count(Subscriber) == 1
    assert [m.rcpt_tos for m in smtp.messages[mails_before:]] == [["unknown@example.com"]]


def test_same_answer_for_new_pending_and_subscribed_addresses(client, work, subscribed):
    subscribed("known@example.com")
    post_signup(client, "pending@example.com")
    bodies = {
        email: post_signup(client, email)
        for email in ("known@example.com", "pending@example.com", "new@example.com")
    }
    assert {r.status_code for r in bodies.values()} == {200}
    assert len({r.get_data() for r in bodies.values()}) == 1


def test_invalid_addresses_get_the_form_again(client, work, smtp):
    cases = {
        "no-at-sign.example.com": "@",
        "a..b@example.com": "period",
        ("x" * 65) + "@example.com": "too long",
        "a@" + ("d" * 64) + ".com": "",
        "user@localhost": "",
        "victim@example.com\r\nBcc: evil@example.com": "line breaks",
        "jörg@bücher.example": "Internationalized",
        "": "enter your email",
    }
    for email, fragment in cases.items():
        response = post_signup(client, email)
        body = response.get_data(as_text=True)
        assert response.status_code == 422, email
        assert 'role="alert"' in body and fragment in body, (email, body[:200])
    work()
    assert smtp.messages == []
    assert count(PendingSignup) == 0


def test_idn_domain_is_sent_to_its_idna2008_form(client, work, smtp):
    assert post_signup(client, "leser@straße.de").status_code == 200
    work()
    [mail] = smtp.messages
    assert mail.rcpt_tos == ["leser@xn--strae-oqa.de"]  # IDNA 2003 would say strasse.de
    assert "To: leser@xn--strae-oqa.de" in mail.data.decode()


def test_a_stored_address_is_sent_to_the_form_email_validator_gives(app):
    """The sending path skips email-validator for the ASCII addresses it stored."""
    from newsletter.addresses import normalize, smtp_form, stored_smtp_form

    typed = [
        "Leser@Example.COM",
        "first.last+news@mail.example.org",
        "o'brien-x_y@sub-1.example.co.uk",
        "weird!#$%&*/=?^`{|}~@example.com",
        "leser@straße.de",
        "leser@xn--strae-oqa.de",
        "user@例子.广告",
    ]
    for address in typed:
        stored = normalize(address, check_deliverability=False)
        assert stored_smtp_form(stored) == smtp_form(stored), address
    assert stored_smtp_form("leser@straße.de") == "leser@xn--strae-oqa.de"
    with pytest.raises(ValueError):  # not a stored form: email-validator still judges it
        stored_smtp_form("a..b@example.com")


def test_consent_is_required(client, work, smtp):
    response = post_signup(client, "noconsent@example.com", consent=None)
    assert response.status_code == 422
    assert "tick the box" in response.get_data(as_text=True)
    work()
    assert smtp.messages == [] and count(PendingSignup) == 0


def test_honeypot_gets_the_same_page_and_no_mail(client, work, smtp):
    bot = post_signup(client, "bot@example.com", website="http://spam.example")
    human = post_signup(client, "human@example.com")
    assert bot.status_code == human.status_code == 200
    assert bot.get_data() == human.get_data()
    work()
    assert [m.rcpt_tos for m in smtp.messages] == [["human@example.com"]]


def test_oversized_body_is_refused(client):
    response = client.post(
        "/subscribe", data={"email": "big@example.com", "consent": "yes", "pad": "x" * 200_000}
    )
    assert response.status_code == 413


def test_post_without_csrf_token_is_refused(client, work, smtp):
    response = client.post("/subscribe", data={"email": "csrf@example.com", "consent": "yes"})
    assert response.status_code == 400
    work()
    assert smtp.messages == []


def test_embedding_origin_may_post_without_token_others_may_not(app, client, work, smtp):
    app.config["EMBED_ORIGINS"] = ["https://www.example.com"]
    form = {"email": "embedded@example.com", "consent": "yes"}
    allowed = client.post("/subscribe", data=form, headers={"Origin": "https://www.example.com"})
    assert allowed.status_code == 200
    refused = client.post("/subscribe", data=form, headers={"Origin": "https://evil.example.net"})
    assert refused.status_code == 400
    assert "Origin" in allowed.headers["Vary"]
    work()
    assert len(smtp.messages) == 1


def test_rate_limit_per_address_counts_plus_tags_as_one_mailbox(app, client, work, smtp):
    app.config["SIGNUP_LIMIT_PER_ADDRESS"] = "3/hour"
    responses = []
    for n in range(5):
        responses.append(post_signup(client, f"flood+{n}@example.com"))
        work()  # a worker keeps up, so no request finds the previous one's job still queued
    assert [r.status_code for r in responses] == [200] * 5
    assert post_signup(client, "someone.else@example.com").status_code == 200
    work()
    flood = [m for m in smtp.messages if m.rcpt_tos[0].startswith("flood+")]
    assert len(flood) == 3
    assert len(smtp.to("someone.else@example.com")) == 1
    assert count(PendingSignup) == 4  # requests beyond the limit left nothing behind


def test_a_spent_address_limit_gives_the_same_answer_and_sends_nothing(app, client, work, smtp):
    """A 429 would tell anybody that somebody asked for this address lately."""
    app.config["SIGNUP_LIMIT_PER_ADDRESS"] = "2/hour"
    responses = []
    for _ in range(4):
        responses.append(post_signup(client, "asked.lately@example.com"))
        work()
    assert [r.status_code for r in responses] == [200] * 4
    assert len({r.get_data() for r in responses}) == 1
    assert "Check your inbox" in responses[0].get_data(as_text=True)
    assert len(smtp.to("asked.lately@example.com")) == 2


def test_rate_limit_per_address_counts_gmail_spellings_as_one_inbox(app, client, work, smtp):
    app.config["SIGNUP_LIMIT_PER_ADDRESS"] = "2/hour"
    for email in (
        "john.smith@gmail.com",
        "J.o.h.n.Smith@gmail.com",
        "johnsmith+news@googlemail.com",
        "john.s.mith@googlemail.com",
    ):
        assert post_signup(client, email).status_code == 200
        work()
    received = sorted(r for m in smtp.messages for r in m.rcpt_tos)
    assert received == ["j.o.h.n.smith@gmail.com", "john.smith@gmail.com"]
    # Only the limit's key is normalised; the addresses are stored as typed.
    stored = sorted(db.session.scalars(select(PendingSignup.email)))
    assert stored == ["j.o.h.n.smith@gmail.com", "john.smith@gmail.com"]
    # Elsewhere a dot may tell two people apart.
    assert post_signup(client, "john.smith@example.com").status_code == 200
    assert post_signup(client, "johnsmith@example.com").status_code == 200
    assert post_signup(client, "j.ohnsmith@example.com").status_code == 200
    work()
    assert len([m for m in smtp.messages if m.rcpt_tos[0].endswith("@example.com")]) == 3


def test_rate_limit_per_ip(app, client):
    app.config["SIGNUP_LIMIT_PER_IP"] = "4/hour"
    codes = [post_signup(client, f"ip{n}@example.com").status_code for n in range(6)]
    assert codes == [200, 200, 200, 200, 429, 429]
    other_ip = client.post(
        "/subscribe",
        data={"email": "x@example.com", "consent": "yes", "csrf_token": csrf_token(client)},
        environ_base={"REMOTE_ADDR": "192.0.2.77"},
    )
    assert other_ip.status_code == 200


def test_rate_limit_keys_hold_no_address_or_ip(app, client, work):
    from newsletter.extensions import get_redis

    post_signup(client, "counted@example.com")
    work()
    keys = [k.decode() for k in get_redis().keys("*")]
    assert any("LIMIT" in k for k in keys)
    dump = " ".join(keys) + " ".join(str(get_redis().dump(k)) for k in keys)
    assert "counted" not in dump and "127.0.0.1" not in dump


def test_no_personal_data_in_redis_after_the_confirmation_job(app, client, work, smtp):
    from rq import Queue

    from newsletter.extensions import get_redis

    post_signup(client, "secret.person@example.com")
    queue = Queue("mail", connection=get_redis())
    [job] = queue.jobs
    assert job.description == "send_confirmation"
    assert all(isinstance(arg, int) for arg in job.args)
    work()
    redis_conn = get_redis()
    for key in redis_conn.keys("*"):
        kind = redis_conn.type(key).decode()
        blob = key + (redis_conn.dump(key) or b"")
        assert b"secret.person" not in blob, (key, kind)


def test_links_ignore_a_poisoned_host_header(client, work, smtp):
    response = client.post(
        "/subscribe",
        data={"email": "host@example.com", "consent": "yes", "csrf_token": csrf_token(client)},
        headers={"Host": "evil.example.net", "X-Forwarded-Host": "evil.example.net"},
    )
    assert response.status_code in (200, 400)
    post_signup(client, "host@example.com")
    work()
    for mail in smtp.messages:
        assert "evil.example.net" not in mail.data.decode()
        assert link_in(mail.text, "confirm").startswith(PUBLIC_URL)


def test_trusted_hosts_rejects_other_hosts(app, client):
    app.config["TRUSTED_HOSTS"] = ["news.example.org"]
    assert client.get("/", headers={"Host": "evil.example.net"}).status_code == 400
    assert client.get("/", headers={"Host": "news.example.org"}).status_code == 200


def test_confirmation_is_resent_when_redis_lost_the_job(app, client, work, smtp):
    from datetime import timedelta

    from newsletter.extensions import get_redis
    from newsletter.tick import enqueue_tick

    post_signup(client, "lost@example.com")
    get_redis().flushdb()  # Redis emptied before a worker took the job
    work()
    assert smtp.messages == []
    pending = db.session.scalar(select(PendingSignup))
    pending.requested_at -= timedelta(minutes=5)
    db.session.commit()
    enqueue_tick(1)
    work()
    work()
    assert [m.rcpt_tos for m in smtp.messages] == [["lost@example.com"]]


def test_expired_sign_ups_are_purged_by_the_tick(app, client, work, smtp):
    from datetime import timedelta

    from newsletter.tick import enqueue_tick

    post_signup(client, "stale@example.com")
    work()
    pending = db.session.scalar(select(PendingSignup))
    pending.requested_at -= timedelta(seconds=app.config["CONFIRM_MAX_AGE"] + 60)
    db.session.commit()
    enqueue_tick(2)
    work()
    assert count(PendingSignup) == 0


def test_consent_wording_is_versioned_by_hash(app, client, work, subscribed):
    from newsletter import consent

    subscribed("v1@example.com")
    consent.adopt("en", "A new wording of the consent text.")  # what /admin/form does
    subscribed("v2@example.com")
    versions = db.session.scalars(select(ConsentText).order_by(ConsentText.version)).all()
    assert [v.version for v in versions] == [1, 2]
    by_email = {s.email: s.consent_text.text for s in db.session.scalars(select(Subscriber))}
    assert by_email["v2@example.com"] == "A new wording of the consent text."
    assert by_email["v1@example.com"] != by_email["v2@example.com"]


def test_store_ip_prefix_truncates(app, client, work, smtp):
    app.config["STORE_IP_PREFIX"] = True
    client.post(
        "/subscribe",
        data={"email": "ip@example.com", "consent": "yes", "csrf_token": csrf_token(client)},
        environ_base={"REMOTE_ADDR": "203.0.113.77"},
    )
    work()
    path = path_of(link_in(smtp.messages[0].text, "confirm"))
    client.post(path, data={"csrf_token": csrf_token(client, path)})
    assert db.session.scalar(select(Subscriber.ip_prefix)) == "203.0.113.0/24"
    from newsletter.addresses import ip_prefix

    assert ip_prefix("2001:db8:abcd:12:1:2:3:4") == "2001:db8:abcd::/48"


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json["status"] == "ok"


def test_healthz_reports_redis_down(app, client, monkeypatch):
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    down = redis.Redis(unix_socket_path="/nonexistent/redis.sock", retry=Retry(NoBackoff(), 0))
    monkeypatch.setitem(app.extensions, "redis", down)
    response = client.get("/healthz")
    assert response.status_code == 503 and response.json["redis"] == "down"


def test_proxy_count_takes_the_client_ip_from_the_proxy(base_environ, migrated):
    from newsletter import create_app
    from newsletter.extensions import get_redis

    proxied = create_app(environ={**base_environ, "PROXY_COUNT": "1"})
    proxied.config["SIGNUP_LIMIT_PER_IP"] = "1/hour"
    client = proxied.test_client()
    codes = []
    with proxied.app_context():
        get_redis().flushdb()
        try:
            for n, ip in enumerate(("198.51.100.1", "198.51.100.2", "198.51.100.2")):
                response = client.post(
                    "/subscribe",
                    data={
                        "email": f"p{n}@example.com",
                        "consent": "yes",
                        "csrf_token": csrf_token(client),
                    },
                    headers={"X-Forwarded-For": ip},
                )
                codes.append(response.status_code)
        finally:
            db.session.remove()
            db.engine.dispose()
            get_redis().close()
    assert codes == [200, 200, 429]


def test_redis_down_gets_a_503_page_and_the_sign_up_is_mailed_later(
    app, client, work, smtp, monkeypatch
):
    from datetime import timedelta

    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from newsletter.tick import enqueue_tick

    token = csrf_token(client)
    down = redis.Redis(unix_socket_path="/nonexistent/redis.sock", retry=Retry(NoBackoff(), 0))
    with monkeypatch.context() as patch:
        patch.setitem(app.extensions, "redis", down)
        response = client.post(
            "/subscribe",
            data={"email": "patient@example.com", "consent": "yes", "csrf_token": token},
        )
    assert response.status_code == 503
    assert "try again" in response.get_data(as_text=True)
    pending = db.session.scalar(select(PendingSignup))
    pending.requested_at -= timedelta(minutes=1)
    db.session.commit()
    enqueue_tick(3)
    work()
    work()
    assert [m.rcpt_tos for m in smtp.messages] == [["patient@example.com"]]
