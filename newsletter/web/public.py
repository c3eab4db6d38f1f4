"""Public pages: sign-up, confirmation, privacy notice, health."""

from __future__ import annotations

from flask import Blueprint, Flask, render_template, request
from sqlalchemy import text

from newsletter import consent, form_texts, i18n, subscriptions, tokens
from newsletter.extensions import db, get_redis, limiter
from newsletter.web.limits import (
    CONFIRMATION_SCOPE,
    confirmation_limit_per_ip,
    longest_counter_window,
    mailbox_limit_spent,
)

bp = Blueprint("public", __name__)

HONEYPOT_FIELD = "website"
# The hash of the consent wording the form showed: the proof names that version.
WORDING_FIELD = "consent_sha256"


def _signup_form(errors=None, email="", status=200):
    return (
        render_template(
            "public/subscribe.html",
            errors=errors or {},
            email=email,
            texts=form_texts.for_language(i18n.current()),
        ),
        status,
    )


@bp.get("/")
@bp.get("/subscribe")
def subscribe_form():
    return _signup_form()


@bp.post("/subscribe")
@confirmation_limit_per_ip
def subscribe():
    email = request.form.get("email", "")
    if request.form.get(HONEYPOT_FIELD):
        # A bot filled the hidden field: it gets the same page as everyone, and no mail.
        return render_template("public/check_inbox.html")
    if mailbox_limit_spent("SIGNUP_LIMIT_PER_ADDRESS", CONFIRMATION_SCOPE):
        return render_template("public/check_inbox.html")
    try:
        subscriptions.request_signup(
            email,
            consent_given=bool(request.form.get("consent")),
            remote_addr=request.remote_addr,
            language=i18n.current(),
            consent_sha256=request.form.get(WORDING_FIELD),
        )
    except subscriptions.InvalidSignup as exc:
        return _signup_form(exc.errors, email=email[:254], status=422)
    return render_template("public/check_inbox.html")


def _token_error(error: Exception, page: str):
    if isinstance(error, tokens.ExpiredToken):
        return render_template(page, expired=True), 410
    return render_template(page, expired=False), 400


@bp.get("/confirm/<token>")
def confirm_page(token: str):
    try:
        change = subscriptions.check_confirm_token(token)
    except (tokens.InvalidToken, tokens.ExpiredToken) as exc:
        return _token_error(exc, "public/confirm_error.html")
    return render_template("public/confirm.html", token=token, change=change)


@bp.post("/confirm/<token>")
def confirm(token: str):
    try:
        change = subscriptions.confirm(token)
    except (tokens.InvalidToken, tokens.ExpiredToken) as exc:
        return _token_error(exc, "public/confirm_error.html")
    return render_template("public/confirmed.html", change=change)


@bp.get("/privacy")
def privacy():
    return render_template(
        "public/privacy.html", consent_text=consent.current_wording(i18n.current())
    )


@bp.get("/healthz")
@limiter.exempt
def healthz():
    checks = {"database": _database_ok(), "redis": _redis_ok()}
    healthy = all(checks.values())
    body = {
        "status": "ok" if healthy else "unavailable",
        **{k: "ok" if v else "down" for k, v in checks.items()},
    }
    return body, 200 if healthy else 503


def _database_ok() -> bool:
    try:
        db.session.execute(text("SELECT 1"))
        return True
    except Exception:  # noqa: BLE001 - any failure means unreachable for a health check
        db.session.rollback()
        return False


def _redis_ok() -> bool:
    try:
        return bool(get_redis().ping())
    except Exception:  # noqa: BLE001
        return False


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.add_template_global(longest_counter_window)
