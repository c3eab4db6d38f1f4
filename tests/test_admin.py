"""The admin area through Flask's test client: access control, CSRF, lock-out, pages."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from newsletter import auth, campaigns, consent
from newsletter.admin.times import localtime
from newsletter.extensions import db
from newsletter.models import AdminUser, Campaign, CampaignStatus, Subscriber, Tally, utcnow
from tests.conftest import PASSWORD, STAFF, csrf_token, log_in, post_signup
from tests.html_vectors import BENIGN, UNSAFE, assert_benign_kept, assert_clean


def add_subscriber(email: str) -> Subscriber:
    subscriber = Subscriber(
        email=email, requested_at=utcnow(), consent_text_id=consent.current().id
    )
    db.session.add(subscriber)
    db.session.commit()
    return subscriber


def form_token(client, path: str) -> str:
    return csrf_token(client, path)


# --- access control --------------------------------------------------------------------


def admin_rules(app):
    return [
        rule
        for rule in app.url_map.iter_rules()
        if rule.rule.startswith("/admin")
        and rule.endpoint not in {"admin.login", "admin.login_form"}
    ]


def test_every_admin_route_rejects_anonymous_visitors(app, client):
    campaign = campaigns.create("Secret edition", "<p>draft</p>")
    subscriber = add_subscriber("reader@example.com")
    # A CSRF token from a public form, so POSTs are refused for the missing login, not for CSRF.
    token = csrf_token(client, "/subscribe")
    rules = admin_rules(app)
    assert len(rules) >= 15, [r.rule for r in rules]
    checked = 0
    for rule in rules:
        url = rule.rule.replace("<int:campaign_id>", str(campaign.id))
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            data = {"csrf_token": token, "email": "reader@example.com", "confirm": "yes"}
            data.update({"when": "now", "subject": "Hijacked", "source": "x"})
            response = client.open(url, method=method, data=data if method == "POST" else None)
            body = response.get_data(as_text=True)
            if url.endswith(".json"):
                assert response.status_code == 401, (method, url)
            else:
                assert response.status_code == 302, (method, url, response.status_code)
                assert response.location.startswith("/admin/login"), (method, url)
            assert "Secret edition" not in body and "reader@example.com" not in body
            checked += 1
    assert checked >= 17
    db.session.expire_all()
    assert campaigns.get(campaign.id).status == CampaignStatus.DRAFT
    assert campaigns.get(campaign.id).subject == "Secret edition"
    assert db.session.get(Subscriber, subscriber.id) is not None


def test_login_page_sends_back_to_the_page_asked_for(client, staff):
    response = client.get("/admin/campaigns")
    assert response.status_code == 302
    assert response.location == "/admin/login?next=/admin/campaigns"
    response = log_in(client, next="/admin/campaigns")
    assert response.location == "/admin/campaigns"


def test_login_ignores_a_next_url_outside_the_admin_area(client, staff):
    for target in ("https://evil.example/admin/", "//evil.example/admin/", "/subscribe"):
        client.post("/admin/logout", data={"csrf_token": csrf_token(client, "/subscribe")})
        response = log_in(client, next=target)
        assert response.status_code == 302
        assert response.location == "/admin/", target


def test_login_and_logout(client, staff):
    response = log_in(client)
    assert response.status_code == 302 and response.location == "/admin/"
    page = client.get("/admin/")
    assert page.status_code == 200
    assert "Dashboard" in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store"
    assert db.session.get(AdminUser, staff.id).last_login_at is not None

    # Logging out takes a POST with a token; a GET (a link, a prefetch) does nothing.
    assert client.get("/admin/logout").status_code == 405
    assert client.get("/admin/").status_code == 200
    response = client.post("/admin/logout", data={"csrf_token": form_token(client, "/admin/")})
    assert response.status_code == 302
    assert client.get("/admin/").status_code == 302


def test_wrong_password_or_unknown_address_get_the_same_answer(client, staff):
    wrong_password = log_in(client, password="not the password")
    unknown = log_in(client, email="nobody@example.com")
    assert wrong_password.status_code == unknown.status_code == 401
    message = re.compile(r'<div class="alert" role="alert" id="login-error">(.*?)</div>')
    assert message.findall(wrong_password.get_data(as_text=True)) == message.findall(
        unknown.get_data(as_text=True)
    )
    assert client.get("/admin/").status_code == 302


def test_login_starts_a_new_session(client, staff):
    """Session fixation: nothing a visitor's session held before login survives it."""
    with client.session_transaction() as session:
        session["planted"] = "by an attacker"
        session["admin_id"] = 999
    log_in(client)
    with client.session_transaction() as session:
        assert "planted" not in session
        assert session["admin_id"] == staff.id


def test_a_new_password_ends_older_sessions(admin, staff):
    assert admin.get("/admin/").status_code == 200
    user = db.session.get(AdminUser, staff.id)
    user.password_hash = auth._hasher.hash("another long password")
    db.session.commit()
    assert admin.get("/admin/").status_code == 302


def test_sessions_expire(admin, app):
    app.config["ADMIN_SESSION_MAX_AGE"] = 0
    response = admin.get("/admin/")
    assert response.status_code == 302
    assert response.location == "/admin/login?next=/admin/"


def test_account_locks_after_repeated_failures(client, staff, app):
    limit = app.config["ADMIN_MAX_FAILED_LOGINS"]
    for _ in range(limit):
        assert log_in(client, password="guess").status_code == 401
    user = db.session.get(AdminUser, staff.id)
    db.session.refresh(user)
    assert user.locked_until is not None and user.locked_until > utcnow()
    # Locked: even the right password is refused, with the same answer.
    response = log_in(client)
    assert response.status_code == 401
    assert client.get("/admin/").status_code == 302

    # When the lock has run out, the right password works and the count starts again.
    user.locked_until = utcnow() - timedelta(seconds=1)
    db.session.commit()
    assert log_in(client).status_code == 302
    db.session.refresh(user)
    assert user.failed_logins == 0 and user.locked_until is None


def test_failures_below_the_limit_are_forgotten_after_a_good_login(client, staff, app):
    for _ in range(app.config["ADMIN_MAX_FAILED_LOGINS"] - 1):
        log_in(client, password="guess")
    assert log_in(client).status_code == 302
    client.post("/admin/logout", data={"csrf_token": form_token(client, "/admin/")})
    log_in(client, password="guess")
    assert log_in(client).status_code == 302


def test_login_posts_are_rate_limited_per_ip(client, staff, app):
    app.config["ADMIN_LOGIN_LIMIT_PER_IP"] = "3/minute"
    codes = [log_in(client, email=f"x{i}@example.com").status_code for i in range(4)]
    assert codes == [401, 401, 401, 429]
    # The form itself still loads.
    assert client.get("/admin/login").status_code == 200


# --- CSRF ------------------------------------------------------------------------------


def test_admin_forms_carry_a_csrf_token(admin):
    campaign = campaigns.create("Edition", "<p>Hello</p>")
    for path in (
        "/admin/",
        "/admin/campaigns/new",
        f"/admin/campaigns/{campaign.id}",
        "/admin/subscribers",
    ):
        page = admin.get(path).get_data(as_text=True)
        forms = re.findall(r"<form[^>]*method=\"post\".*?</form>", page, re.S)
        assert forms, path
        for form in forms:
            assert 'name="csrf_token"' in form, (path, form[:80])


def test_admin_posts_without_a_valid_token_are_refused(admin):
    data = {"subject": "Forged", "source": "# Forged", "source_format": "markdown"}
    assert admin.post("/admin/campaigns/new", data=data).status_code == 400
    assert (
        admin.post("/admin/campaigns/new", data={**data, "csrf_token": "forged"}).status_code == 400
    )
    # A valid token from a page of another origin does not help either.
    token = form_token(admin, "/admin/campaigns/new")
    response = admin.post(
        "/admin/campaigns/new",
        data={**data, "csrf_token": token},
        headers={"Origin": "https://evil.example"},
    )
    assert response.status_code == 400
    assert db.session.scalar(select(func.count(Campaign.id))) == 0
    response = admin.post("/admin/campaigns/new", data={**data, "csrf_token": token})
    assert response.status_code == 302
    assert db.session.scalar(select(func.count(Campaign.id))) == 1


def test_login_form_needs_its_csrf_token(client, staff):
    response = client.post("/admin/login", data={"email": STAFF, "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


# --- dashboard -------------------------------------------------------------------------


def _month(offset: int) -> str:
    now = utcnow()
    year, month = now.year, now.month - offset
    while month < 1:
        year, month = year - 1, month + 12
    return f"{year:04d}-{month:02d}"


def test_dashboard_shows_counts_the_next_slot_and_recent_campaigns(admin, app):
    for n in range(3):
        add_subscriber(f"reader{n}@example.com")
    this_month, last_month = _month(0), _month(1)
    db.session.add_all(
        [
            Tally(month=this_month, kind="confirmed", count=7),
            Tally(month=this_month, kind="erased_unsubscribe", count=2),
            Tally(month=this_month, kind="erased_staff", count=1),
            Tally(month=this_month, kind="exported", count=5),
            Tally(month=last_month, kind="confirmed", count=4),
        ]
    )
    db.session.commit()
    sent = campaigns.create("October edition", "<p>old news</p>")
    sent.status, sent.recipients, sent.sent, sent.failed = CampaignStatus.SENT, 40, 38, 2
    db.session.commit()

    page = admin.get("/admin/").get_data(as_text=True)
    assert re.search(r'id="subscriber-count">3<', page)
    history = page[page.index('id="history"') :]
    rows = re.findall(r"<tr><td>(\d{4}-\d{2})</td>(.*?)</tr>", history, re.S)
    cells = {month: re.findall(r'class="num">([^<]*)<', rest) for month, rest in rows}
    assert cells[this_month] == ["7", "3", "+4"]
    assert cells[last_month] == ["4", "0", "+4"]
    assert len(rows) == 6
    next_slot = campaigns.next_slot()
    assert f'id="next-slot">{localtime(next_slot)}<' in page
    assert "No edition is scheduled for it yet" in page
    assert "October edition" in page and ">38<" in page and ">2<" in page

    edition = campaigns.create("November edition", "<p>news</p>")
    campaigns.schedule(edition.id)  # the next monthly slot
    page = admin.get("/admin/").get_data(as_text=True)
    assert "No edition is scheduled for it yet" not in page
    assert re.search(
        r'id="slot-state">Scheduled: <a href="/admin/campaigns/\d+">November edition', page
    )


def test_dashboard_counts_confirmation_mails_given_up(admin, app, work, smtp):
    page = admin.get("/admin/").get_data(as_text=True)
    assert 'id="confirmation-failed">0<' in page
    smtp.handler.rcpt_replies["nobody.home@example.com"] = "550 5.1.1 no such user"
    assert post_signup(admin, "nobody.home@example.com").status_code == 200
    work()
    page = admin.get("/admin/").get_data(as_text=True)
    assert 'id="confirmation-failed">1<' in page
    assert "nobody.home" not in page


# --- campaigns -------------------------------------------------------------------------


MARKDOWN = """# Release 4.2

Our **new viewer** is out. [Read the notes](https://example.com/notes).

- faster start
- DICOM SR support
"""


def create_from_markdown(admin, subject="December edition", source=MARKDOWN):
    token = form_token(admin, "/admin/campaigns/new")
    data = {"subject": subject, "source": source, "source_format": "markdown", "csrf_token": token}
    response = admin.post("/admin/campaigns/new", data=data)
    assert response.status_code == 302, response.get_data(as_text=True)
    return int(response.location.rsplit("/", 1)[1])


def test_markdown_becomes_an_edition_with_inlined_styles_and_a_text_part(admin):
    campaign_id = create_from_markdown(admin)
    campaign = campaigns.get(campaign_id)
    assert campaign.status == CampaignStatus.DRAFT
    assert re.search(r'<h1 style="[^"]*font-size: 26px', campaign.html)
    assert re.search(
        r'<a href="https://example.com/notes" style="[^"]*color: #1d4ed8', campaign.html
    )
    assert "<strong>new viewer</strong>" in campaign.html
    assert "<style" not in campaign.html
    assert "# Release 4.2" in campaign.text and "https://example.com/notes" in campaign.text
    assert campaign.source == MARKDOWN and campaign.source_format == "markdown"

    # The editor opens the Markdown again, not the HTML made from it.
    page = admin.get(f"/admin/campaigns/{campaign_id}").get_data(as_text=True)
    assert "# Release 4.2\n\nOur **new viewer** is out." in page
    assert page.count(f'src="/admin/campaigns/{campaign_id}/preview"') == 2


def test_editing_a_draft_updates_html_text_and_source(admin):
    campaign_id = create_from_markdown(admin)
    token = form_token(admin, f"/admin/campaigns/{campaign_id}")
    data = {
        "subject": "December edition, corrected",
        "source": "<p>Plain <em>HTML</em> now</p>",
        "source_format": "html",
        "csrf_token": token,
    }
    response = admin.post(f"/admin/campaigns/{campaign_id}", data=data)
    assert response.status_code == 302
    campaign = campaigns.get(campaign_id)
    db.session.refresh(campaign)
    assert campaign.subject == "December edition, corrected"
    assert "<em>HTML</em>" in campaign.html and "Plain _HTML_ now" in campaign.text
    assert campaign.source_format == "html"


def test_editor_explains_what_is_missing(admin):
    token = form_token(admin, "/admin/campaigns/new")
    data = {"subject": "", "source": "  ", "source_format": "markdown", "csrf_token": token}
    response = admin.post("/admin/campaigns/new", data=data)
    assert response.status_code == 422
    page = response.get_data(as_text=True)
    assert 'id="subject-error"' in page and 'aria-invalid="true"' in page
    assert db.session.scalar(select(func.count(Campaign.id))) == 0


def test_preview_is_the_mail_a_reader_gets_and_may_be_framed_only_by_us(admin):
    campaign_id = create_from_markdown(admin)
    response = admin.get(f"/admin/campaigns/{campaign_id}/preview")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert page.startswith("<!doctype html>")
    assert '<meta name="viewport"' in page and "max-width:600px" in page
    assert "Release 4.2" in page and "Unsubscribe" in page
    policy = response.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self'" in policy and "sandbox" in policy
    assert "script-src" not in policy and "default-src 'none'" in policy
    # Every other admin page stays unframeable.
    other = admin.get(f"/admin/campaigns/{campaign_id}")
    assert "frame-ancestors 'none'" in other.headers["Content-Security-Policy"]


def test_test_send_goes_to_the_staff_members_own_address(admin, smtp):
    campaign_id = create_from_markdown(admin)
    token = form_token(admin, f"/admin/campaigns/{campaign_id}")
    response = admin.post(
        f"/admin/campaigns/{campaign_id}/test", data={"csrf_token": token, "to": "x@evil.example"}
    )
    assert response.status_code == 302
    mails = smtp.to(STAFF)
    assert len(mails) == 1
    assert mails[0].message["Subject"] == "[Test] December edition"
    assert "Release 4.2" in mails[0].html
    assert smtp.to("x@evil.example") == []
    page = admin.get(response.location).get_data(as_text=True)
    assert f"A test copy is on its way to {STAFF}" in page


@pytest.mark.parametrize("source_format", ["html", "markdown"])
def test_editor_cleans_unsafe_html_after_inlining_so_styles_stay(admin, smtp, source_format):
    token = form_token(admin, "/admin/campaigns/new")
    data = {
        "subject": "Unsafe",
        "source": UNSAFE + "\n\n" + BENIGN,
        "source_format": source_format,
        "csrf_token": token,
    }
    response = admin.post("/admin/campaigns/new", data=data)
    assert response.status_code == 302, response.get_data(as_text=True)
    campaign_id = int(response.location.rsplit("/", 1)[1])
    stored = campaigns.get(campaign_id).html
    preview = admin.get(f"/admin/campaigns/{campaign_id}/preview").get_data(as_text=True)
    token = form_token(admin, f"/admin/campaigns/{campaign_id}")
    admin.post(f"/admin/campaigns/{campaign_id}/test", data={"csrf_token": token})
    [mail] = smtp.to(STAFF)
    for html in [stored, preview, mail.html]:
        assert_clean(html)
        assert_benign_kept(html)
        # The editor's typography, inlined before cleaning, is still there.
        assert re.search(r'<h2 style="[^"]*font-size: 20px', html)
        assert re.search(r'<a href="https://example.com/notes" style="[^"]*color: #1d4ed8', html)


def test_preview_cleans_an_edition_stored_before_cleaning(admin):
    campaign = campaigns.create("Old", BENIGN)
    db.session.execute(update(Campaign).where(Campaign.id == campaign.id).values(html=UNSAFE))
    db.session.commit()
    preview = admin.get(f"/admin/campaigns/{campaign.id}/preview").get_data(as_text=True)
    assert_clean(preview)
    assert "Click" in preview and "Link 2" in preview  # their text stays, as text


def schedule(admin, campaign_id, **data):
    token = form_token(admin, f"/admin/campaigns/{campaign_id}")
    return admin.post(
        f"/admin/campaigns/{campaign_id}/schedule", data={"csrf_token": token, **data}
    )


def test_schedule_defaults_to_the_next_monthly_slot(admin):
    campaign_id = create_from_markdown(admin)
    page = admin.get(f"/admin/campaigns/{campaign_id}").get_data(as_text=True)
    assert re.search(r'id="when-slot" name="when" value="slot" checked', page)
    response = schedule(admin, campaign_id)
    assert response.status_code == 302
    campaign = campaigns.get(campaign_id)
    db.session.refresh(campaign)
    assert campaign.status == CampaignStatus.SCHEDULED
    assert campaign.send_at == campaigns.next_slot()


def test_schedule_at_a_chosen_time_in_its_time_zone(admin):
    campaign_id = create_from_markdown(admin)
    response = schedule(
        admin, campaign_id, when="at", send_at="2031-07-01T10:00", zone="Europe/Berlin"
    )
    assert response.status_code == 302
    campaign = campaigns.get(campaign_id)
    db.session.refresh(campaign)
    assert campaign.send_at == datetime(2031, 7, 1, 8, 0, tzinfo=UTC)  # CEST is UTC+2
    response = schedule(
        admin, campaign_id, when="at", send_at="2031-12-01T10:00", zone="America/New_York"
    )
    db.session.refresh(campaign)
    assert campaign.send_at == datetime(2031, 12, 1, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("send_at", "zone", "message"),
    [
        ("2031-03-30T02:30", "Europe/Berlin", "does not exist"),  # clocks skip 02:00-03:00
        ("2020-01-01T10:00", "UTC", "That time has passed"),
        ("", "UTC", "Enter a date and time"),
        ("2031-07-01T10:00", "Mars/Olympus", "Choose a time zone"),
    ],
)
def test_schedule_refuses_times_that_cannot_be_used(admin, send_at, zone, message):
    campaign_id = create_from_markdown(admin)
    response = schedule(admin, campaign_id, when="at", send_at=send_at, zone=zone)
    assert response.status_code == 422
    assert message in response.get_data(as_text=True)
    assert campaigns.get(campaign_id).status == CampaignStatus.DRAFT


def test_schedule_now_and_cancel(admin):
    campaign_id = create_from_markdown(admin)
    assert schedule(admin, campaign_id, when="now").status_code == 302
    campaign = campaigns.get(campaign_id)
    db.session.refresh(campaign)
    assert campaign.status == CampaignStatus.SCHEDULED
    assert campaign.send_at <= utcnow()
    token = form_token(admin, f"/admin/campaigns/{campaign_id}")
    response = admin.post(f"/admin/campaigns/{campaign_id}/cancel", data={"csrf_token": token})
    assert response.status_code == 302
    db.session.refresh(campaign)
    assert campaign.status == CampaignStatus.CANCELLED
    # A cancelled campaign can no longer be edited.
    page = admin.get(f"/admin/campaigns/{campaign_id}").get_data(as_text=True)
    assert 'name="source"' not in page and "/schedule" not in page


def test_schedule_now_while_redis_is_down_is_kept_with_a_notice(admin, redis_down_app):
    campaign_id = create_from_markdown(admin)
    token = form_token(admin, f"/admin/campaigns/{campaign_id}")
    # The same staff session, on an app whose Redis is unreachable.
    down = redis_down_app.test_client()
    name = redis_down_app.config["SESSION_COOKIE_NAME"]
    down.set_cookie(name, admin.get_cookie(name).value)
    response = down.post(
        f"/admin/campaigns/{campaign_id}/schedule", data={"csrf_token": token, "when": "now"}
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    page = down.get(response.location).get_data(as_text=True)
    assert "cannot be reached just now" in page and "next periodic tick" in page
    assert "Sending starts within seconds" not in page
    db.session.expire_all()
    assert campaigns.get(campaign_id).status == CampaignStatus.SCHEDULED


def test_progress_json_reports_totals(admin):
    campaign = campaigns.create("Done", "<p>x</p>")
    campaign.status, campaign.recipients, campaign.sent, campaign.failed = (
        CampaignStatus.SENT,
        30,
        29,
        1,
    )
    db.session.commit()
    data = admin.get(f"/admin/campaigns/{campaign.id}/progress.json").get_json()
    assert data["status"] == "sent" and data["finished"] is True
    assert (data["recipients"], data["sent"], data["failed"], data["percent"]) == (30, 29, 1, 100)
    page = admin.get(f"/admin/campaigns/{campaign.id}").get_data(as_text=True)
    assert '<progress id="send-progress" class="progress" max="100" value="100">' in page
    assert '<span data-field="sent">29</span> sent' in page


def test_unknown_campaign_is_404(admin):
    assert admin.get("/admin/campaigns/9999").status_code == 404
    assert admin.get("/admin/campaigns/9999/progress.json").status_code == 404


# --- data-subject requests -------------------------------------------------------------


def lookup(admin, email):
    token = form_token(admin, "/admin/subscribers")
    return admin.post("/admin/subscribers/lookup", data={"email": email, "csrf_token": token})


def test_data_request_lookup_shows_data_export_and_delete(admin):
    subscriber = add_subscriber("reader@example.com")
    page = lookup(admin, "reader@example.com").get_data(as_text=True)
    assert "What we hold about this address" in page
    assert "reader@example.com" in page and consent.current().text in page
    assert "Export as JSON" in page and "Delete now" in page

    token = form_token(admin, "/admin/subscribers")
    response = admin.post(
        "/admin/subscribers/export", data={"email": "reader@example.com", "csrf_token": token}
    )
    assert response.mimetype == "application/json"
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="subscriber-{subscriber.id}.json"'
    )
    exported = json.loads(response.get_data(as_text=True))
    assert exported["email"] == "reader@example.com"
    assert exported["consent"]["version"] == consent.current().version


def test_data_request_delete_needs_confirmation_then_erases(admin):
    subscriber = add_subscriber("reader@example.com")
    subscriber_id = subscriber.id
    token = form_token(admin, "/admin/subscribers")
    data = {"email": "reader@example.com", "csrf_token": token}
    response = admin.post("/admin/subscribers/delete", data=data)
    assert response.status_code == 422
    assert db.session.get(Subscriber, subscriber_id) is not None

    response = admin.post("/admin/subscribers/delete", data={**data, "confirm": "yes"})
    assert response.status_code == 302
    db.session.expire_all()
    assert db.session.get(Subscriber, subscriber_id) is None
    tally = db.session.scalar(select(Tally).where(Tally.kind == "erased_staff"))
    assert tally.count == 1
    assert "Nothing found" in lookup(admin, "reader@example.com").get_data(as_text=True)


@pytest.mark.parametrize(
    "query", ["", "%", "*", "@example.com", "reader", "reader0@example.co", "r%@example.com"]
)
def test_data_request_lookup_matches_only_one_exact_address(admin, query):
    for n in range(3):
        add_subscriber(f"reader{n}@example.com")
    page = lookup(admin, query).get_data(as_text=True)
    assert "example.com" not in page.replace(f'value="{query}"', "") or "Nothing found" in page
    assert not re.search(r"reader\d@example\.com", page)


def test_no_admin_page_lists_subscriber_addresses(admin, app):
    for n in range(3):
        add_subscriber(f"reader{n}@example.com")
    campaign = campaigns.create("Edition", "<p>x</p>")
    shown = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/admin") or "GET" not in rule.methods:
            continue
        url = rule.rule.replace("<int:campaign_id>", str(campaign.id))
        response = admin.get(url)
        if rule.endpoint == "admin.login_form":
            # Logged-in staff are sent on from the login page to the dashboard.
            assert (response.status_code, response.location) == (302, "/admin/"), url
            continue
        assert response.status_code == 200, (url, response.status_code)
        assert not re.search(r"reader\d@example\.com", response.get_data(as_text=True)), url
        shown.append(rule.endpoint)
    assert {"admin.dashboard", "admin.campaign", "admin.data_requests"} <= set(shown), shown


# --- command line ----------------------------------------------------------------------


def test_admin_create_reads_the_password_from_stdin(runner):
    result = runner.invoke(
        args=["admin", "create", "Editor@Example.com", "--password-stdin"],
        input="a long passphrase\n",
    )
    assert result.exit_code == 0, result.output
    user = db.session.scalar(select(AdminUser).where(AdminUser.email == "editor@example.com"))
    assert user is not None and user.password_hash.startswith("$argon2id$")
    assert "a long passphrase" not in user.password_hash
    assert auth.authenticate("editor@example.com", "a long passphrase") is not None


def test_admin_create_prompts_twice_and_refuses_short_passwords(runner):
    result = runner.invoke(args=["admin", "create", "a@example.com"], input="short\nshort\n")
    assert result.exit_code != 0 and "at least 12 characters" in result.output
    result = runner.invoke(
        args=["admin", "create", "a@example.com"], input="long enough pass\ndifferent pass!!\n" * 3
    )
    assert result.exit_code != 0
    assert db.session.scalar(select(func.count(AdminUser.id))) == 0
    result = runner.invoke(
        args=["admin", "create", "a@example.com"], input="long enough pass\nlong enough pass\n"
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        args=["admin", "create", "a@example.com", "--password-stdin"], input="long enough pass\n"
    )
    assert result.exit_code != 0 and "exists already" in result.output
