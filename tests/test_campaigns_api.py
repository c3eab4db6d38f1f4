"""The JSON API under /api/v1: bearer tokens, problems, campaigns, scheduling, test sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select, update

from newsletter import api_tokens, campaigns
from newsletter.extensions import db
from newsletter.models import ApiToken, Campaign, CampaignStatus
from newsletter.queue import get_queue
from tests.conftest import PUBLIC_URL, STAFF
from tests.html_vectors import BENIGN, UNSAFE, assert_benign_kept, assert_clean

PROBLEM = "application/problem+json"
HTML = '<h1>Release 5.0</h1><p>The new <b>viewer</b> is out. <a href="https://example.com/notes">Notes</a></p>'


class Api:
    """The test client with a bearer token."""

    def __init__(self, client, token: str) -> None:
        self.client, self.token = client, token

    def __call__(self, method: str, path: str, **kwargs):
        headers = {"Authorization": f"Bearer {self.token}", **kwargs.pop("headers", {})}
        return self.client.open("/api/v1" + path, method=method, headers=headers, **kwargs)

    def create(self, subject="November news", html=HTML, **fields) -> dict:
        response = self("POST", "/campaigns", json={"subject": subject, "html": html, **fields})
        assert response.status_code == 201, response.get_json()
        return response.get_json()


@pytest.fixture
def api(client):
    _, token = api_tokens.create("tests")
    return Api(client, token)


def set_status(campaign_id: int, status: CampaignStatus, **values) -> None:
    """Put a campaign into a state the sending pipeline would have brought it to."""
    db.session.execute(
        update(Campaign).where(Campaign.id == campaign_id).values(status=status, **values)
    )
    db.session.commit()


def assert_problem(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json()
    assert body["status"] == status and body["title"] and body["type"]
    return body


def pointers(body: dict) -> set[str]:
    return {error["pointer"] for error in body["errors"]}


# --- authentication -------------------------------------------------------------------


def test_no_token_gets_401_problem_with_bearer_challenge(client):
    response = client.get("/api/v1/campaigns")
    body = assert_problem(response, 401)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "token create" in body["detail"]
    response = client.get("/api/v1/campaigns", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    assert_problem(response, 401)


def test_wrong_token_is_refused(client, api):
    response = client.get("/api/v1/campaigns", headers={"Authorization": "Bearer nl_wrong"})
    assert_problem(response, 401)
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    forged = api.token[:-2] + ("aa" if not api.token.endswith("aa") else "bb")
    assert_problem(client.get("/api/v1/stats", headers={"Authorization": f"Bearer {forged}"}), 401)


def test_revoked_token_is_refused(api):
    assert api("GET", "/campaigns").status_code == 200
    api_tokens.revoke("tests")
    assert_problem(api("GET", "/campaigns"), 401)


def test_token_is_stored_hashed_and_use_is_recorded(api):
    row = db.session.scalar(select(ApiToken))
    assert row.last_used_at is None
    assert api.token not in (row.token_hash, row.name)
    assert api("GET", "/stats").status_code == 200
    db.session.refresh(row)
    assert row.last_used_at is not None
    assert row.last_used_at > datetime.now(UTC) - timedelta(minutes=1)


def test_openapi_document_needs_no_token(client):
    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    assert document["openapi"].startswith("3.1")
    assert document["servers"] == [{"url": f"{PUBLIC_URL}/api/v1"}]


def test_api_posts_need_no_csrf_token_but_a_bearer_token(client, api):
    """Cookies never authenticate the API, so cross-origin POSTs carry no CSRF risk."""
    response = client.post(
        "/api/v1/campaigns",
        json={"subject": "S", "html": "<p>x</p>"},
        headers={"Origin": "https://evil.example"},
    )
    assert_problem(response, 401)
    response = api(
        "POST",
        "/campaigns",
        json={"subject": "S", "html": "<p>x</p>"},
        headers={"Origin": "https://tooling.example"},
    )
    assert response.status_code == 201


# --- problems for bad requests ---------------------------------------------------------


def test_unknown_route_and_method_are_problems(api):
    assert_problem(api("GET", "/nothing-here"), 404)
    response = api("DELETE", "/campaigns")
    assert_problem(response, 405)
    assert set(response.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    assert_problem(api("GET", "/campaigns/999"), 404)
    assert_problem(api("GET", f"/campaigns/{2**70}"), 404)


def test_body_must_be_a_json_object(api):
    assert_problem(api("POST", "/campaigns", data="subject=x", content_type="text/plain"), 415)
    assert_problem(
        api("POST", "/campaigns", data="{not json", content_type="application/json"), 400
    )
    body = assert_problem(api("POST", "/campaigns", json=["subject"]), 422)
    assert pointers(body) == {"#"}


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_body_nested_200000_deep_is_a_400_problem_not_a_crash(api, method):
    path = "/campaigns" if method == "POST" else f"/campaigns/{api.create()['id']}"
    for body in ["[" * 200_000, '{"subject": ' + "[" * 200_000]:
        response = api(method, path, data=body, content_type="application/json")
        assert "nested too deeply" in assert_problem(response, 400)["detail"]
    assert db.session.scalar(select(func.count(Campaign.id))) == (method == "PATCH")


@pytest.mark.parametrize("field", ["subject", "html", "text"])
def test_lone_surrogate_is_refused_with_a_pointer_to_its_field(api, field):
    """JSON may escape half a UTF-16 pair ("\\ud800"); it is no character and cannot be stored."""
    fields = {"subject": "November news", "html": "<p>x</p>", "text": "x"}
    fields[field] = fields[field] + "\ud800"
    response = api("POST", "/campaigns", json=fields)
    body = assert_problem(response, 422)
    assert pointers(body) == {f"#/{field}"}
    assert "surrogate" in body["errors"][0]["detail"]
    assert db.session.scalar(select(Campaign)) is None

    created = api.create()
    response = api("PATCH", f"/campaigns/{created['id']}", json={field: fields[field]})
    assert pointers(assert_problem(response, 422)) == {f"#/{field}"}
    # The raw escape as a client sends it, byte for byte.
    raw = '{"' + field + '": "a\\ud800b"}'
    response = api(
        "PATCH", f"/campaigns/{created['id']}", data=raw, content_type="application/json"
    )
    assert pointers(assert_problem(response, 422)) == {f"#/{field}"}
    assert api("GET", f"/campaigns/{created['id']}").get_json()["subject"] == "November news"


def test_create_validates_every_field_with_clear_messages(api):
    body = assert_problem(api("POST", "/campaigns", json={}), 422)
    assert pointers(body) == {"#/subject", "#/html"}
    assert all(error["detail"] for error in body["errors"])

    body = assert_problem(
        api("POST", "/campaigns", json={"subject": "a\r\nBcc: x@example.com", "html": "<p>x</p>"}),
        422,
    )
    assert pointers(body) == {"#/subject"}
    body = assert_problem(api("POST", "/campaigns", json={"subject": "x" * 201, "html": "x"}), 422)
    assert "200" in body["errors"][0]["detail"]
    body = assert_problem(
        api("POST", "/campaigns", json={"subject": "S", "html": "<p>x</p>", "sendAt": "now"}), 422
    )
    assert pointers(body) == {"#/sendAt"}
    body = assert_problem(api("POST", "/campaigns", json={"subject": "S", "html": 5}), 422)
    assert pointers(body) == {"#/html"}
    assert db.session.scalar(select(Campaign)) is None


# --- create, list, get, edit -----------------------------------------------------------


def test_create_derives_the_text_part_from_html(api):
    created = api.create()
    assert created["status"] == "draft" and created["send_at"] is None
    assert created["text_is_derived"] is True
    assert "# Release 5.0" in created["text"] and "https://example.com/notes" in created["text"]
    assert "<b>" not in created["text"]
    assert {"recipients": 0, "sent": 0, "failed": 0}.items() <= created.items()

    fetched = api("GET", f"/campaigns/{created['id']}")
    assert fetched.status_code == 200
    assert fetched.get_json()["html"] == HTML


def test_create_keeps_a_given_text_part(api):
    created = api.create(text="Release 5.0 is out.")
    assert created["text"] == "Release 5.0 is out." and created["text_is_derived"] is False


def test_create_answers_201_with_location(api):
    response = api("POST", "/campaigns", json={"subject": "S", "html": "<p>x</p>"})
    assert response.status_code == 201
    assert response.headers["Location"].endswith(f"/api/v1/campaigns/{response.get_json()['id']}")


def test_large_edition_is_accepted(api):
    """Editions with inlined CSS are larger than the 64 KiB the public forms allow."""
    html = "<p style='color:#333;font-family:Helvetica,Arial'>Lorem ipsum dolor sit.</p>\n" * 1500
    assert len(html) > 100_000
    created = api.create(html=html)
    assert len(api("GET", f"/campaigns/{created['id']}").get_json()["html"]) == len(html)


def test_list_is_newest_first_without_content(api):
    first = api.create(subject="October")
    second = api.create(subject="November")
    listed = api("GET", "/campaigns").get_json()
    assert [c["id"] for c in listed] == [second["id"], first["id"]]
    assert "html" not in listed[0]
    assert {"id", "subject", "status", "send_at", "recipients", "sent", "failed"} <= set(listed[0])


def test_patch_edits_a_draft_and_rederives_text(api):
    created = api.create()
    response = api(
        "PATCH", f"/campaigns/{created['id']}", json={"html": "<p>Now <i>better</i></p>"}
    )
    assert response.status_code == 200
    edited = response.get_json()
    assert edited["subject"] == "November news"
    assert edited["text"].strip() == "Now _better_"

    edited = api("PATCH", f"/campaigns/{created['id']}", json={"text": "Own words."}).get_json()
    assert edited["text"] == "Own words." and edited["text_is_derived"] is False
    edited = api("PATCH", f"/campaigns/{created['id']}", json={"html": "<p>Third</p>"}).get_json()
    assert edited["text"] == "Own words.", "an own text part survives HTML edits"
    edited = api("PATCH", f"/campaigns/{created['id']}", json={"text": None}).get_json()
    assert edited["text"].strip() == "Third" and edited["text_is_derived"] is True


def test_patch_validates(api):
    created = api.create()
    assert_problem(api("PATCH", f"/campaigns/{created['id']}", json={}), 422)
    body = assert_problem(api("PATCH", f"/campaigns/{created['id']}", json={"subject": " "}), 422)
    assert pointers(body) == {"#/subject"}
    assert_problem(api("PATCH", "/campaigns/12345", json={"subject": "x"}), 404)


@pytest.mark.parametrize("status", ["sending", "paused", "sent", "cancelled"])
def test_patch_is_refused_once_sending_began(api, status):
    created = api.create()
    set_status(created["id"], CampaignStatus(status))
    body = assert_problem(api("PATCH", f"/campaigns/{created['id']}", json={"subject": "x"}), 409)
    assert body["campaign_status"] == status
    assert status in body["detail"] and "draft or scheduled" in body["detail"]
    assert db.session.get(Campaign, created["id"]).subject == "November news"


def test_patch_is_allowed_while_scheduled(api):
    created = api.create()
    api("POST", f"/campaigns/{created['id']}/schedule", json={})
    response = api("PATCH", f"/campaigns/{created['id']}", json={"subject": "Fixed typo"})
    assert response.status_code == 200 and response.get_json()["status"] == "scheduled"


# --- scheduling -----------------------------------------------------------------------


def test_schedule_with_offset_in_another_zone_is_stored_as_utc(api):
    created = api.create()
    response = api(
        "POST",
        f"/campaigns/{created['id']}/schedule",
        json={"send_at": "2031-03-04T15:30:00+05:30"},
    )
    assert response.status_code == 200
    assert response.get_json()["status"] == "scheduled"
    assert response.get_json()["send_at"] == "2031-03-04T10:00:00+00:00"
    stored = db.session.get(Campaign, created["id"])
    assert stored.send_at == datetime(2031, 3, 4, 10, 0, tzinfo=UTC)

    response = api(
        "POST",
        f"/campaigns/{created['id']}/schedule",
        json={"send_at": "2031-03-04T23:00:00-08:00"},
    )
    assert response.get_json()["send_at"] == "2031-03-05T07:00:00+00:00", "rescheduling works"
    response = api(
        "POST", f"/campaigns/{created['id']}/schedule", json={"send_at": "2031-03-05T07:00:00Z"}
    )
    assert response.get_json()["send_at"] == "2031-03-05T07:00:00+00:00"


@pytest.mark.parametrize(
    "send_at, message",
    [
        ("2031-03-04T10:00:00", "offset"),
        ("2031-03-04", "offset"),
        ("next tuesday", "ISO 8601"),
        (1700000000, "ISO 8601"),
        ("2020-01-01T10:00:00+00:00", "passed"),
    ],
)
def test_schedule_refuses_unclear_times(api, send_at, message):
    created = api.create()
    response = api("POST", f"/campaigns/{created['id']}/schedule", json={"send_at": send_at})
    body = assert_problem(response, 422)
    assert pointers(body) == {"#/send_at"}
    assert message in body["errors"][0]["detail"]
    assert db.session.get(Campaign, created["id"]).status == CampaignStatus.DRAFT


@pytest.mark.parametrize("body", [{}, {"send_at": None}, None])
def test_schedule_without_time_takes_the_next_monthly_slot(api, body):
    created = api.create()
    kwargs = {"json": body} if body is not None else {}
    response = api("POST", f"/campaigns/{created['id']}/schedule", **kwargs)
    assert response.status_code == 200, response.get_json()
    send_at = datetime.fromisoformat(response.get_json()["send_at"])
    assert send_at == campaigns.next_slot()
    assert send_at > datetime.now(UTC)
    local = send_at.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert (local.hour, local.minute, local.weekday()) == (10, 0, 1) and local.day <= 7


@pytest.mark.parametrize(
    "after, expected",
    [
        (datetime(2026, 12, 2, tzinfo=UTC), datetime(2027, 1, 5, 9, 0, tzinfo=UTC)),  # winter: CET
        (datetime(2027, 6, 2, tzinfo=UTC), datetime(2027, 7, 6, 8, 0, tzinfo=UTC)),  # summer: CEST
        # The slot of the month when the clocks change (last Sunday of March) keeps 10:00.
        (datetime(2027, 3, 2, 9, 0, 1, tzinfo=UTC), datetime(2027, 4, 6, 8, 0, tzinfo=UTC)),
    ],
)
def test_monthly_slot_keeps_local_time_across_dst(app, after, expected):
    assert app.config["MONTHLY_SLOT"] == "first tue 10:00 Europe/Berlin"
    assert campaigns.next_slot(after) == expected


def test_schedule_local_times_in_winter_and_summer(api):
    winter, summer = api.create(), api.create()
    response = api(
        "POST", f"/campaigns/{winter['id']}/schedule", json={"send_at": "2031-01-07T10:00:00+01:00"}
    )
    assert response.get_json()["send_at"] == "2031-01-07T09:00:00+00:00"
    response = api(
        "POST", f"/campaigns/{summer['id']}/schedule", json={"send_at": "2031-07-01T10:00:00+02:00"}
    )
    assert response.get_json()["send_at"] == "2031-07-01T08:00:00+00:00"


def test_schedule_now_enqueues_the_start_at_once(api):
    created = api.create()
    before = datetime.now(UTC)
    response = api("POST", f"/campaigns/{created['id']}/schedule", json={"send_at": "now"})
    assert response.status_code == 200
    scheduled = response.get_json()
    assert scheduled["status"] == "scheduled" and "note" not in scheduled
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(scheduled["send_at"])
    assert datetime.fromisoformat(scheduled["send_at"]) <= datetime.now(UTC)
    assert f"start-{created['id']}" in get_queue("tick").get_job_ids()


def test_schedule_now_while_redis_is_down_is_kept_and_the_tick_sends_it_later(
    api, redis_down_app, work, smtp
):
    """The database is the scheduler: an outage of the queue delays the start, no more."""
    from newsletter.tick import enqueue_tick

    readers = add_readers(2)
    created = api.create()
    down = Api(redis_down_app.test_client(), api.token)
    response = down("POST", f"/campaigns/{created['id']}/schedule", json={"send_at": "now"})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["status"] == "scheduled"
    assert "queue" in body["note"] and "periodic tick" in body["note"]
    db.session.expire_all()
    assert db.session.get(Campaign, created["id"]).status == CampaignStatus.SCHEDULED
    assert get_queue("tick").count == 0 and editions(smtp) == []

    enqueue_tick(0)  # what worker.py does every TICK_INTERVAL, with Redis back
    work()
    assert api("GET", f"/campaigns/{created['id']}").get_json()["status"] == "sent"
    assert sorted(r for m in editions(smtp) for r in m.rcpt_tos) == sorted(readers)


def test_schedule_later_enqueues_nothing(api):
    created = api.create()
    api("POST", f"/campaigns/{created['id']}/schedule", json={})
    assert get_queue("tick").count == 0


@pytest.mark.parametrize("status", ["sending", "sent", "cancelled"])
def test_schedule_is_refused_after_sending_began(api, status):
    created = api.create()
    set_status(created["id"], CampaignStatus(status))
    assert_problem(api("POST", f"/campaigns/{created['id']}/schedule", json={}), 409)


def test_overdue_paused_campaign_can_be_rescheduled(api):
    """A campaign found long overdue waits, paused, for a marketer to pick a new time."""
    created = api.create()
    set_status(
        created["id"],
        CampaignStatus.PAUSED,
        send_at=datetime.now(UTC) - timedelta(days=2),
        status_reason="Overdue: the service was down past the send time.",
    )
    response = api("POST", f"/campaigns/{created['id']}/schedule", json={})
    assert response.status_code == 200
    assert response.get_json()["status"] == "scheduled"
    assert response.get_json()["status_reason"] is None


# --- cancel and resume -----------------------------------------------------------------


@pytest.mark.parametrize("status", ["draft", "sent", "cancelled"])
def test_cancel_is_refused_unless_scheduled_sending_or_paused(api, status):
    created = api.create()
    set_status(created["id"], CampaignStatus(status))
    body = assert_problem(api("POST", f"/campaigns/{created['id']}/cancel"), 409)
    assert body["campaign_status"] == status


def test_cancel_stops_a_scheduled_campaign(api):
    created = api.create()
    api("POST", f"/campaigns/{created['id']}/schedule", json={"send_at": "2031-01-07T10:00:00Z"})
    response = api("POST", f"/campaigns/{created['id']}/cancel")
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    assert db.session.get(Campaign, created["id"]).status == CampaignStatus.CANCELLED
    assert_problem(api("POST", f"/campaigns/{created['id']}/cancel"), 409)


@pytest.mark.parametrize("status", ["draft", "scheduled", "sending", "sent", "cancelled"])
def test_resume_is_refused_unless_paused(api, status):
    created = api.create()
    set_status(created["id"], CampaignStatus(status))
    body = assert_problem(api("POST", f"/campaigns/{created['id']}/resume"), 409)
    assert "paused" in body["detail"]


def test_resume_of_a_campaign_that_never_started_sends_it_now(api):
    created = api.create()
    set_status(
        created["id"],
        CampaignStatus.PAUSED,
        send_at=datetime.now(UTC) - timedelta(days=2),
        status_reason="Overdue",
    )
    response = api("POST", f"/campaigns/{created['id']}/resume")
    assert response.status_code == 200
    resumed = response.get_json()
    assert resumed["status"] == "scheduled"
    assert datetime.fromisoformat(resumed["send_at"]) > datetime.now(UTC) - timedelta(minutes=1)
    assert f"start-{created['id']}" in get_queue("tick").get_job_ids()


# --- test send ------------------------------------------------------------------------


def test_test_send_arrives_with_list_unsubscribe_headers(api, smtp, staff):
    created = api.create(subject="Grüße aus dem Labor")
    response = api("POST", f"/campaigns/{created['id']}/test", json={"to": "Staff@Example.com"})
    assert response.status_code == 200, response.get_json()
    [mail] = smtp.messages
    assert mail.rcpt_tos == ["staff@example.com"]
    message = mail.message
    assert message["Subject"] == "[Test] Grüße aus dem Labor"  # not taken for the edition
    url = f"{PUBLIC_URL}/unsubscribe/test-copy-no-subscription"
    assert message["List-Unsubscribe"] == f"<{url}>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["List-Id"]
    assert url in mail.text and url in mail.html
    assert "Release 5.0" in mail.html and "Release 5.0" in mail.text
    assert db.session.get(Campaign, created["id"]).status == CampaignStatus.DRAFT


def test_test_send_goes_only_to_a_staff_accounts_address(api, smtp, staff):
    created = api.create()
    path = f"/campaigns/{created['id']}/test"
    for other in ["reader@example.com", "staff+x@example.com", "staff@example.org"]:
        body = assert_problem(api("POST", path, json={"to": other}), 422)
        assert pointers(body) == {"#/to"} and "staff" in body["errors"][0]["detail"]
    assert smtp.messages == []
    assert api("POST", path, json={"to": STAFF}).status_code == 200
    assert [m.rcpt_tos for m in smtp.messages] == [[STAFF]]


def test_test_send_validates_the_address(api, smtp):
    created = api.create()
    for bad in ["not-an-address", "", "a@b\r\nBcc: c@example.com", 42]:
        body = assert_problem(
            api("POST", f"/campaigns/{created['id']}/test", json={"to": bad}), 422
        )
        assert pointers(body) == {"#/to"}
    assert_problem(api("POST", f"/campaigns/{created['id']}/test", json={}), 422)
    assert_problem(api("POST", "/campaigns/4242/test", json={"to": "staff@example.com"}), 404)
    assert smtp.messages == []


def test_test_send_refused_by_the_mail_server_is_a_502(api, smtp, staff):
    created = api.create()
    smtp.handler.replies["staff@example.com"] = "550 5.1.1 no such mailbox"
    body = assert_problem(
        api("POST", f"/campaigns/{created['id']}/test", json={"to": "staff@example.com"}), 502
    )
    assert "550" in body["detail"]


def test_test_sends_are_rate_limited_per_token(app, api, smtp, staff):
    app.config["API_TEST_SEND_LIMIT"] = "2/hour"
    created = api.create()
    path = f"/campaigns/{created['id']}/test"
    codes = [api("POST", path, json={"to": "staff@example.com"}).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert len(smtp.messages) == 2


# --- stats ----------------------------------------------------------------------------


def test_stats_counts_only(api, subscribed):
    subscribed("one@example.com")
    subscribed("two@example.com")
    api.create()
    scheduled = api.create()
    api("POST", f"/campaigns/{scheduled['id']}/schedule", json={})
    response = api("GET", "/stats")
    assert response.status_code == 200
    stats = response.get_json()
    assert stats["subscribers"] == 2
    assert stats["pending_signups"] == 0
    assert stats["campaigns"]["draft"] == 1 and stats["campaigns"]["scheduled"] == 1
    assert "@" not in response.get_data(as_text=True)


# --- through sending ------------------------------------------------------------------


def add_readers(count: int) -> list[str]:
    from newsletter import consent
    from newsletter.models import Subscriber

    emails = [f"reader{n}@example.com" for n in range(count)]
    consent_id = consent.current().id
    db.session.add_all(
        Subscriber(email=e, requested_at=datetime.now(UTC), consent_text_id=consent_id)
        for e in emails
    )
    db.session.commit()
    return emails


def editions(smtp) -> list:
    return [m for m in smtp.messages if m.message["List-Unsubscribe"]]


def test_marketer_journey_schedule_now_watch_live_totals_until_sent(api, work, smtp):
    from newsletter import sending

    readers = add_readers(4)
    created = api.create()
    api("POST", f"/campaigns/{created['id']}/schedule", json={"send_at": "now"})
    assert sending.start(created["id"])  # what the job enqueued at once does
    live = api("GET", f"/campaigns/{created['id']}").get_json()
    assert live["status"] == "sending" and live["recipients"] == 4 and live["sent"] == 0

    work()
    done = api("GET", f"/campaigns/{created['id']}").get_json()
    assert done["status"] == "sent", done
    assert (done["recipients"], done["sent"], done["failed"], done["unknown"]) == (4, 4, 0, 0)
    assert done["started_at"] and done["finished_at"]
    assert sorted(r for m in editions(smtp) for r in m.rcpt_tos) == sorted(readers)
    assert api("GET", "/stats").get_json()["campaigns"]["sent"] == 1


def test_cancel_during_sending_stops_it(api, work, smtp):
    from newsletter import sending

    add_readers(3)
    created = api.create()
    api("POST", f"/campaigns/{created['id']}/schedule", json={"send_at": "now"})
    sending.start(created["id"])
    response = api("POST", f"/campaigns/{created['id']}/cancel")
    assert response.status_code == 200 and response.get_json()["status"] == "cancelled"
    work()
    assert editions(smtp) == []
    after = api("GET", f"/campaigns/{created['id']}").get_json()
    assert after["status"] == "cancelled" and after["sent"] == 0
    assert_problem(api("POST", f"/campaigns/{created['id']}/resume"), 409)


def test_resume_after_a_pause_sends_the_rest(api, work, smtp):
    from newsletter import sending

    readers = add_readers(3)
    created = api.create()
    api("POST", f"/campaigns/{created['id']}/schedule", json={"send_at": "now"})
    sending.start(created["id"])
    set_status(created["id"], CampaignStatus.PAUSED, status_reason="Blocked (5.7.1)")
    work()
    paused = api("GET", f"/campaigns/{created['id']}").get_json()
    assert paused["status"] == "paused" and paused["status_reason"] == "Blocked (5.7.1)"
    assert editions(smtp) == []
    body = assert_problem(api("POST", f"/campaigns/{created['id']}/schedule", json={}), 409)
    assert "resume it instead" in body["detail"]

    response = api("POST", f"/campaigns/{created['id']}/resume")
    assert response.status_code == 200 and response.get_json()["status"] == "sending"
    work()
    assert api("GET", f"/campaigns/{created['id']}").get_json()["status"] == "sent"
    assert sorted(r for m in editions(smtp) for r in m.rcpt_tos) == sorted(readers)


# --- unsafe HTML ----------------------------------------------------------------------


def test_unsafe_html_is_cleaned_before_it_is_stored_and_benign_formatting_stays(api):
    created = api.create(html=UNSAFE + BENIGN)
    stored = db.session.get(Campaign, created["id"])
    for html in [created["html"], stored.html]:
        assert_clean(html)
        assert_benign_kept(html)
    assert "xss" not in stored.text and "evil.example" not in stored.text

    response = api("PATCH", f"/campaigns/{created['id']}", json={"html": BENIGN + UNSAFE})
    assert response.status_code == 200
    db.session.refresh(stored)
    assert_clean(stored.html)
    assert_benign_kept(stored.html)


def test_html_that_is_only_unsafe_is_refused(api):
    body = assert_problem(
        api("POST", "/campaigns", json={"subject": "S", "html": "<script>x</script>"}), 422
    )
    assert pointers(body) == {"#/html"}


def test_unsafe_html_never_reaches_the_mail_server(api, work, smtp, staff):
    readers = add_readers(2)
    created = api.create(html=UNSAFE + BENIGN)
    assert api("POST", f"/campaigns/{created['id']}/test", json={"to": STAFF}).status_code == 200
    api("POST", f"/campaigns/{created['id']}/schedule", json={"send_at": "now"})
    work()
    received = smtp.messages
    assert sorted(r for m in received for r in m.rcpt_tos) == sorted([STAFF, *readers])
    for mail in received:
        assert_clean(mail.html)
        assert_benign_kept(mail.html)
        assert "xss" not in mail.text and "evil.example" not in mail.text


def test_an_edition_stored_before_cleaning_is_cleaned_when_tested_and_scheduled(
    api, work, smtp, staff
):
    readers = add_readers(1)
    created = api.create(html=BENIGN)
    db.session.execute(  # as an edition written before cleaning existed was stored
        update(Campaign).where(Campaign.id == created["id"]).values(html=UNSAFE + BENIGN)
    )
    db.session.commit()
    assert api("POST", f"/campaigns/{created['id']}/test", json={"to": STAFF}).status_code == 200
    api("POST", f"/campaigns/{created['id']}/schedule", json={"send_at": "now"})
    stored = db.session.get(Campaign, created["id"])
    db.session.refresh(stored)
    assert_clean(stored.html)
    work()
    assert sorted(r for m in smtp.messages for r in m.rcpt_tos) == sorted([STAFF, *readers])
    for mail in smtp.messages:
        assert_clean(mail.html)
        assert_benign_kept(mail.html)
