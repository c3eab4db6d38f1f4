"""The OpenAPI 3.1 description of /api/v1, written by hand next to the views it describes.

``tests/test_openapi.py`` checks it against the real routes and responses.
"""

from __future__ import annotations

from newsletter.models import CampaignStatus

ID_MAX = 2**31 - 1
SUBJECT_MAX = 200


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(description: str) -> dict:
    return {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


def _json(description: str, schema: dict, **extra) -> dict:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


def _body(schema: dict, required: bool = True) -> dict:
    return {"required": required, "content": {"application/json": {"schema": schema}}}


TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
COUNT = {"type": "integer", "minimum": 0}

# Inlined rather than $ref'd: schemathesis ignores a referenced string's pattern.
SUBJECT = {
    "type": "string",
    "maxLength": SUBJECT_MAX,
    "pattern": r"^[^\r\n\x00]*\S[^\r\n\x00]*$",
    "description": "One line, not blank.",
}
HTML = {
    "type": "string",
    "pattern": r"^[^\x00]*\S[^\x00]*$",
    "description": (
        "Not blank. Cleaned to what mail may carry before it is stored: scripts, style "
        "blocks, frames, forms, meta refreshes, event handler attributes and links other "
        "than http, https, mailto and #fragment are removed; formatting, headings, lists, "
        "tables, images (http or https) and style attributes stay."
    ),
}
TEXT = {
    "type": ["string", "null"],
    "pattern": r"^[^\x00]*$",
    "description": "The plain-text part; null or blank: made from the HTML.",
}

SCHEMAS = {
    "Campaign": {
        "type": "object",
        "required": [
            "id",
            "subject",
            "status",
            "send_at",
            "recipients",
            "sent",
            "failed",
            "unknown",
        ],
        "properties": {
            "id": {"type": "integer", "minimum": 1},
            "subject": {"type": "string"},
            "status": {"type": "string", "enum": [s.value for s in CampaignStatus]},
            "status_reason": {
                "type": ["string", "null"],
                "description": "Why the campaign is paused or cancelled.",
            },
            "send_at": {**TIMESTAMP, "description": "When sending starts, in UTC."},
            "recipients": {**COUNT, "description": "Confirmed subscribers when sending began."},
            "sent": COUNT,
            "failed": {**COUNT, "description": "Refused for good (e.g. no such mailbox)."},
            "unknown": {
                **COUNT,
                "description": "The connection dropped after the message was handed over.",
            },
            "created_at": {"type": "string", "format": "date-time"},
            "updated_at": {"type": "string", "format": "date-time"},
            "started_at": TIMESTAMP,
            "finished_at": TIMESTAMP,
            "text_is_derived": {
                "type": "boolean",
                "description": "The text part is made from the HTML and follows its changes.",
            },
            "url": {"type": "string"},
        },
    },
    "CampaignWithContent": {
        "allOf": [
            _ref("Campaign"),
            {
                "type": "object",
                "required": ["html", "text"],
                "properties": {"html": {"type": "string"}, "text": {"type": "string"}},
            },
        ]
    },
    "CampaignList": {
        "type": "array",
        "items": _ref("Campaign"),
        "description": "Newest first.",
    },
    "NewCampaign": {
        "type": "object",
        "additionalProperties": False,
        "required": ["subject", "html"],
        "properties": {"subject": SUBJECT, "html": HTML, "text": TEXT},
    },
    "CampaignChanges": {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "description": "Allowed while the campaign is a draft or scheduled.",
        "properties": {"subject": SUBJECT, "html": HTML, "text": TEXT},
    },
    "TestSend": {
        "type": "object",
        "additionalProperties": False,
        "required": ["to"],
        "properties": {
            "to": {
                "type": "string",
                "format": "email",
                "description": "A staff (admin) account's address; any other is refused (422).",
            }
        },
    },
    "TestSent": {
        "type": "object",
        "required": ["campaign_id", "sent"],
        "properties": {"campaign_id": {"type": "integer"}, "sent": {"const": True}},
    },
    "Schedule": {
        "type": "object",
        "additionalProperties": False,
        "description": (
            'An ISO 8601 time with UTC offset, "now", or nothing (an empty object) '
            "for the next monthly slot (MONTHLY_SLOT)."
        ),
        "properties": {
            "send_at": {
                "oneOf": [
                    {"type": "string", "format": "date-time"},
                    {"const": "now"},
                    {"type": "null"},
                ]
            }
        },
    },
    "ScheduledCampaign": {
        "allOf": [
            _ref("Campaign"),
            {
                "type": "object",
                "properties": {
                    "note": {
                        "type": "string",
                        "description": (
                            "Present when the campaign is due but the queue (Redis) cannot be "
                            "reached: it is scheduled all the same and sending starts when "
                            "the queue is back, at the next periodic tick."
                        ),
                    }
                },
            },
        ]
    },
    "Stats": {
        "type": "object",
        "required": ["subscribers", "pending_signups", "campaigns"],
        "properties": {
            "subscribers": COUNT,
            "pending_signups": COUNT,
            "campaigns": {
                "type": "object",
                "description": "Number of campaigns per status.",
                "required": [s.value for s in CampaignStatus],
                "properties": {s.value: COUNT for s in CampaignStatus},
            },
        },
    },
    "Problem": {
        "type": "object",
        "description": "RFC 9457 problem details.",
        "required": ["type", "title", "status"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "description": "For 422: one entry per invalid field.",
                "items": {
                    "type": "object",
                    "required": ["pointer", "detail"],
                    "properties": {
                        "pointer": {
                            "type": "string",
                            "description": "JSON pointer, e.g. #/subject",
                        },
                        "detail": {"type": "string"},
                    },
                },
            },
            "campaign_status": {
                "type": "string",
                "description": "For 409: the status that did not allow the request.",
            },
        },
    },
}

CAMPAIGN_ID = {
    "name": "campaign_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1, "maximum": ID_MAX},
}

UNAUTHORIZED = _problem("No token, or an unknown or revoked one.")
NOT_FOUND = _problem("No such campaign.")
CONFLICT = _problem("The campaign's status does not allow this.")
UNPROCESSABLE = _problem("Invalid fields; see errors.")
BAD_JSON = _problem("The body is not valid JSON, or is nested too deeply.")
NOT_JSON = _problem("The body is not application/json.")


def _operation(summary: str, responses: dict, *, body: dict | None = None, with_id=True) -> dict:
    operation: dict = {"summary": summary, "responses": {**responses, "401": UNAUTHORIZED}}
    if with_id:
        operation["parameters"] = [CAMPAIGN_ID]
        operation["responses"]["404"] = NOT_FOUND
    if body is not None:
        operation["requestBody"] = body
        operation["responses"].update({"400": BAD_JSON, "415": NOT_JSON, "422": UNPROCESSABLE})
    return operation


def _campaign_action(summary: str, allowed: str) -> dict:
    return {
        "post": _operation(
            summary,
            {"200": _json("The campaign now.", _ref("Campaign")), "409": CONFLICT},
        )
        | {"description": f"Allowed while the campaign is {allowed}."}
    }


PATHS = {
    "/campaigns": {
        "post": _operation(
            "Create a draft",
            {
                "201": _json(
                    "Created.",
                    _ref("CampaignWithContent"),
                    headers={"Location": {"schema": {"type": "string"}}},
                )
            },
            body=_body(_ref("NewCampaign")),
            with_id=False,
        ),
        "get": _operation(
            "List campaigns, newest first",
            {"200": _json("The campaigns.", _ref("CampaignList"))},
            with_id=False,
        ),
    },
    "/campaigns/{campaign_id}": {
        "get": _operation(
            "A campaign with live totals while it sends",
            {"200": _json("The campaign.", _ref("CampaignWithContent"))},
        ),
        "patch": _operation(
            "Edit a draft or scheduled campaign",
            {"200": _json("The edited campaign.", _ref("CampaignWithContent")), "409": CONFLICT},
            body=_body(_ref("CampaignChanges")),
        ),
    },
    "/campaigns/{campaign_id}/test": {
        "post": _operation(
            "Send one test copy to a staff address, now",
            {
                "200": _json("The mail server took the copy.", _ref("TestSent")),
                "429": _problem("Too many test copies; see Retry-After."),
                "502": _problem("The mail server refused the copy."),
            },
            body=_body(_ref("TestSend")),
        )
        | {
            "description": (
                "Only to the address of a staff (admin) account, made with "
                "'flask --app newsletter admin create EMAIL'; any other address is refused "
                "(422, pointer #/to) and nothing is sent."
            )
        }
    },
    "/campaigns/{campaign_id}/schedule": {
        "post": _operation(
            "Schedule for a time, now, or the next monthly slot",
            {
                "200": _json("The scheduled campaign.", _ref("ScheduledCampaign")),
                "409": CONFLICT,
            },
            body=_body(_ref("Schedule"), required=False),
        )
        | {
            "description": (
                "Allowed for drafts, scheduled campaigns, and paused ones that never started. "
                "A time without UTC offset is refused (422). A campaign due now is scheduled "
                "even while the queue (Redis) is down; the answer then carries a note."
            )
        }
    },
    "/campaigns/{campaign_id}/cancel": _campaign_action(
        "Stop a campaign", "scheduled, sending or paused"
    ),
    "/campaigns/{campaign_id}/resume": _campaign_action(
        "Continue a paused campaign where it stopped", "paused"
    ),
    "/stats": {
        "get": _operation(
            "Counts of subscribers and campaigns",
            {"200": _json("Counts.", _ref("Stats"))},
            with_id=False,
        )
    },
    "/openapi.json": {
        "get": {
            "summary": "This document",
            "security": [],
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}
            },
        }
    },
}


def document(public_url: str) -> dict:
    """Return the OpenAPI document; ``public_url`` names the server."""
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
        "paths": PATHS,
        "components": {
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
        },
    }
