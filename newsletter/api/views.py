"""The routes of /api/v1: read the body, call one campaigns function, answer in JSON.

Every view that takes a POST is exempt from the form CSRF check: a bearer token is sent
deliberately by the client, never attached by a browser the way a cookie is.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from flask import current_app, jsonify, request, url_for

from newsletter import campaigns, slots
from newsletter.api import bp, openapi, token_key
from newsletter.api.problems import Problem, invalid
from newsletter.extensions import limiter
from newsletter.models import Campaign


def bearer_only(view):
    """Mark a view as needing no CSRF token (``csrf_exempt``, read by the CSRF check)."""
    view.csrf_exempt = True
    return view


# --- request parsing ------------------------------------------------------------------


def json_body(*, allow_empty: bool = False) -> dict:
    """Return the request's JSON object, or raise the fitting problem (415, 400, 422)."""
    raw = request.get_data(cache=True)
    if allow_empty and not raw.strip():
        return {}
    if not request.is_json:
        raise Problem(
            415, "Unsupported Media Type", "Send a JSON body with 'Content-Type: application/json'."
        )
    try:
        data = json.loads(raw)
    except ValueError:
        raise Problem(400, "Bad Request", "The body is not valid JSON.") from None
    except RecursionError:  # the parser recurses once per level of nesting
        raise Problem(400, "Bad Request", "The body is nested too deeply.") from None
    if not isinstance(data, dict):
        raise invalid({"": "The body must be a JSON object."})
    return data


def only_fields(data: dict, allowed: set[str]) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise invalid(
            {name: f"Unknown field; the fields are {sorted(allowed)}." for name in unknown}
        )


# --- representation -------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    return moment.astimezone(UTC).isoformat() if moment is not None else None


def campaign_json(campaign: Campaign, *, content: bool = False) -> dict:
    data = {
        "id": campaign.id,
        "subject": campaign.subject,
        "status": campaign.status.value,
        "status_reason": campaign.status_reason,
        "send_at": iso(campaign.send_at),
        **campaigns.totals(campaign),
        "created_at": iso(campaign.created_at),
        "updated_at": iso(campaign.updated_at),
        "started_at": iso(campaign.started_at),
        "finished_at": iso(campaign.finished_at),
        "text_is_derived": campaign.text_is_derived,
        "url": url_for("api.get_campaign", campaign_id=campaign.id),
    }
    if content:
        data["html"] = campaign.html
        data["text"] = campaign.text
    return data


def parse_send_at(value) -> datetime | str | None:
    """Read ``send_at``: absent or null (next slot), "now", or ISO 8601 with an offset."""
    try:
        return slots.parse_send_at(value)
    except ValueError as exc:
        raise invalid({"send_at": str(exc)}) from None


# --- routes ---------------------------------------------------------------------------


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(openapi.document(current_app.config["PUBLIC_URL"]))


@bp.post("/campaigns")
@bearer_only
def create_campaign():
    data = json_body()
    only_fields(data, {"subject", "html", "text"})
    campaign = campaigns.create(data.get("subject"), data.get("html"), data.get("text"))
    response = jsonify(campaign_json(campaign, content=True))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_campaign", campaign_id=campaign.id)
    return response


@bp.get("/campaigns")
def list_campaigns():
    return jsonify([campaign_json(c) for c in campaigns.list_all()])


@bp.get("/campaigns/<int:campaign_id>")
def get_campaign(campaign_id: int):
    return jsonify(campaign_json(campaigns.get(campaign_id), content=True))


@bp.patch("/campaigns/<int:campaign_id>")
@bearer_only
def edit_campaign(campaign_id: int):
    data = json_body()
    only_fields(data, {"subject", "html", "text"})
    if not data:
        raise invalid({"": "Send at least one of subject, html, text."})
    campaign = campaigns.update(campaign_id, **data)
    return jsonify(campaign_json(campaign, content=True))


@bp.post("/campaigns/<int:campaign_id>/test")
@bearer_only
@limiter.limit(lambda: current_app.config["API_TEST_SEND_LIMIT"], key_func=token_key)
def send_test(campaign_id: int):
    data = json_body()
    only_fields(data, {"to"})
    campaigns.send_test(campaign_id, data.get("to", ""))
    return jsonify({"campaign_id": campaign_id, "sent": True})


@bp.post("/campaigns/<int:campaign_id>/schedule")
@bearer_only
def schedule_campaign(campaign_id: int):
    data = json_body(allow_empty=True)
    only_fields(data, {"send_at"})
    campaign, note = campaigns.schedule_and_start(campaign_id, parse_send_at(data.get("send_at")))
    body = campaign_json(campaign)
    if note:
        body["note"] = note
    return jsonify(body)


@bp.post("/campaigns/<int:campaign_id>/cancel")
@bearer_only
def cancel_campaign(campaign_id: int):
    return jsonify(campaign_json(campaigns.cancel(campaign_id)))


@bp.post("/campaigns/<int:campaign_id>/resume")
@bearer_only
def resume_campaign(campaign_id: int):
    return jsonify(campaign_json(campaigns.resume(campaign_id)))


@bp.get("/stats")
def stats():
    return jsonify(campaigns.stats())
