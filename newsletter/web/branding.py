"""The company's logo and accent colour on our own origin (set on ``/admin/form``).

Our pages allow no inline styles (CSP ``style-src 'self'``), so the colour comes as a
tiny style sheet. Both URLs carry a version, so browsers may keep them for long.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, abort, current_app, render_template, request
from sqlalchemy.exc import SQLAlchemyError

from newsletter import look
from newsletter.extensions import db

bp = Blueprint("branding", __name__, url_prefix="/look")

CACHE_FOR = 30 * 86400


def _cached(response: Response, versioned: bool) -> Response:
    if versioned:
        response.headers["Cache-Control"] = f"public, max-age={CACHE_FOR}, immutable"
    else:
        response.headers["Cache-Control"] = "no-cache"
    return response


@bp.get("/logo")
def logo():
    found = look.logo()
    if found is None:
        abort(404)
    data, media_type, sha256 = found
    response = Response(data, mimetype=media_type)
    response.set_etag(sha256)
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return _cached(response.make_conditional(request), bool(request.args.get("v")))


@bp.get("/theme.css")
def theme():
    css = render_template("look/theme.css", brand=look.brand())
    response = Response(css, mimetype="text/css")
    return _cached(response, bool(request.args.get("v")))


def favicon():
    """``/favicon.ico``, which browsers and feed readers ask for whatever the page links."""
    response = current_app.send_static_file("favicon.svg")
    response.mimetype = "image/svg+xml"
    return response


def site_brand() -> look.Brand:
    """The brand for a page; the default one when the database cannot say (error pages)."""
    try:
        return look.brand()
    except SQLAlchemyError:
        db.session.rollback()
        return look.default_brand()


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.add_url_rule("/favicon.ico", "favicon", favicon)
    app.add_template_global(site_brand)
