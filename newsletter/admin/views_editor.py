"""The editor: campaign list, writing, preview, test copies, scheduling, cancel, resume."""

from __future__ import annotations

from datetime import datetime

from flask import Response, abort, flash, g, redirect, render_template, request, url_for
from flask_babel import gettext

from newsletter import campaigns, editions, editor, i18n, progress, slots
from newsletter.admin import times
from newsletter.models import Campaign

# The preview is a mail written by staff, shown inside our own pages: no scripts, no
# forms, nothing but its own inline styles and images, and framed by us only.
PREVIEW_CSP = (
    "default-src 'none'; img-src https: http: data:; style-src 'unsafe-inline'; "
    "frame-ancestors 'self'; base-uri 'none'; form-action 'none'; sandbox"
)


def campaign_or_404(campaign_id: int) -> Campaign:
    try:
        return campaigns.get(campaign_id)
    except campaigns.NotFound:
        abort(404)


def campaign_list():
    rows = [(c, campaigns.totals(c)) for c in campaigns.list_all()]
    return render_template("admin/campaigns.html", rows=rows)


def _editor_errors(error: campaigns.Invalid) -> dict[str, str]:
    """Name the editor's fields: the service checks ``html``, staff write ``source``.

    A translation's fields (``translations/de/subject``) are the same fields of its tab.
    """
    named = {key.rpartition("/")[2]: message for key, message in error.errors.items()}
    return {("source" if k in {"html", "text"} else k): v for k, v in named.items()}


def _version() -> str | None:
    """The language tab asked for (``?version=de`` or the form's field); None: the main one."""
    language = request.values.get("version")
    return language if language in editions.translation_languages() else None


def _tabs(campaign: Campaign) -> list[dict]:
    """One tab per language: the main version (``version`` None) first, then the others."""
    written = editions.translations_of(campaign)
    tabs = [{"language": i18n.fallback(), "version": None, "written": True}]
    for language in editions.translation_languages():
        tabs.append({"language": language, "version": language, "written": language in written})
    return tabs


def new_campaign():
    return render_template(
        "admin/new.html",
        errors={},
        subject="",
        source="",
        source_format="markdown",
        formats=editor.FORMATS,
        main_language=i18n.fallback(),
        other_languages=editions.translation_languages(),
    )


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
            main_language=i18n.fallback(),
            other_languages=editions.translation_languages(),
        ), 422
    flash(
        gettext("Draft saved. Check the preview, send yourself a test, then schedule it."),
        "notice",
    )
    return redirect(url_for("admin.campaign", campaign_id=campaign.id))


def _campaign_page(campaign: Campaign, status: int = 200, **overrides):
    version = _version()
    subject, source, source_format = editor.source_of(campaign, version)
    context = {
        "campaign": campaign,
        "version": version,
        "version_language": version or i18n.fallback(),
        "tabs": _tabs(campaign),
        "translated": version is None or version in editions.translations_of(campaign),
        "progress": progress.progress_of(campaign),
        "editable": campaign.status in campaigns.EDITABLE,
        "cancellable": campaign.status in campaigns.CANCELLABLE,
        "live": campaign.status in progress.LIVE_STATUSES,
        "errors": {},
        "subject": subject,
        "source": source,
        "source_format": source_format,
        "formats": editor.FORMATS,
        "next_slot": campaigns.next_slot(),
        "slot_zone": times.slot().zone.key,
        "common_zones": times.COMMON_ZONES,
        "zones": times.zone_choices(),
        "schedule_errors": {},
        "when": "slot",
        "send_at_local": "",
        "zone": times.slot().zone.key,
        "admin_email": g.admin.email,
    }
    context.update(overrides)
    return render_template("admin/campaign.html", **context), status


def campaign(campaign_id: int):
    return _campaign_page(campaign_or_404(campaign_id))


def save_campaign(campaign_id: int):
    found = campaign_or_404(campaign_id)
    subject = request.form.get("subject", "")
    source = request.form.get("source", "")
    source_format = request.form.get("source_format", "markdown")
    version = _version()
    try:
        editor.save(found.id, subject, source, source_format, version)
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
    flash(gettext("Changes saved. The preview shows them."), "notice")
    return redirect(_campaign_url(campaign_id, version) + "#preview")


def _campaign_url(campaign_id: int, version: str | None) -> str:
    if version is None:
        return url_for("admin.campaign", campaign_id=campaign_id)
    return url_for("admin.campaign", campaign_id=campaign_id, version=version)


def remove_version(campaign_id: int):
    found = campaign_or_404(campaign_id)
    version = _version()
    if version is None:
        abort(404)
    try:
        editor.remove_translation(found.id, version)
    except campaigns.WrongState as exc:
        flash(str(exc), "alert")
    else:
        name = i18n.display_name(version)
        flash(gettext("Removed the version in %(language)s.", language=name), "notice")
    return redirect(_campaign_url(found.id, version))


def preview(campaign_id: int):
    """The edition as a reader sees it; the campaign page frames it at two widths."""
    document = editor.preview_document(campaign_or_404(campaign_id), _version())
    response = Response(document, mimetype="text/html")
    response.headers["Content-Security-Policy"] = PREVIEW_CSP
    return response


def send_test(campaign_id: int):
    found = campaign_or_404(campaign_id)
    version = _version()
    try:
        campaigns.send_test(found.id, g.admin.email, version)
    except campaigns.Invalid as exc:
        flash(gettext("The test could not be sent: %(why)s", why=exc), "alert")
    except campaigns.CopyNotSent as exc:
        flash(gettext("%(why)s Please try again later.", why=exc), "alert")
    else:
        flash(gettext("A test copy is on its way to %(email)s.", email=g.admin.email), "notice")
    return redirect(_campaign_url(found.id, version))


def schedule(campaign_id: int):
    found = campaign_or_404(campaign_id)
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
        # Shown until the page sees the send finish (static/admin.js hides it then).
        flash(gettext("Sending starts within seconds. This page shows the progress."), "until-sent")
    else:
        when = times.localtime(scheduled.send_at)
        flash(gettext("Scheduled for %(when)s.", when=when), "notice")
    return redirect(url_for("admin.campaign", campaign_id=found.id))


def cancel(campaign_id: int):
    found = campaign_or_404(campaign_id)
    try:
        campaigns.cancel(found.id)
    except campaigns.WrongState as exc:
        flash(str(exc), "alert")
    else:
        flash(gettext("The campaign is cancelled; nothing more of it goes out."), "notice")
    return redirect(url_for("admin.campaign", campaign_id=found.id))


def resume(campaign_id: int):
    found = campaign_or_404(campaign_id)
    try:
        campaigns.resume(found.id)
    except (campaigns.WrongState, campaigns.Invalid) as exc:
        flash(str(exc), "alert")
    else:
        flash(gettext("Sending continues where it stopped."), "notice")
    return redirect(url_for("admin.campaign", campaign_id=found.id))
