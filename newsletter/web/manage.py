"""Readers' pages: unsubscribe (also RFC 8058 one-click) and self-service for their data."""

from __future__ import annotations

import functools
import json

from flask import Blueprint, Flask, Response, current_app, render_template, request

from newsletter import addresses, data_export, subscriptions, tokens
from newsletter.extensions import limiter
from newsletter.web import security
from newsletter.web.limits import CONFIRMATION_SCOPE, confirmation_limit_per_ip, mailbox_limit_spent

bp = Blueprint("manage", __name__)


@bp.after_request
def no_store(response: Response) -> Response:
    """These pages show personal data or carry a token: keep them out of every cache."""
    response.headers["Cache-Control"] = "no-store"
    return response


# --- unsubscribe -----------------------------------------------------------------------


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str):
    try:
        subscriptions.check_unsubscribe_token(token)
    except tokens.InvalidToken:
        return render_template("public/unsubscribe_error.html"), 400
    return render_template("public/unsubscribe.html", token=token)


@bp.post("/unsubscribe/<token>")
@security.exempt
def unsubscribe(token: str):
    """Erase now. Also the RFC 8058 target: mail clients POST ``List-Unsubscribe=One-Click``
    without cookies or CSRF token, and want a 200, not a redirect; the body is not needed."""
    try:
        subscriptions.unsubscribe(token)
    except tokens.InvalidToken:
        return render_template("public/unsubscribe_error.html"), 400
    return render_template("public/unsubscribed.html")


# --- asking for a manage link ----------------------------------------------------------


def _request_form(error: str | None = None, email: str = "", status: int = 200):
    return render_template("public/manage_request.html", error=error, email=email), status


@bp.get("/manage")
def manage_request():
    return _request_form()


@bp.post("/manage")
@limiter.limit(lambda: current_app.config["MANAGE_LIMIT_PER_IP"])
def send_link():
    if mailbox_limit_spent("MANAGE_LIMIT_PER_ADDRESS", "manage-link"):
        return render_template("public/manage_sent.html")
    email = request.form.get("email", "")
    try:
        subscriptions.request_manage_link(email)
    except addresses.InvalidAddress as exc:
        return _request_form(str(exc), email[:254], 422)
    return render_template("public/manage_sent.html")


# --- the manage page -------------------------------------------------------------------


def _link_error(error: Exception):
    if isinstance(error, tokens.ExpiredToken):
        return render_template("public/manage_error.html", reason="expired"), 410
    return render_template("public/manage_error.html", reason="invalid"), 400


def _gone():
    return render_template("public/manage_error.html", reason="gone"), 404


def _manage_page(subscriber, token: str, error: str | None = None, email: str = "", status=200):
    return (
        render_template(
            "public/manage.html",
            subscriber=subscriber,
            token=token,
            change=data_export.pending_address_change(subscriber),
            error=error,
            email=email,
        ),
        status,
    )


def with_subscriber(view):
    """Resolve a manage link to its subscriber; bad, expired and spent links get their pages."""

    @functools.wraps(view)
    def wrapper(token: str):
        try:
            subscriber = subscriptions.subscriber_for_manage_token(token)
        except (tokens.InvalidToken, tokens.ExpiredToken) as exc:
            return _link_error(exc)
        if subscriber is None:
            return _gone()
        return view(subscriber, token)

    return wrapper


@bp.get("/manage/<token>")
@with_subscriber
def manage(subscriber, token: str):
    return _manage_page(subscriber, token)


@bp.get("/manage/<token>/export")
@with_subscriber
def export(subscriber, token: str):
    data = data_export.export_data(subscriber)
    data_export.record_export()
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False) + "\n",
        mimetype="application/json",
        headers={"Content-Disposition": 'attachment; filename="newsletter-data.json"'},
    )


@bp.post("/manage/<token>/email")
@confirmation_limit_per_ip
@with_subscriber
def change_email(subscriber, token: str):
    """Mail a confirmation link to the new address, within the limits of sign-up."""
    if mailbox_limit_spent("SIGNUP_LIMIT_PER_ADDRESS", CONFIRMATION_SCOPE):
        return render_template("public/manage_email_sent.html", token=token)
    email = request.form.get("email", "")
    try:
        subscriptions.request_address_change(subscriber, email)
    except addresses.InvalidAddress as exc:
        return _manage_page(subscriber, token, str(exc), email[:254], 422)
    return render_template("public/manage_email_sent.html", token=token)


@bp.post("/manage/<token>/delete")
def delete(token: str):
    try:
        subscriber = subscriptions.subscriber_for_manage_token(token)
    except (tokens.InvalidToken, tokens.ExpiredToken) as exc:
        return _link_error(exc)
    if subscriber is not None:
        subscriptions.erase(subscriber, "manage")
    return render_template("public/unsubscribed.html")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
