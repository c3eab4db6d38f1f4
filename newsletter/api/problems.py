"""RFC 9457 problem details for the JSON API."""

from __future__ import annotations

from flask import jsonify
from werkzeug.exceptions import HTTPException

from newsletter.api import schemas

MEDIA_TYPE = "application/problem+json"
# Headers of an HTTP error that must survive its conversion into a problem response.
_KEPT_HEADERS = ("Allow", "WWW-Authenticate", "Retry-After")


def problem(status: int, title: str, detail: str | None = None, headers=None, **extra):
    given = {"detail": detail or None, **extra}
    body = schemas.Problem(
        type="about:blank",
        title=title,
        status=status,
        **{name: value for name, value in given.items() if value is not None},
    )
    response = jsonify(body.model_dump(mode="json"))
    response.status_code = status
    response.mimetype = MEDIA_TYPE
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def from_http_error(error: HTTPException):
    """Turn a werkzeug HTTP error into a problem, keeping e.g. the ``Allow`` of a 405."""
    kept = {name: value for name, value in error.get_headers() if name in _KEPT_HEADERS}
    return problem(error.code or 500, error.name, error.description, headers=kept)


class Problem(Exception):
    """Raise in an API view to answer with a problem response."""

    def __init__(self, status: int, title: str, detail: str | None = None, headers=None, **extra):
        super().__init__(detail or title)
        self.status, self.title, self.detail = status, title, detail
        self.headers = headers or {}
        self.extra = extra

    def response(self):
        return problem(self.status, self.title, self.detail, headers=self.headers, **self.extra)


def invalid(errors: dict[str, str]) -> Problem:
    """A 422 with one ``errors`` entry per field, named by a JSON pointer (``#`` the body)."""
    # One invalid field: its message is the detail too, for clients that show only that.
    detail = "The request has invalid fields; see 'errors'."
    if len(errors) == 1:
        detail = next(iter(errors.values()))
    return Problem(
        422,
        "Unprocessable Content",
        detail,
        errors=[
            {"pointer": "#/" + name if name else "#", "detail": message}
            for name, message in errors.items()
        ],
    )
