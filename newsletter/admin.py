"""Admin pages for marketing staff: editions, scheduling, progress, data-subject requests.

Thin views over the campaign, sending and subscription services; every page needs a
staff login (see ``auth``), every form a CSRF token (enforced for all POSTs).
"""

from __future__ import annotations

import json
from datetime import datetime
from zoneinfo import ZoneInfo, available_timezones

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy import func, select

from newsletter import auth, campaigns, editor, slots, stats, subscriptions
from newsletter.extensions import db, limiter
from newsletter.models import Campaign, CampaignStatus, Subscriber, utcnow
from newsletter.slots import MonthlySlot

bp = Blueprint("admin", __name__, url_prefix="/admin")

RECENT_CAMPAIGNS = 5
DASHBOARD_MONTHS = 6
LIVE_STATUSES = (CampaignStatus.SCHEDULED, CampaignStatus.SENDING, CampaignStatus.PAUSED)
COMMON_ZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Paris",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
)

# The preview is a mail written by staff, shown inside our own pages: no scripts, no
# forms, nothing but its own inline styles and images, and framed by us only.
PREVIEW_CSP = (
    "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
    app.jinja_env.filters["localtime"] = localtime


def _slot() -> MonthlySlot:
    return MonthlySlot.parse(current_app.config["MONTHLY_SLOT"])


def localtime(moment: datetime | None, zone: str | None = None) -> str:
    """Show a UTC time in the slot's zone (what staff plan in), with the zone named."""
    if moment is None:
        return "–"
    tz = ZoneInfo(zone) if zone else _slot().zone
    local = moment.astimezone(tz)
    return f"{local:%a %d %b %Y, %H:%M} {tz.key}"


@bp.before_request
def require_login():
    """Every admin page needs a staff login; only the login page itself does not."""
    g.admin = auth.current_admin()
    if g.admin is None and request.endpoint not in {"admin.login", "admin.login_form"}:
        return auth.anonymous_response()
    return None


@bp.after_request
def no_store(response: Response) -> Response:
    # Admin pages show subscriber data and campaign state: never keep them in caches.
    response.headers["Cache-Control"] = "no-store"
    return response


# --- login -----------------------------------------------------------------------------


@bp.get("/login")
def login_form():
    if auth.current_admin() is not None:
        return redirect(url_for("admin.dashboard"))
    return render_template("admin/login.html", next=auth.safe_next(request.args.get("next")))


@bp.post("/login")
@limiter.limit(lambda: current_app.config["ADMIN_LOGIN_LIMIT_PER_IP"])
def login():
    email = request.form.get("email", "")[:254]
    user = auth.authenticate(email, request.form.get("password", ""))
    target = auth.safe_next(request.form.get("next"))
    if user is None:
        attempts = current_app.config["ADMIN_MAX_FAILED_LOGINS"]
        minutes = current_app.config["ADMIN_LOCKOUT"] // 60
        error = (
            f"Wrong email address or password. After {attempts} failed attempts in a row "
            f"the account is locked for {minutes} minutes."
        )
        return render_template("admin/login.html", error=error, email=email, next=target), 401
    auth.login(user)
    return redirect(target or url_for("admin.dashboard"))


@bp.post("/logout")
@auth.login_required
def logout():
    auth.logout()
    flash("You are logged out.", "notice")
    return redirect(url_for("admin.login_form"))


# --- dashboard -------------------------------------------------------------------------


def _last_months(count: int) -> list[str]:
    now = utcnow()
    year, month = now.year, now.month
    months = []
    for _ in range(count):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return months


def subscriber_history(months: int = DASHBOARD_MONTHS) -> list[dict]:
    """Confirmations and erasures per month (newest first) from the address-free tallies."""
    counts = stats.monthly()
    rows = []
    for month in _last_months(months):
        kinds = counts.get(month, {})
        confirmed = kinds.get("confirmed", 0)
        erased = sum(n for kind, n in kinds.items() if kind.startswith("erased_"))
        rows.append(
            {"month": month, "confirmed": confirmed, "erased": erased, "change": confirmed - erased}
        )
    return rows


def failed_confirmations() -> int:
    """Confirmation mails given up this month: the receiving server refused them."""
    month = _last_months(1)[0]
    counts = stats.monthly([subscriptions.CONFIRMATION_FAILED]).get(month, {})
    return counts.get(subscriptions.CONFIRMATION_FAILED, 0)


def _campaign_for(moment: datetime) -> Campaign | None:
    return db.session.scalar(
        select(Campaign).where(
            Campaign.status == CampaignStatus.SCHEDULED, Campaign.send_at == moment
        )
    )


@bp.get("/")
@auth.login_required
def dashboard():
    next_slot = campaigns.next_slot()
    recent = campaigns.list_all(limit=RECENT_CAMPAIGNS)
    return render_template(
        "admin/dashboard.html",
        subscribers=db.session.scalar(select(func.count(Subscriber.id))) or 0,
        history=subscriber_history(),
        failed_confirmations=failed_confirmations(),
        next_slot=next_slot,
        slot_rule=str(_slot()),
        slot_campaign=_campaign_for(next_slot),
        upcoming=[c for c in recent if c.status == CampaignStatus.SCHEDULED],
        recent=[(c, campaigns.totals(c)) for c in recent],
    )


# --- campaigns -------------------------------------------------------------------------


def _campaign_or_404(campaign_id: int) -> Campaign:
    try:
        return campaigns.get(campaign_id)
    except campaigns.NotFound:
        abort(404)


@bp.get("/campaigns")
@auth.login_required
def campaign_list():
    rows = [(c, campaigns.totals(c)) for c in campaigns.list_all()]
    return render_template("admin/campaigns.html", rows=rows)


def _editor_errors(error: campaigns.Invalid) -> dict[str, str]:
    """Name the editor's fields: the service checks ``html``, staff write ``source``."""
    return {("source" if k in {"html", "text"} else k): v for k, v in error.errors.items()}


@bp.get("/campaigns/new")
@auth.login_required
def new_campaign():
    return render_template(
        "admin/new.html",
        errors={},
        subject="",
        source="",
        source_format="markdown",
        formats=editor.FORMATS,
    )


@bp.post("/campaigns/new")
@auth.login_required
def create_campaign():
    subject = request.form.get("subject", "")
    source = request.form.get("source", "")
    source_format = request.form.get("source_format", "markdown")
    try:
        campaign = editor.save(None, subject, source, source_format)
    except campaigns.Invalid as exc:
        return render_template(
            "admin/new.html",
            errors=_editor_errors(exc),
            subject=subject,
            source=source,
            source_format=source_format,
            formats=editor.FORMATS,
        ), 422
    flash("Draft saved. Check the preview, send yourself a test, then schedule it.", "notice")
    return redirect(url_for("admin.campaign", campaign_id=campaign.id))


def _zone_choices() -> list[str]:
    return sorted(available_timezones())


def _campaign_page(campaign: Campaign, status: int = 200, **overrides):
    source, source_format = editor.source_of(campaign)
    context = {
        "campaign": campaign,
        "progress": progress_of(campaign),
        "editable": campaign.status in campaigns.EDITABLE,
        "cancellable": campaign.status in campaigns.CANCELLABLE,
        "live": campaign.status in LIVE_STATUSES,
        "errors": {},
        "subject": campaign.subject,
        "source": source,
        "source_format": source_format,
        "formats": editor.FORMATS,
        "next_slot": campaigns.next_slot(),
        "slot_zone": _slot().zone.key,
        "common_zones": COMMON_ZONES,
        "zones": _zone_choices(),
        "schedule_errors": {},
        "when": "slot",
        "send_at_local": "",
        "zone": _slot().zone.key,
        "admin_email": g.admin.email,
    }
    context.update(overrides)
    return render_template("admin/campaign.html", **context), status


@bp.get("/campaigns/<int:campaign_id>")
@auth.login_required
def campaign(campaign_id: int):
    return _campaign_page(_campaign_or_404(campaign_id))


@bp.post("/campaigns/<int:campaign_id>")
@auth.login_required
def save_campaign(campaign_id: int):
    found = _campaign_or_404(campaign_id)
    subject = request.form.get("subject", "")
    source = request.form.get("source", "")
    source_format = request.form.get("source_format", "markdown")
    try:
        editor.save(found.id, subject, source, source_format)
    except campaigns.Invalid as exc:
        return _campaign_page(
            found,
            422,
            errors=_editor_errors(exc),
            subject=subject,
            source=source,
            source_format=source_format,
        )
    except campaigns.WrongState as exc:
        flash(str(exc), "alert")
        return redirect(url_for("admin.campaign", campaign_id=campaign_id))
    flash("Changes saved. The preview shows them.", "notice")
    return redirect(url_for("admin.campaign", campaign_id=campaign_id) + "#preview")


@bp.get("/campaigns/<int:campaign_id>/preview")
@auth.login_required
def preview(campaign_id: int):
    """The edition as a reader sees it; the campaign page frames it at two widths."""
    document = editor.preview_document(_campaign_or_404(campaign_id))
    response = Response(document, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    return response


@bp.post("/campaigns/<int:campaign_id>/test")
@auth.login_required
def send_test(campaign_id: int):
    found = _campaign_or_404(campaign_id)
    try:
        campaigns.send_test(found.id, g.admin.email)
    except campaigns.Invalid as exc:
        flash(f"The test could not be sent: {exc}", "alert")
    except campaigns.CopyNotSent as exc:
        flash(f"{exc} Please try again later.", "alert")
    else:
        flash(f"A test copy is on its way to {g.admin.email}.", "notice")
    return redirect(url_for("admin.campaign", campaign_id=found.id))


@bp.post("/campaigns/<int:campaign_id>/schedule")
@auth.login_required
def schedule(campaign_id: int):
    found = _campaign_or_404(campaign_id)
    when = request.form.get("when", "slot")
    send_at_local = request.form.get("send_at", "")
    zone = request.form.get("zone", "")
    send_at: datetime | str | None
    try:
        if when == "now":
            send_at = "now"
        elif when == "at":
            send_at = slots.parse_local_time(send_at_local, zone)
        else:
            send_at = None
        scheduled, note = campaigns.schedule_and_start(found.id, send_at)
    except ValueError as exc:
        errors = {"send_at": str(exc)}
        return _campaign_page(
            found, 422, schedule_errors=errors, when=when, send_at_local=send_at_local, zone=zone
        )
    except campaigns.Invalid as exc:
        return _campaign_page(
            found,
            422,
            schedule_errors=exc.errors,
            when=when,
            send_at_local=send_at_local,
            zone=zone,
        )
    except campaigns.WrongState as exc:
        flash(str(exc), "alert")
        return redirect(url_for("admin.campaign", campaign_id=found.id))
    if note:
        flash(note, "alert")
    elif when == "now":
        flash("Sending starts within seconds. This page shows the progress.", "notice")
    else:
        flash(f"Scheduled for {localtime(scheduled.send_at)}.", "notice")
    return redirect(url_for("admin.campaign", campaign_id=found.id))


@bp.post("/campaigns/<int:campaign_id>/cancel")
@auth.login_required
def cancel(campaign_id: int):
    found = _campaign_or_404(campaign_id)
    try:
        campaigns.cancel(found.id)
    except campaigns.WrongState as exc:
        flash(str(exc), "alert")
    else:
        flash("The campaign is cancelled; nothing more of it goes out.", "notice")
    return redirect(url_for("admin.campaign", campaign_id=found.id))


@bp.post("/campaigns/<int:campaign_id>/resume")
@auth.login_required
def resume(campaign_id: int):
    found = _campaign_or_404(campaign_id)
    try:
        campaigns.resume(found.id)
    except (campaigns.WrongState, campaigns.Invalid) as exc:
        flash(str(exc), "alert")
    else:
        flash("Sending continues where it stopped.", "notice")
    return redirect(url_for("admin.campaign", campaign_id=found.id))


def progress_of(campaign: Campaign) -> dict:
    """Status and totals as the progress bar shows them."""
    totals = campaigns.totals(campaign)
    done = totals["sent"] + totals["failed"] + totals.get("unknown", 0)
    recipients = totals["recipients"]
    percent = 100 if campaign.status == CampaignStatus.SENT else 0
    if recipients:
        percent = min(100, int(done * 100 / recipients))
    return {
        "id": campaign.id,
        "status": campaign.status.value,
        "status_reason": campaign.status_reason,
        "recipients": recipients,
        "sent": totals["sent"],
        "failed": totals["failed"],
        "unknown": totals.get("unknown", 0),
        "done": done,
        "percent": percent,
        "finished": campaign.status not in LIVE_STATUSES,
        "seconds_to_send": (
            max(0, int((campaign.send_at - utcnow()).total_seconds()))
            if campaign.status == CampaignStatus.SCHEDULED and campaign.send_at is not None
            else 0
        ),
    }


@bp.get("/campaigns/<int:campaign_id>/progress.json")
@auth.login_required
def progress(campaign_id: int):
    return progress_of(_campaign_or_404(campaign_id))


# --- data-subject requests -------------------------------------------------------------
# Look-ups go by POST, so that addresses never appear in URLs, access logs or history;
# there is deliberately no page that lists or downloads subscribers.


@bp.get("/subscribers")
@auth.login_required
def data_requests():
    return render_template("admin/subscribers.html", email="", searched=False, subscriber=None)


def _lookup():
    email = request.form.get("email", "")[:254]
    return email, subscriptions.find_by_address(email)


@bp.post("/subscribers/lookup")
@auth.login_required
def lookup():
    email, subscriber = _lookup()
    data = subscriptions.export_data(subscriber) if subscriber is not None else None
    current_app.logger.info(
        "data-subject look-up by admin %s: %s", g.admin.id, "found" if subscriber else "none"
    )
    return render_template(
        "admin/subscribers.html", email=email, searched=True, subscriber=subscriber, data=data
    )


@bp.post("/subscribers/export")
@auth.login_required
def export():
    _email, subscriber = _lookup()
    if subscriber is None:
        flash("No subscriber has this address (any more).", "alert")
        return redirect(url_for("admin.data_requests"))
    data = subscriptions.export_data(subscriber)
    subscriptions.record_export()
    current_app.logger.info("subscriber %s exported by admin %s", subscriber.id, g.admin.id)
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        mimetype="application/json",
        headers={"Content-Disposition": f'attachment; filename="subscriber-{subscriber.id}.json"'},
    )


@bp.post("/subscribers/delete")
@auth.login_required
def delete():
    email, subscriber = _lookup()
    if not request.form.get("confirm"):
        data = subscriptions.export_data(subscriber) if subscriber is not None else None
        return render_template(
            "admin/subscribers.html",
            email=email,
            searched=True,
            subscriber=subscriber,
            data=data,
            confirm_error="Tick the box to confirm the deletion.",
        ), 422
    subscriber_id = subscriber.id if subscriber is not None else None
    if subscriptions.erase_address(email, "staff"):
        current_app.logger.info("subscriber %s erased by admin %s", subscriber_id, g.admin.id)
        flash("The subscriber and all their data are deleted.", "notice")
    else:
        flash("No subscriber has this address (any more); nothing was deleted.", "alert")
    return redirect(url_for("admin.data_requests"))
