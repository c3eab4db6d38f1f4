"""Cross-cutting web security: headers, CSRF and embedding, error pages."""

from __future__ import annotations

from urllib.parse import urlsplit

import redis
from flask import Flask, Response, current_app, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import HTTPException, ServiceUnavailable

from newsletter.extensions import csrf, error_renderers

HSTS_MAX_AGE = 365 * 86400
# Views whose POST may come from an allowed embedding origin without our CSRF token.
EMBEDDABLE_ENDPOINTS = {"public.subscribe"}


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def request_origin() -> str | None:
    """The Origin header, or the origin of the Referer when a browser omitted Origin."""
    origin = request.headers.get("Origin")
    if origin and origin != "null":
        return origin.rstrip("/").lower()
    referer = request.headers.get("Referer")
    return _origin_of(referer) if referer else None


def _own_origins() -> set[str]:
    return {_origin_of(current_app.config["PUBLIC_URL"]), _origin_of(request.host_url)}


def check_post_origin() -> None:
    """CSRF for form POSTs, with the exception DESIGN.md allows for embedding sites.

    A POST from an origin in EMBED_ORIGINS to an embeddable view needs no CSRF token (the
    embedding page cannot have one); any other cross-origin POST is refused; same-origin
    POSTs need the token.
    """
    if request.method != "POST" or request.endpoint is None:
        return
    view = current_app.view_functions.get(request.endpoint)
    if view is not None and getattr(view, "csrf_exempt", False):
        return  # e.g. the RFC 8058 one-click unsubscribe, or the bearer-token API
    origin = request_origin()
    if origin and origin not in _own_origins():
        allowed = {o.lower() for o in current_app.config["EMBED_ORIGINS"]}
        if origin in allowed and request.endpoint in EMBEDDABLE_ENDPOINTS:
            return
        raise CSRFError("Cross-origin form submissions are not accepted here.")
    csrf.protect()


def exempt(view):
    """Mark a view as taking POSTs without a CSRF token (it must not need one)."""
    view.csrf_exempt = True
    return view


def set_headers(response: Response) -> Response:
    response.headers.setdefault("Referrer-Policy", "same-origin")
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    # No framing: a form in a cross-site iframe gets no session cookie and so no CSRF
    # token. Embedding sites post a plain HTML form instead (see the README).
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    )
    if request.is_secure:
        # Over HTTPS (directly, or behind a TLS proxy that ProxyFix trusts): stay on HTTPS.
        response.headers.setdefault("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE}")
    if request.endpoint in EMBEDDABLE_ENDPOINTS and request.method == "POST":
        response.headers["Vary"] = "Origin"
    return response


def init_app(app: Flask) -> None:
    # We run CSRF ourselves (check_post_origin) so that embedding origins can be allowed.
    app.config["WTF_CSRF_CHECK_DEFAULT"] = False
    app.before_request(check_post_origin)
    app.after_request(set_headers)

    @app.errorhandler(CSRFError)
    def csrf_error(error: CSRFError):
        return render_template("errors/csrf.html", reason=error.description), 400

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    def redis_unavailable(error: Exception):
        # Ask the visitor to retry; a sign-up already committed is mailed by the tick later.
        current_app.logger.error("Redis is unreachable: %s", type(error).__name__)
        unavailable = ServiceUnavailable("The service is briefly unavailable. Please try again.")
        return http_error(unavailable)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        for prefix, render in error_renderers():
            if request.path.startswith(prefix):
                return render(error)  # e.g. the API's RFC 9457 problems, for any /api/ path
        if error.code == 400 and request.url_rule is None and request.routing_exception is error:
            # An untrusted Host header: no URL can be built, so answer with the bare error.
            return error
        return render_template("errors/http.html", error=error), error.code or 500
