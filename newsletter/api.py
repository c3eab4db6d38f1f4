"""The JSON API under /api/v1: bearer tokens, RFC 9457 problems, thin views.

Every view is exempt from the form CSRF check: a bearer token is sent deliberately by
the client, never attached by a browser the way a cookie is.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime

from flask import Blueprint, Flask, current_app, g, jsonify, request, url_for

from newsletter import api_tokens, campaigns, openapi, slots
from newsletter.extensions import limiter
from newsletter.models import Campaign
from newsletter.problems import Problem
from newsletter.web import security

bp = Blueprint("api", __name__, url_prefix="/api/v1")

REALM = 'Bearer realm="newsletter"'
# Editions with inlined CSS outgrow the 64 KiB the public forms allow.
MAX_BODY = 1024 * 1024
PUBLIC_ENDPOINTS = {"api.openapi_document"}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)


# --- authentication and request parsing -----------------------------------------------


@bp.before_request
def authenticate():
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise Problem(
            401,
            "Unauthorized",
            "Send a token in the header 'Authorization: Bearer <token>'; "
            "make one with 'flask --app newsletter token create NAME'.",
            headers={"WWW-Authenticate": REALM},
        )
    token = api_tokens.authenticate(credentials.strip())
    if token is None:
        raise Problem(
            401,
            "Unauthorized",
            "The token is unknown or has been revoked.",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    g.api_token_id = token.id
    request.max_content_length = MAX_BODY


def token_key() -> str:
    """Rate-limit key of the calling token (its hash prefix, never the token itself)."""
    _, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return "api:" + hashlib.sha256(credentials.strip().encode()).hexdigest()[:24]


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


def invalid(errors: dict[str, str]) -> Problem:
    return Problem(
        422,
        "Unprocessable Content",
        "The request has invalid fields; see 'errors'.",
        errors=[
            {"pointer": "#/" + name if name else "#", "detail": message}
            for name, message in errors.items()
        ],
    )


@bp.errorhandler(Problem)
def problem_response(error: Problem):
    return error.response()


@bp.errorhandler(campaigns.NotFound)
def not_found(error: campaigns.NotFound):
    return Problem(404, "Not Found", str(error)).response()


@bp.errorhandler(campaigns.WrongState)
def wrong_state(error: campaigns.WrongState):
    return Problem(409, "Conflict", str(error), campaign_status=error.status.value).response()


@bp.errorhandler(campaigns.Invalid)
def invalid_input(error: campaigns.Invalid):
    return invalid(error.errors).response()


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
@security.exempt
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
@security.exempt
def edit_campaign(campaign_id: int):
    data = json_body()
    only_fields(data, {"subject", "html", "text"})
    if not data:
        raise invalid({"": "Send at least one of subject, html, text."})
    campaign = campaigns.update(campaign_id, **data)
    return jsonify(campaign_json(campaign, content=True))


@bp.post("/campaigns/<int:campaign_id>/test")
@security.exempt
@limiter.limit(lambda: current_app.config["API_TEST_SEND_LIMIT"], key_func=token_key)
def send_test(campaign_id: int):
    data = json_body()
    only_fields(data, {"to"})
    try:
        campaigns.send_test(campaign_id, data.get("to", ""))
    except campaigns.CopyNotSent as exc:
        raise Problem(502, "Bad Gateway", str(exc)) from None
    return jsonify({"campaign_id": campaign_id, "sent": True})


@bp.post("/campaigns/<int:campaign_id>/schedule")
@security.exempt
def schedule_campaign(campaign_id: int):
    data = json_body(allow_empty=True)
    only_fields(data, {"send_at"})
    campaign, note = campaigns.schedule_and_start(campaign_id, parse_send_at(data.get("send_at")))
    body = campaign_json(campaign)
    if note:
        body["note"] = note
    return jsonify(body)


@bp.post("/campaigns/<int:campaign_id>/cancel")
@security.exempt
def cancel_campaign(campaign_id: int):
    return jsonify(campaign_json(campaigns.cancel(campaign_id)))


@bp.post("/campaigns/<int:campaign_id>/resume")
@security.exempt
def resume_campaign(campaign_id: int):
    return jsonify(campaign_json(campaigns.resume(campaign_id)))


@bp.get("/stats")
def stats():
    return jsonify(campaigns.stats())
