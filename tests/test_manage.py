"""Self-service: a personal, expiring link to see, export, move and delete one's data."""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import func, select

from newsletter import stats, tokens
from newsletter.extensions import db
from newsletter.models import PendingPurpose, PendingSignup, Subscriber
from newsletter.queue import get_queue
from tests.conftest import PUBLIC_URL, csrf_token, link_in, path_of, post_signup


def subscriber(email: str) -> Subscriber | None:
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def count(model) -> int:
    return db.session.scalar(select(func.count()).select_from(model))


def ask_for_link(client, email: str, **kwargs):
    return client.post(
        "/manage", data={"email": email, "csrf_token": csrf_token(client, "/manage")}, **kwargs
    )


def manage_path(client, work, smtp, email: str) -> str:
    """Ask for the manage link the way a reader does and return its path."""
    before = len(smtp.to(email))
    assert ask_for_link(client, email).status_code == 200
    work()
    mails = smtp.to(email)
    assert len(mails) == before + 1, "no manage mail"
    link = link_in(mails[-1].text, "manage")
    assert link == link_in(mails[-1].html, "manage") and link.startswith(f"{PUBLIC_URL}/manage/")
    return path_of(link)


def tally(kind: str) -> int:
    return sum(month.get(kind, 0) for month in stats.monthly([kind]).values())


def test_manage_form_has_the_endpoint_the_footer_links_to(app, client):
    from flask import url_for

    with app.test_request_context():
        assert url_for("manage.manage_request") == "/manage"
    page = client.get("/manage")
    assert page.status_code == 200 and 'name="email"' in page.get_data(as_text=True)


def test_same_answer_and_same_work_for_known_pending_and_unknown_addresses(
    app, client, work, smtp, subscribed
):
    subscribed("known@example.com")
    client.post(
        "/subscribe",
        data={"email": "pending@example.com", "consent": "yes", "csrf_token": csrf_token(client)},
    )
    work()
    mails_before = len(smtp.messages)
    queue = get_queue("mail")
    responses = []
    for email in ("known@example.com", "pending@example.com", "unknown@example.com"):
        jobs_before = queue.count
        responses.append(ask_for_link(client, email))
        assert queue.count == jobs_before + 1  # the request does the same work for any address
    assert {r.status_code for r in responses} == {200}
    assert len({r.get_data() for r in responses}) == 1
    assert "Check your inbox" in responses[0].get_data(as_text=True)
    work()
    assert [m.rcpt_tos for m in smtp.messages[mails_before:]] == [["known@example.com"]]


def test_invalid_address_gets_the_form_again(client, work, smtp):
    response = ask_for_link(client, "not-an-address")
    assert response.status_code == 422 and 'role="alert"' in response.get_data(as_text=True)
    work()
    assert smtp.messages == []


def test_manage_page_shows_every_datum_held_including_the_consent_wording(
    app, client, work, smtp, subscribed
):
    app.config["STORE_IP_PREFIX"] = True
    subscribed("shown@example.com")
    path = manage_path(client, work, smtp, "shown@example.com")
    reader = subscriber("shown@example.com")

    page = client.get(path)
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    assert page.headers["Cache-Control"] == "no-store"
    assert "shown@example.com" in body
    assert reader.consent_text.text in body
    assert reader.consent_text.sha256 in body and f"Version {reader.consent_text.version}" in body
    assert reader.requested_at.strftime("%Y-%m-%d %H:%M") in body
    assert reader.confirmed_at.strftime("%Y-%m-%d %H:%M") in body
    assert reader.ip_prefix == "127.0.0.0/24" and reader.ip_prefix in body
    for action in ("/export", "/email", "/delete"):
        assert f"{path}{action}" in body


def test_manage_link_expires_and_tampered_links_are_refused(app, client, work, smtp, subscribed):
    subscribed("late@example.com")
    path = manage_path(client, work, smtp, "late@example.com")
    token = csrf_token(client, path)
    tampered = path[:-3] + ("aaa" if not path.endswith("aaa") else "bbb")
    unsubscribe_token = tokens.make(
        tokens.Purpose.UNSUBSCRIBE, subscriber("late@example.com").token_key
    )
    for bad in (tampered, f"/manage/{unsubscribe_token}"):
        assert client.get(bad).status_code == 400
        assert client.get(f"{bad}/export").status_code == 400
        assert client.post(f"{bad}/delete", data={"csrf_token": token}).status_code == 400

    app.config["MANAGE_MAX_AGE"] = -1  # every manage link is now too old
    page = client.get(path)
    assert page.status_code == 410 and "expired" in page.get_data(as_text=True)
    assert 'href="/manage"' in page.get_data(as_text=True)
    assert client.get(f"{path}/export").status_code == 410
    assert client.post(f"{path}/delete", data={"csrf_token": token}).status_code == 410
    response = client.post(f"{path}/email", data={"csrf_token": token, "email": "x@example.com"})
    assert response.status_code == 410
    assert subscriber("late@example.com") is not None and count(PendingSignup) == 0


def test_export_is_a_json_download_of_everything_held(app, client, work, smtp, subscribed):
    app.config["STORE_IP_PREFIX"] = True
    subscribed("export@example.com")
    path = manage_path(client, work, smtp, "export@example.com")
    reader = subscriber("export@example.com")

    response = client.get(f"{path}/export")

    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.headers["Content-Disposition"].startswith("attachment;")
    assert ".json" in response.headers["Content-Disposition"]
    assert response.headers["Cache-Control"] == "no-store"
    data = json.loads(response.get_data(as_text=True))
    assert data["email"] == "export@example.com"
    assert datetime.fromisoformat(data["requested_at"]) == reader.requested_at
    assert datetime.fromisoformat(data["confirmed_at"]) == reader.confirmed_at
    assert data["email_changed_at"] is None
    assert data["ip_prefix"] == "127.0.0.0/24"
    assert data["consent"] == {
        "language": reader.consent_text.language,
        "version": reader.consent_text.version,
        "text": reader.consent_text.text,
        "sha256": reader.consent_text.sha256,
    }
    assert data["pending_address_change"] is None and data["pending_deliveries"] == []
    assert data["controller"]["name"] == app.config["CONTROLLER_NAME"]
    assert tally("exported") == 1


def test_change_of_address_takes_effect_only_after_the_new_address_confirms(
    app, client, work, smtp, subscribed
):
    subscribed("old.home@example.com")
    before = subscriber("old.home@example.com")
    proof = (before.id, before.requested_at, before.confirmed_at, before.consent_text_id)
    path = manage_path(client, work, smtp, "old.home@example.com")

    response = client.post(
        f"{path}/email",
        data={"email": "New.Home@Example.com", "csrf_token": csrf_token(client, path)},
    )
    assert response.status_code == 200 and "Confirm your new address" in response.get_data(
        as_text=True
    )
    assert subscriber("old.home@example.com") is not None  # nothing changes yet
    pending = db.session.scalar(select(PendingSignup))
    assert (pending.email, pending.purpose) == ("new.home@example.com", PendingPurpose.CHANGE_EMAIL)
    assert "new.home@example.com" in client.get(path).get_data(as_text=True)
    exported = json.loads(client.get(f"{path}/export").get_data(as_text=True))
    assert exported["pending_address_change"]["email"] == "new.home@example.com"

    work()
    [mail] = smtp.to("new.home@example.com")
    confirm = path_of(link_in(mail.text, "confirm"))
    page = client.get(confirm)
    assert page.status_code == 200 and "Yes, use this address" in page.get_data(as_text=True)
    assert subscriber("new.home@example.com") is None  # a GET changes nothing
    done = client.post(confirm, data={"csrf_token": csrf_token(client, confirm)})
    assert done.status_code == 200 and "Your address is changed" in done.get_data(as_text=True)
    repeat = client.post(confirm, data={"csrf_token": csrf_token(client, confirm)})
    assert "Your address is changed" in repeat.get_data(as_text=True)

    db.session.expire_all()
    after = subscriber("new.home@example.com")
    assert after is not None and subscriber("old.home@example.com") is None
    assert (after.id, after.requested_at, after.confirmed_at, after.consent_text_id) == proof
    assert after.email_changed_at is not None
    assert count(PendingSignup) == 0
    data = json.loads(client.get(f"{path}/export").get_data(as_text=True))
    assert data["email"] == "new.home@example.com"
    assert data["email_changed_at"] == after.email_changed_at.isoformat()


def test_change_of_address_refuses_bad_input(client, work, smtp, subscribed):
    subscribed("stay@example.com")
    path = manage_path(client, work, smtp, "stay@example.com")
    token = csrf_token(client, path)
    for bad in ("not-an-address", "stay@example.com", ""):
        response = client.post(f"{path}/email", data={"email": bad, "csrf_token": token})
        assert response.status_code == 422, bad
        assert 'role="alert"' in response.get_data(as_text=True)
    assert client.post(f"{path}/email", data={"email": "x@example.com"}).status_code == 400
    assert count(PendingSignup) == 0


def change_address(client, path: str, email: str, **kwargs):
    return client.post(
        f"{path}/email", data={"email": email, "csrf_token": csrf_token(client, path)}, **kwargs
    )


def test_change_of_address_mails_one_inbox_at_most_the_sign_up_limit(
    app, client, work, smtp, subscribed
):
    subscribed("mover@example.com")
    path = manage_path(client, work, smtp, "mover@example.com")
    app.config["SIGNUP_LIMIT_PER_ADDRESS"] = "3/hour"
    # The victim's own sign-up counts too: one limit on confirmation mails to an inbox.
    assert post_signup(client, "victim@example.com").status_code == 200
    work()
    responses = []
    for n in range(6):
        target = "victim@example.com" if n % 2 else "Victim+news@example.com"
        responses.append(change_address(client, path, target))
        work()  # a worker keeps up, as in production
    assert [r.status_code for r in responses] == [200] * 6
    assert len({r.get_data() for r in responses}) == 1  # the limit striking changes nothing
    assert "Confirm your new address" in responses[-1].get_data(as_text=True)
    to_victim = [m for m in smtp.messages if m.rcpt_tos[0].startswith("victim")]
    assert len(to_victim) == 3


def test_change_of_address_is_limited_per_ip_together_with_sign_ups(
    app, client, work, smtp, subscribed
):
    subscribed("mover@example.com")
    path = manage_path(client, work, smtp, "mover@example.com")
    app.config["SIGNUP_LIMIT_PER_IP"] = "4/hour"
    codes = []
    for n in range(8):
        codes.append(change_address(client, path, f"stranger{n}@example.com").status_code)
        work()
    assert codes == [200] * 4 + [429] * 4
    strangers = [m for m in smtp.messages if m.rcpt_tos[0].startswith("stranger")]
    assert len(strangers) == 4
    # Another IP is not held up, and sign-ups from the spent IP count on the same limit.
    elsewhere = {"REMOTE_ADDR": "192.0.2.50"}
    assert (
        change_address(client, path, "friend@example.com", environ_base=elsewhere).status_code
        == 200
    )
    assert post_signup(client, "late@example.com").status_code == 429


def test_delete_erases_and_the_link_then_finds_nothing(app, client, work, smtp, subscribed):
    subscribed("leave@example.com")
    subscribed("others@example.com")
    path = manage_path(client, work, smtp, "leave@example.com")

    assert client.post(f"{path}/delete").status_code == 400  # a normal form: CSRF applies
    assert subscriber("leave@example.com") is not None

    token = csrf_token(client, path)
    response = client.post(f"{path}/delete", data={"csrf_token": token})
    assert response.status_code == 200 and "unsubscribed" in response.get_data(as_text=True)
    assert subscriber("leave@example.com") is None and subscriber("others@example.com")
    assert tally("erased_manage") == 1
    again = client.post(f"{path}/delete", data={"csrf_token": token})
    assert again.status_code == 200 and again.get_data() == response.get_data()
    assert client.get(path).status_code == 404
    assert client.get(f"{path}/export").status_code == 404
    assert tally("erased_manage") == 1


def test_old_manage_link_does_nothing_to_a_later_subscription(app, client, work, smtp, subscribed):
    subscribed("again@example.com")
    path = manage_path(client, work, smtp, "again@example.com")
    client.post(f"{path}/delete", data={"csrf_token": csrf_token(client, path)})
    subscribed("again@example.com")
    assert client.get(path).status_code == 404
    client.post(f"{path}/delete", data={"csrf_token": csrf_token(client, "/manage")})
    assert subscriber("again@example.com") is not None


def test_manage_link_request_is_rate_limited_per_ip_and_per_mailbox(
    app, client, work, smtp, subscribed
):
    subscribed("flood@example.com")
    app.config.update(MANAGE_LIMIT_PER_IP="4/hour", MANAGE_LIMIT_PER_ADDRESS="2/hour")
    responses = []
    for email in ("Flood+x@example.com", "flood@example.com", "flood@example.com"):
        responses.append(ask_for_link(client, email))
        work()
    # Beyond the per-mailbox limit (``+x`` counts for the same one): the same page, no mail.
    assert [r.status_code for r in responses] == [200] * 3
    assert len({r.get_data() for r in responses}) == 1
    assert len(smtp.to("flood@example.com")) == 2  # the confirmation and one manage link
    elsewhere = {"REMOTE_ADDR": "192.0.2.9"}
    codes = [
        ask_for_link(client, f"p{n}@example.com", environ_base=elsewhere).status_code
        for n in range(5)
    ]
    assert codes == [200, 200, 200, 200, 429]


def test_manage_mail_job_carries_only_an_id(app, client, subscribed):
    subscribed("quiet@example.com")
    get_queue("mail").empty()
    ask_for_link(client, "quiet@example.com")
    [job] = get_queue("mail").jobs
    assert job.description == "send_manage_link"
    assert job.args == (subscriber("quiet@example.com").id,)
    assert tokens.manage_url(subscriber("quiet@example.com")).startswith(PUBLIC_URL)


def test_privacy_notice_states_what_why_how_long_the_rights_and_the_controller(app, client):
    app.config.update(
        CONTROLLER_NAME="IMAGE Information Systems Europe GmbH",
        CONTROLLER_ADDRESS="Lange Str. 16, 18055 Rostock, Germany",
        CONTROLLER_EMAIL="info@iq-image.com",
        CONFIRM_MAX_AGE=48 * 3600,
        MANAGE_MAX_AGE=24 * 3600,
        SIGNUP_LIMIT_PER_ADDRESS="3/hour",
        MANAGE_LIMIT_PER_ADDRESS="5/day",
    )
    page = client.get("/privacy")
    body = page.get_data(as_text=True)
    assert page.status_code == 200
    for fact in (
        "IMAGE Information Systems Europe GmbH",
        "Lange Str. 16, 18055 Rostock, Germany",
        "mailto:info@iq-image.com",
        "at most 48 hours",  # unconfirmed sign-ups
        "valid for 24 hours",  # manage links
        "At most 24 hours",  # the longest rate-limit counter (5/day)
        "Art. 15",
        "Art. 16",
        "Art. 17",
        "Art. 20",
        "Art. 77",
        'href="/manage"',
        "deleted at once",
    ):
        assert fact in body, fact
    assert "first three blocks of an IPv4 address" not in body
    app.config["STORE_IP_PREFIX"] = True
    assert "first three blocks of an IPv4 address" in client.get("/privacy").get_data(as_text=True)
