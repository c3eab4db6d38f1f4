"""The OpenAPI 3.1 document of /api/v1, made from the models in ``schemas`` and a route table.

pydantic writes JSON Schema 2020-12, the dialect of OpenAPI 3.1, so the request models
the views validate with are the schemas the document shows. ``tests/test_openapi.py``
checks the table against the real routes and answers.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from flask import has_app_context
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, models_json_schema

from newsletter import i18n
from newsletter.api import schemas

REF_TEMPLATE = "#/components/schemas/{model}"

NOT_JSON = "The body is not application/json."
BAD_JSON = "The body is not valid JSON, or is nested too deeply."
UNPROCESSABLE = "Invalid fields; see errors."
UNAUTHORIZED = "No token, or an unknown or revoked one."
NOT_FOUND = "No such campaign."
CONFLICT = "The campaign's status does not allow this."


@dataclass(frozen=True)
class Route:
    """One operation: its models, answers and problems.

    Every route but a public one may answer 401; one with ``{campaign_id}`` 404; one with
    a body 400, 415 and 422.
    """

    method: str
    path: str
    summary: str
    response: type[BaseModel] | None  # None: not described (the document itself)
    answer: str
    status: int = 200
    body: type[BaseModel] | None = None
    body_required: bool = True
    problems: dict[int, str] = field(default_factory=dict)
    description: str | None = None
    headers: tuple[str, ...] = ()
    public: bool = False


def _campaign_action(path: str, summary: str, allowed: str) -> Route:
    return Route(
        "post",
        path,
        summary,
        schemas.Campaign,
        "The campaign now.",
        problems={409: CONFLICT},
        description=f"Allowed while the campaign is {allowed}.",
    )


ROUTES = [
    Route(
        "post",
        "/campaigns",
        "Create a draft",
        schemas.CampaignWithContent,
        "Created.",
        status=201,
        body=schemas.NewCampaign,
        headers=("Location",),
    ),
    Route(
        "get", "/campaigns", "List campaigns, newest first", schemas.CampaignList, "The campaigns."
    ),
    Route(
        "get",
        "/campaigns/{campaign_id}",
        "A campaign with live totals while it sends",
        schemas.CampaignWithContent,
        "The campaign.",
    ),
    Route(
        "patch",
        "/campaigns/{campaign_id}",
        "Edit a draft or scheduled campaign",
        schemas.CampaignWithContent,
        "The edited campaign.",
        body=schemas.CampaignChanges,
        problems={409: CONFLICT},
    ),
    Route(
        "post",
        "/campaigns/{campaign_id}/test",
        "Send one test copy to a staff address, now",
        schemas.TestSent,
        "The mail server took the copy.",
        body=schemas.TestSend,
        problems={
            429: "Too many test copies; see Retry-After.",
            502: "The mail server refused the copy.",
        },
        description=(
            "Only to the address of a staff (admin) account, made with "
            "'flask --app newsletter admin create EMAIL'; any other address is refused "
            "(422, pointer #/to) and nothing is sent."
        ),
    ),
    Route(
        "post",
        "/campaigns/{campaign_id}/schedule",
        "Schedule for a time, now, or the next monthly slot",
        schemas.ScheduledCampaign,
        "The scheduled campaign.",
        body=schemas.Schedule,
        body_required=False,
        problems={409: CONFLICT},
        description=(
            "Allowed for drafts, scheduled campaigns, and paused ones that never started. "
            "A time without UTC offset is refused (422). A campaign due now is scheduled "
            "even while the queue (Redis) is down; the answer then carries a note."
        ),
    ),
    _campaign_action(
        "/campaigns/{campaign_id}/cancel", "Stop a campaign", "scheduled, sending or paused"
    ),
    _campaign_action(
        "/campaigns/{campaign_id}/resume", "Continue a paused campaign where it stopped", "paused"
    ),
    Route("get", "/stats", "Counts of subscribers and campaigns", schemas.Stats, "Counts."),
    Route("get", "/openapi.json", "This document", None, "OpenAPI 3.1", public=True),
]


class _Generator(GenerateJsonSchema):
    def field_title_should_be_set(self, schema) -> bool:
        return False  # "Send At" for send_at says nothing the name does not


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _operation(route: Route, refs: dict[Any, dict[str, Any]]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": route.answer, "content": {"application/json": {}}}
    if route.response is not None:
        answer["content"] = _json(refs[route.response])
    if route.headers:
        answer["headers"] = {name: {"schema": {"type": "string"}} for name in route.headers}
    problems = dict(route.problems)
    operation: dict[str, Any] = {"summary": route.summary}
    if route.description:
        operation["description"] = route.description
    if route.public:
        operation["security"] = []
    else:
        problems[401] = UNAUTHORIZED
    if "{campaign_id}" in route.path:
        id_schema = TypeAdapter(schemas.CampaignId).json_schema()
        operation["parameters"] = [
            {"name": "campaign_id", "in": "path", "required": True, "schema": id_schema}
        ]
        problems[404] = NOT_FOUND
    if route.body is not None:
        operation["requestBody"] = {
            "required": route.body_required,
            "content": _json(refs[route.body]),
        }
        problems |= {400: BAD_JSON, 415: NOT_JSON, 422: UNPROCESSABLE}
    problem = {"application/problem+json": {"schema": refs[schemas.Problem]}}
    operation["responses"] = {str(route.status): answer} | {
        str(status): {"description": text, "content": problem}
        for status, text in sorted(problems.items())
    }
    return operation


@functools.cache
def _paths_and_schemas(languages: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Made once per LANGUAGES: the schemas name the languages of the app (``languages``)."""
    models: dict[type[BaseModel], JsonSchemaMode] = {schemas.Problem: "serialization"}
    for route in ROUTES:
        if route.body is not None:
            models[route.body] = "validation"
        if route.response is not None:
            models[route.response] = "serialization"
    refs, top = models_json_schema(
        list(models.items()), ref_template=REF_TEMPLATE, schema_generator=_Generator
    )
    by_model = {model: ref for (model, _), ref in refs.items()}
    paths: dict[str, Any] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method] = _operation(route, by_model)
    return paths, top["$defs"]


def document(public_url: str) -> dict[str, Any]:
    """Return the OpenAPI document; ``public_url`` names the server."""
    paths, components = _paths_and_schemas(tuple(i18n.languages()) if has_app_context() else ())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Newsletter API",
            "version": "1.0.0",
            "description": (
                "Write, test, schedule and watch newsletter editions. Authenticate with "
                "'Authorization: Bearer <token>' (make one with "
                "'flask --app newsletter token create NAME'). Errors are RFC 9457 "
                "application/problem+json. Times are ISO 8601 with UTC offset."
            ),
        },
        "servers": [{"url": public_url.rstrip("/") + "/api/v1"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": components,
        },
    }
