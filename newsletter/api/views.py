"""The routes of /api/v1: read the body into its model, call one campaigns function, answer.

Every view that takes a POST is exempt from the form CSRF check: a bearer token is sent
deliberately by the client, never attached by a browser the way a cookie is.
"""

from __future__ import annotations

import json
from typing import TypeVar

from flask import current_app, jsonify, request, url_for
from pydantic import BaseModel, ValidationError

from newsletter import campaigns
from newsletter.api import bp, openapi, schemas, token_key
from newsletter.api.problems import Problem, invalid
from newsletter.extensions import limiter
from newsletter.models import Campaign

Body = TypeVar("Body", bound=BaseModel)


def bearer_only(view):
    """Mark a view as needing no CSRF token (``csrf_exempt``, read by the CSRF check)."""
    view.csrf_exempt = True
    return view


def read(model: type[Body], *, allow_empty: bool = False) -> Body:
    """Return the request's JSON body as ``model``, or raise the fitting problem (415, 400, 422)."""
    raw = request.get_data(cache=True)
    if allow_empty and not raw.strip():
        return model()
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
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(schemas.field_errors(exc, model)) from None


def shown(campaign: Campaign, model: type[schemas.Campaign] = schemas.Campaign, **extra) -> dict:
    """The campaign as ``model`` shows it, with live totals and its URL."""
    names = [name for name in model.model_fields if hasattr(campaign, name)]
    values = {name: getattr(campaign, name) for name in names}
    values |= campaigns.totals(campaign)
    if "translations" in model.model_fields:
        values["translations"] = {
            row.language: {
                name: getattr(row, name) for name in schemas.TranslationShown.model_fields
            }
            for row in campaign.translations
        }
    values["url"] = url_for("api.get_campaign", campaign_id=campaign.id)
    values |= {name: value for name, value in extra.items() if value is not None}
    return model.model_validate(values).model_dump(mode="json")


@bp.get("/openapi.json")
def openapi_document():
    return jsonify(openapi.document(current_app.config["PUBLIC_URL"]))


@bp.post("/campaigns")
@bearer_only
def create_campaign():
    new = read(schemas.NewCampaign).model_dump(exclude_unset=True)
    campaign = campaigns.create(**new)
    response = jsonify(shown(campaign, schemas.CampaignWithContent))
    response.status_code = 201
    response.headers["Location"] = url_for("api.get_campaign", campaign_id=campaign.id)
    return response


@bp.get("/campaigns")
def list_campaigns():
    return jsonify([shown(c) for c in campaigns.list_all()])


@bp.get("/campaigns/<int:campaign_id>")
def get_campaign(campaign_id: int):
    return jsonify(shown(campaigns.get(campaign_id), schemas.CampaignWithContent))


@bp.patch("/campaigns/<int:campaign_id>")
@bearer_only
def edit_campaign(campaign_id: int):
    changes = read(schemas.CampaignChanges).model_dump(exclude_unset=True)
    campaign = campaigns.update(campaign_id, **changes)
    return jsonify(shown(campaign, schemas.CampaignWithContent))


@bp.post("/campaigns/<int:campaign_id>/test")
@bearer_only
@limiter.limit(lambda: current_app.config["API_TEST_SEND_LIMIT"], key_func=token_key)
def send_test(campaign_id: int):
    test = read(schemas.TestSend)
    campaigns.send_test(campaign_id, test.to, test.language)
    return jsonify(schemas.TestSent(campaign_id=campaign_id, sent=True).model_dump(mode="json"))


@bp.post("/campaigns/<int:campaign_id>/schedule")
@bearer_only
def schedule_campaign(campaign_id: int):
    send_at = read(schemas.Schedule, allow_empty=True).send_at
    campaign, note = campaigns.schedule_and_start(campaign_id, send_at)
    return jsonify(shown(campaign, schemas.ScheduledCampaign, note=note))


@bp.post("/campaigns/<int:campaign_id>/cancel")
@bearer_only
def cancel_campaign(campaign_id: int):
    return jsonify(shown(campaigns.cancel(campaign_id)))


@bp.post("/campaigns/<int:campaign_id>/resume")
@bearer_only
def resume_campaign(campaign_id: int):
    return jsonify(shown(campaigns.resume(campaign_id)))


@bp.get("/stats")
def stats():
    return jsonify(schemas.Stats.model_validate(campaigns.stats()).model_dump(mode="json"))
