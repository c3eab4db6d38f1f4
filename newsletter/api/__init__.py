"""The JSON API under /api/v1: bearer tokens, RFC 9457 problems, thin views.

``schemas`` holds the request and response models, ``openapi`` makes the document
from them, ``views`` holds the routes, ``problems`` the error format.
"""

from __future__ import annotations

import hashlib

from flask import Blueprint, Flask, request

from newsletter import api_tokens, campaigns
from newsletter.api.problems import Problem, from_http_error, invalid
from newsletter.extensions import add_error_renderer

bp = Blueprint("api", __name__, url_prefix="/api/v1")

REALM = 'Bearer realm="newsletter"'
# Editions with inlined CSS outgrow the 64 KiB the public forms allow.
MAX_BODY = 1024 * 1024
PUBLIC_ENDPOINTS = {"api.openapi_document"}


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    # Errors on any /api/ path, also unknown routes outside the blueprint, are problems.
    add_error_renderer(app, "/api/", from_http_error)


def _authorization() -> tuple[str, str]:
    """The scheme and the credentials of the Authorization header."""
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower(), credentials.strip()


@bp.before_request
def authenticate() -> None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    scheme, credentials = _authorization()
    if scheme != "bearer" or not credentials:
        raise Problem(
            401,
            "Unauthorized",
            "Send a token in the header 'Authorization: Bearer <token>'; "
            "make one with 'flask --app newsletter token create NAME'.",
            headers={"WWW-Authenticate": REALM},
        )
    if api_tokens.authenticate(credentials) is None:
        raise Problem(
            401,
            "Unauthorized",
            "The token is unknown or has been revoked.",
            headers={"WWW-Authenticate": f'{REALM}, error="invalid_token"'},
        )
    request.max_content_length = MAX_BODY


def token_key() -> str:
    """Rate-limit key of the calling token (its hash prefix, never the token itself)."""
    return "api:" + hashlib.sha256(_authorization()[1].encode()).hexdigest()[:24]


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


@bp.errorhandler(campaigns.CopyNotSent)
def copy_not_sent(error: campaigns.CopyNotSent):
    return Problem(502, "Bad Gateway", str(error)).response()


from newsletter.api import views  # noqa: E402, F401 - the routes register themselves on bp
