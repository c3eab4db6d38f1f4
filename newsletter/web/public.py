"""Public pages: sign-up, confirmation, privacy notice, health."""

from __future__ import annotations

from flask import Blueprint, Flask, render_template, request
from sqlalchemy import text

from newsletter import consent, subscriptions, tokens
from newsletter.extensions import db, get_redis, limiter
from newsletter.web.limits import (
    CONFIRMATION_SCOPE,
    confirmation_limit_per_ip,
    longest_counter_window,
    mailbox_limit_spent,
)

bp = Blueprint("public", __name__)

HONEYPOT_FIELD = "website"


def _signup_form(errors=None, email="", status=200):
    return (
        render_template(
            "public/subscribe.html",
            errors=errors or {},
            email=email,
            consent_text=consent.wording(),
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
            email, consent_given=bool(request.form.get("consent")), remote_addr=request.remote_addr
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
    return render_template("public/privacy.html", consent_text=consent.wording())


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


# --- for the privacy notice ------------------------------------------------------------


def duration(seconds: int | float) -> str:
    """Say a configured duration in words: ``3600`` -> ``1 hour``, ``172800`` -> ``48 hours``."""
    seconds = int(seconds)
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{seconds} seconds"


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.add_template_global(longest_counter_window)
    app.add_template_filter(duration)
