"""Request and response models of /api/v1 (pydantic).

The views validate every body with these models and ``openapi`` describes the API with
their JSON Schemas, so the document and the checks cannot drift apart. The limits come
from ``campaigns``, which checks again for the admin pages and the CLI, and alone checks
what JSON Schema cannot say: HTML that is empty once cleaned, a send time in the past,
an address that is no staff account's.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from flask import has_app_context
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    RootModel,
    ValidationError,
    WithJsonSchema,
    create_model,
    model_validator,
)
from pydantic_core import PydanticCustomError

from newsletter import editions, i18n, slots
from newsletter.campaigns import ID_MAX
from newsletter.editions import NOT_UNICODE, SUBJECT_MAX
from newsletter.models import CampaignStatus

# --- field types ----------------------------------------------------------------------


def _strip(value: Any) -> Any:
    # campaigns stores the subject trimmed, so its limits apply to the trimmed text.
    return value.strip() if isinstance(value, str) else value


def _no_default(schema: dict[str, Any]) -> None:
    schema.pop("default", None)


def _is_none(value: Any) -> bool:
    return value is None


def _may_be_left_out(schema_extra=_no_default, description: str | None = None) -> Any:
    """A request field that may be absent: absent is not null, so the document shows no default.

    ``schema_extra`` changes the field's schema further (it must drop the default too).
    """
    return Field(None, description=description, json_schema_extra=schema_extra)


def _left_out_when_none(description: str | None = None) -> Any:
    """A response field that is absent rather than null when it does not apply."""
    return Field(None, description=description, exclude_if=_is_none, json_schema_extra=_no_default)


# Patterns, not separate checks, so that the document states them. "[^\s\x00]", not "\S":
# a NUL is no white space, so "\S" would let a NUL be the one visible character.
Subject = Annotated[
    str,
    Field(
        max_length=SUBJECT_MAX,
        pattern=r"^[^\r\n\x00]*[^\s\x00][^\r\n\x00]*$",
        description="One line, not blank.",
    ),
    BeforeValidator(_strip),
]
Html = Annotated[
    str,
    Field(
        pattern=r"^[^\x00]*[^\s\x00][^\x00]*$",
        description=(
            "Not blank. Cleaned to what mail may carry before it is stored: scripts, style "
            "blocks, frames, forms, meta refreshes, event handler attributes and links other "
            "than http, https, mailto and #fragment are removed; formatting, headings, lists, "
            "tables, images (http or https) and style attributes stay."
        ),
    ),
]
Text = Annotated[
    str | None,
    Field(
        pattern=r"^[^\x00]*$",
        description="The plain-text part; null or blank: made from the HTML.",
    ),
]
Markdown = Annotated[
    str,
    Field(
        pattern=r"^[^\x00]*[^\s\x00][^\x00]*$",
        description=(
            "The body in Markdown (with the 'extra' extensions: tables, footnotes, ...), "
            "made into HTML as the admin editor makes it, typography inlined, then cleaned "
            "as html is. Give html or markdown, not both."
        ),
    ),
]
CampaignId = Annotated[int, Field(ge=1, le=ID_MAX)]
Count = Annotated[int, Field(ge=0)]
Timestamp = Annotated[
    datetime,
    PlainSerializer(lambda moment: moment.astimezone(UTC).isoformat(), return_type=str),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


def _send_at(value: Any) -> datetime | str | None:
    try:
        return slots.parse_send_at(value)
    except ValueError as exc:
        raise PydanticCustomError("send_at", "{reason}", {"reason": str(exc)}) from None


SendAtInput = AwareDatetime | Literal["now"] | None
# slots.parse_send_at reads it, as the CLI does ("now" in any case, offsets required).
SendAt = Annotated[SendAtInput, PlainValidator(_send_at, json_schema_input_type=SendAtInput)]


# --- requests -------------------------------------------------------------------------


class Request(BaseModel):
    # Strict: JSON has no types to coerce; an unknown field is a typo, not to be ignored.
    model_config = ConfigDict(extra="forbid", strict=True)


def _offered(schema: dict[str, Any], languages) -> None:
    """Name the languages of this deployment in the document (when it is made for one)."""
    _no_default(schema)
    if not has_app_context():
        return
    if schema.get("type") == "object":  # one property per language, so generators see them
        value = schema.pop("additionalProperties")
        schema["properties"] = {language: value for language in languages()}
        schema["additionalProperties"] = False
    else:
        schema["enum"] = languages()


class Version(Request):
    """One language's version of an edition: the body as html or as markdown."""

    model_config = ConfigDict(
        json_schema_extra={"oneOf": [{"required": ["html"]}, {"required": ["markdown"]}]}
    )

    subject: Subject
    html: Html = _may_be_left_out()
    markdown: Markdown = _may_be_left_out()
    text: Text = None

    @model_validator(mode="before")
    @classmethod
    def _has_a_body(cls, data: Any) -> Any:
        # Without either, the error names html (the body most clients send).
        if isinstance(data, dict) and "html" not in data and "markdown" not in data:
            return {**data, "html": None}
        return data


def _translation_languages(schema: dict[str, Any]) -> None:
    _offered(schema, editions.translation_languages)


Translations = Annotated[
    dict[str, Version],
    Field(
        description=(
            "The edition in other languages of LANGUAGES (not the first, the main version's), "
            "keyed by language; each reader gets the version of their language, else the "
            "main one. Any other key is refused (422)."
        ),
    ),
]
TranslationChanges = Annotated[
    dict[str, Version | None],
    Field(
        description=(
            "Each language given replaces that version as a whole; null removes it; "
            "languages not named stay as they are."
        ),
    ),
]


class NewCampaign(Version):
    """The main version (in the first language of LANGUAGES) and, optionally, translations."""

    translations: Translations = _may_be_left_out(_translation_languages)


class CampaignChanges(Request):
    """Allowed while the campaign is a draft or scheduled."""

    model_config = ConfigDict(
        json_schema_extra={"minProperties": 1, "not": {"required": ["html", "markdown"]}}
    )

    subject: Subject = _may_be_left_out()
    html: Html = _may_be_left_out()
    markdown: Markdown = _may_be_left_out()
    text: Text = _may_be_left_out()
    translations: TranslationChanges = _may_be_left_out(_translation_languages)

    @model_validator(mode="after")
    def _changes_something(self) -> CampaignChanges:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "empty", "Send at least one of subject, html, markdown, text, translations."
            )
        return self


def _languages(schema: dict[str, Any]) -> None:
    _offered(schema, i18n.languages)


class TestSend(Request):
    to: str = Field(
        description="A staff (admin) account's address; any other is refused (422).",
        json_schema_extra={"format": "email"},
    )
    language: str = _may_be_left_out(
        _languages,
        "A language of LANGUAGES: the copy is that language's version (the main one when "
        "it has none), framed in that language. Left out: the main version.",
    )


class Schedule(Request):
    """An ISO 8601 time with UTC offset, "now", or nothing (an empty object) for the next
    monthly slot (MONTHLY_SLOT)."""

    send_at: SendAt = None


# What a person reads for a field that breaks a rule, by pydantic's error type; "blank"
# is for a blank string, which breaks a pattern that also forbids e.g. line breaks.
MESSAGES: dict[str, dict[str, str]] = {
    "subject": {
        "missing": "Give the edition a subject.",
        "string_type": "Give the edition a subject.",
        "blank": "Give the edition a subject.",
        "string_too_long": "The subject is {length} characters long; at most {max_length}.",
        "string_pattern_mismatch": "The subject must be one line.",
        "string_unicode": f"The subject {NOT_UNICODE}.",
    },
    "html": {
        "missing": "The edition needs a body: give html (or markdown).",
        "string_type": "The edition needs a body: give html (or markdown).",
        "blank": "The edition needs an HTML body.",
        "string_pattern_mismatch": "The HTML body contains a NUL character.",
        "string_unicode": f"The HTML body {NOT_UNICODE}.",
    },
    "markdown": {
        "string_type": "The Markdown body must be a string.",
        "blank": "The Markdown body is empty.",
        "string_pattern_mismatch": "The Markdown body contains a NUL character.",
        "string_unicode": f"The Markdown body {NOT_UNICODE}.",
    },
    "text": {
        "string_type": "The text part must be a string (or null to derive it from the HTML).",
        "string_pattern_mismatch": "The text part contains a NUL character.",
        "string_unicode": f"The text part {NOT_UNICODE}.",
    },
    "to": {
        "missing": "Please enter your email address.",
        "string_type": "Please enter your email address.",
        "string_unicode": f"The address {NOT_UNICODE}.",
    },
}


def field_errors(error: ValidationError, model: type[BaseModel]) -> dict[str, str]:
    """Map each invalid field (``""``: the body itself) to one message for people."""
    found: dict[str, str] = {}
    for item in error.errors(include_url=False):
        name = "/".join(str(part) for part in item["loc"])
        found.setdefault(name, _message(name, item, model))
    return found


def _message(name: str, item: Any, model: type[BaseModel]) -> str:
    if item["type"] == "extra_forbidden":
        return f"Unknown field; the fields are {sorted(model.model_fields)}."
    if item["type"] == "model_type":
        return "The body must be a JSON object."
    value = item.get("input")
    blank = isinstance(value, str) and not value.strip()
    # A translation's fields read as the main version's: "translations/de/subject".
    messages = MESSAGES.get(name) or MESSAGES.get(name.rpartition("/")[2], {})
    template = messages.get("blank" if blank else item["type"]) or messages.get(item["type"])
    if template is None:
        return item["msg"]
    length = len(value) if isinstance(value, str) else 0
    return template.format(length=length, **item.get("ctx", {}))


# --- responses ------------------------------------------------------------------------


class Campaign(BaseModel):
    """A campaign without its HTML and text parts; totals are live while it sends."""

    id: CampaignId
    subject: str
    status: CampaignStatus
    status_reason: str | None = Field(description="Why the campaign is paused or cancelled.")
    send_at: Timestamp | None = Field(description="When sending starts, in UTC.")
    recipients: Count = Field(description="Confirmed subscribers when sending began.")
    sent: Count
    failed: Count = Field(description="Refused for good (e.g. no such mailbox).")
    unknown: Count = Field(description="The connection dropped after the message was handed over.")
    bounced: Count = Field(description="Reported undeliverable later, by a bounce message.")
    complaints: Count = Field(description="Readers who marked the edition as spam (ARF).")
    created_at: Timestamp
    updated_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    text_is_derived: bool = Field(
        description="The text part is made from the HTML and follows its changes."
    )
    url: str


class TranslationShown(BaseModel):
    """One language's version as stored (Markdown was made into html)."""

    subject: str
    html: str
    text: str
    text_is_derived: bool


class CampaignWithContent(Campaign):
    """A campaign with its HTML and text parts and its translations."""

    html: str
    text: str
    translations: dict[str, TranslationShown] = Field(
        description="The versions in other languages, keyed by language; {} when none."
    )


class CampaignList(RootModel[list[Campaign]]):
    """Newest first."""


class ScheduledCampaign(Campaign):
    """The scheduled campaign."""

    note: str = _left_out_when_none(
        "Present when the campaign is due but the queue (Redis) cannot be reached: it is "
        "scheduled all the same and sending starts when the queue is back, at the next "
        "periodic tick."
    )


class TestSent(BaseModel):
    campaign_id: CampaignId
    sent: Literal[True]


# Made from the enum, so that a new status is counted (and documented) without a change here.
_per_status: dict[str, Any] = {status.value: (Count, ...) for status in CampaignStatus}
CampaignCounts = create_model(
    "CampaignCounts", __doc__="Number of campaigns per status.", **_per_status
)


class Stats(BaseModel):
    subscribers: Count
    pending_signups: Count
    campaigns: CampaignCounts  # type: ignore[valid-type]  # a model made at run time


class FieldError(BaseModel):
    pointer: str = Field(description="JSON pointer, e.g. #/subject")
    detail: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str = _left_out_when_none()
    errors: list[FieldError] = _left_out_when_none("For 422: one entry per invalid field.")
    campaign_status: CampaignStatus = _left_out_when_none(
        "For 409: the status that did not allow the request."
    )
