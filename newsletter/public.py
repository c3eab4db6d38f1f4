"""Public pages: sign-up, confirmation, privacy notice, health."""

from __future__ import annotations

import limits
from flask import Blueprint, current_app, render_template, request
from sqlalchemy import text

from newsletter import addresses, consent, subscriptions, tokens
from newsletter.extensions import db, get_redis, limiter

bp = Blueprint("public", __name__)

HONEYPOT_FIELD = "website"


def signup_address_key() -> str:
    """Rate-limit key for the form's target inbox: a keyed hash (``addresses.mailbox_key``)."""
    raw = request.form.get("email", "")
    try:
        email = addresses.normalize(raw, check_deliverability=False)
    except addresses.InvalidAddress:
        email = raw.strip().lower()[:254]
    return "addr:" + addresses.mailbox_key(email)


# Sign-ups and address changes both mail a confirmation link to the address in the form:
# they share one per-IP and one per-mailbox counter.
CONFIRMATION_SCOPE = "confirmation-mail"

confirmation_limit_per_ip = limiter.shared_limit(
    lambda: current_app.config["SIGNUP_LIMIT_PER_IP"], scope=CONFIRMATION_SCOPE
)


def mailbox_limit_spent(setting: str, scope: str) -> bool:
    """Count this request against the limit on the form's mailbox; say if it is spent.

    A spent limit must not change the answer: a 429 would tell anybody that somebody
    asked for this address lately. So the view shows its usual page and sends nothing.
    """
    key = signup_address_key()
    return not all(
        limiter.limiter.hit(item, key, scope)
        for item in limits.parse_many(current_app.config[setting])
    )


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
