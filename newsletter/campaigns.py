"""Campaigns: write, test, schedule, cancel and resume editions.

The API, the admin pages and the CLI all call these functions. Status changes are
single conditional UPDATEs (``WHERE status IN ...``), so a race with the tick or a
second marketer ends in a clear WrongState instead of a lost update.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import redis
from flask import current_app
from flask_babel import gettext
from sqlalchemy import func, select

from newsletter import addresses, campaign_status, sanitizer, sending
from newsletter.extensions import db
from newsletter.mail import builders, smtp
from newsletter.mail.rendering import html_to_text
from newsletter.models import (
    AdminUser,
    Campaign,
    CampaignStatus,
    SendBatch,
    utcnow,
)
from newsletter.slots import MonthlySlot
from newsletter.stats import audience

log = logging.getLogger(__name__)

SUBJECT_MAX = 200
ID_MAX = 2**31 - 1
EDITABLE = (CampaignStatus.DRAFT, CampaignStatus.SCHEDULED)
CANCELLABLE = (CampaignStatus.SCHEDULED, CampaignStatus.SENDING, CampaignStatus.PAUSED)
# A scheduled time this far in the past is taken as a typo, not as "send now".
PAST_TOLERANCE = timedelta(minutes=1)
TEST_COPY_PATH = "/unsubscribe/test-copy-no-subscription"
QUEUE_DOWN_NOTE = (
    "The queue (Redis) cannot be reached just now. The campaign is scheduled all the same: "
    "sending starts when the queue is back, at the next periodic tick."
)
_UNSET = object()


class CampaignError(Exception):
    """Base of the errors a marketer can fix."""


class NotFound(CampaignError):
    def __init__(self, campaign_id: int) -> None:
        super().__init__(f"There is no campaign {campaign_id}.")
        self.campaign_id = campaign_id


class WrongState(CampaignError):
    """The campaign's status does not allow this step (e.g. editing a sent edition)."""

    def __init__(self, campaign: Campaign, action: str, allowed, hint: str = "") -> None:
        allowed_text = " or ".join(status.value for status in allowed)
        super().__init__(
            f"Campaign {campaign.id} is {campaign.status.value}; "
            f"only a {allowed_text} campaign can be {action}.{hint}"
        )
        self.campaign = campaign
        self.status = campaign.status


class CopyNotSent(CampaignError):
    """The mail server did not take a test copy; the message names no address."""


@dataclass
class Invalid(CampaignError):
    """Input that cannot be used; ``errors`` maps each field to a message."""

    errors: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(f"{name}: {message}" for name, message in self.errors.items())


def _is_unicode(value: str) -> bool:
    """False for strings with lone surrogates (JSON allows ``"\\ud800"``; UTF-8 does not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


NOT_UNICODE = "contains a lone surrogate (e.g. \\ud800), which is not a character"


def _check_subject(subject, errors: dict[str, str]) -> str | None:
    if not isinstance(subject, str) or not subject.strip():
        errors["subject"] = "Give the edition a subject."
        return None
    subject = subject.strip()
    if not _is_unicode(subject):
        errors["subject"] = f"The subject {NOT_UNICODE}."
    elif any(c in subject for c in "\r\n\0"):
        errors["subject"] = "The subject must be one line."
    elif len(subject) > SUBJECT_MAX:
        errors["subject"] = f"The subject is {len(subject)} characters long; at most {SUBJECT_MAX}."
    return subject


def _check_html(html, errors: dict[str, str]) -> str | None:
    """Return the HTML body cleaned to the mail allow-list (see ``sanitizer``)."""
    if not isinstance(html, str) or not html.strip():
        errors["html"] = "The edition needs an HTML body."
        return None
    if not _is_unicode(html):
        errors["html"] = f"The HTML body {NOT_UNICODE}."
        return None
    if "\0" in html:
        errors["html"] = "The HTML body contains a NUL character."
        return None
    cleaned = sanitizer.clean(html)
    if not cleaned.strip():
        errors["html"] = (
            "Nothing is left of the HTML body once scripts, frames and forms are removed."
        )
        return None
    return cleaned


def _check_text(text, errors: dict[str, str]) -> str | None:
    """``None`` or an empty text means: derive the text part from the HTML."""
    if text is None:
        return None
    if not isinstance(text, str):
        errors["text"] = "The text part must be a string (or null to derive it from the HTML)."
        return None
    if not _is_unicode(text):
        errors["text"] = f"The text part {NOT_UNICODE}."
    elif "\0" in text:
        errors["text"] = "The text part contains a NUL character."
    return text if text.strip() else None


def create(subject: str, html: str, text: str | None = None) -> Campaign:
    """Store a new draft; without a text part, derive one from the HTML."""
    errors: dict[str, str] = {}
    checked_subject = _check_subject(subject, errors)
    checked_html = _check_html(html, errors)
    checked_text = _check_text(text, errors)
    if errors or checked_subject is None or checked_html is None:
        raise Invalid(errors)
    campaign = Campaign(
        subject=checked_subject,
        html=checked_html,
        text=checked_text if checked_text is not None else html_to_text(checked_html),
        text_is_derived=checked_text is None,
        status=CampaignStatus.DRAFT,
    )
    db.session.add(campaign)
    db.session.commit()
    log.info("campaign %s created", campaign.id)
    return campaign


def list_all(limit: int | None = None) -> list[Campaign]:
    """Return campaigns, newest first."""
    query = select(Campaign).order_by(Campaign.created_at.desc(), Campaign.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(db.session.scalars(query))


def get(campaign_id: int) -> Campaign:
    if not 1 <= campaign_id <= ID_MAX:  # the column's range; beyond it the driver would fail
        raise NotFound(campaign_id)
    campaign = db.session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFound(campaign_id)
    return campaign


def _change_status(
    campaign_id: int, allowed, action: str, hint: str = "", to=None, **values
) -> Campaign:
    """Apply ``values`` (and move to status ``to``) only while the status is ``allowed``."""
    campaign = get(campaign_id)
    changed = campaign_status.change(campaign_id, allowed, to=to, **values)
    db.session.commit()
    db.session.refresh(campaign)
    if not changed:
        raise WrongState(campaign, action, allowed, hint)
    return campaign


def update(campaign_id: int, subject=_UNSET, html=_UNSET, text=_UNSET) -> Campaign:
    """Edit subject, HTML or text while the campaign is a draft or scheduled.

    ``text=None`` derives the text part from the HTML again; a derived text follows
    every change of the HTML.
    """
    campaign = get(campaign_id)
    errors: dict[str, str] = {}
    values: dict = {}
    if subject is not _UNSET:
        values["subject"] = _check_subject(subject, errors)
    if html is not _UNSET:
        values["html"] = _check_html(html, errors)
    if text is not _UNSET:
        values["text"] = _check_text(text, errors)
    if errors:
        raise Invalid(errors)
    new_html = values.get("html", campaign.html)
    if "text" in values:
        derive = values["text"] is None
    else:
        derive = campaign.text_is_derived
    if derive:
        values["text"] = html_to_text(new_html)
        values["text_is_derived"] = True
    else:
        values["text_is_derived"] = False
    campaign = _change_status(campaign_id, EDITABLE, "edited", **values)
    log.info("campaign %s edited", campaign_id)
    return campaign


def next_slot(after: datetime | None = None) -> datetime:
    """Return the next MONTHLY_SLOT after ``after`` (default: now), in UTC."""
    slot = MonthlySlot.parse(current_app.config["MONTHLY_SLOT"])
    return slot.next_after(after or utcnow())


def _never_started(campaign: Campaign) -> bool:
    has_batches = db.session.scalar(
        select(func.count(SendBatch.id)).where(SendBatch.campaign_id == campaign.id)
    )
    return campaign.started_at is None and not has_batches


def _clean_stored_html(campaign: Campaign, allowed) -> None:
    """Clean HTML stored before cleaning existed (see ``sanitizer``), before it goes out.

    Conditional on the HTML read, so an edit in between (cleaned already) is kept.
    """
    html = sanitizer.clean(campaign.html)
    if html == campaign.html:
        return
    values: dict[str, Any] = {"html": html}
    if campaign.text_is_derived:
        values["text"] = html_to_text(html)
    campaign_status.change(campaign.id, allowed, Campaign.html == campaign.html, **values)
    db.session.commit()


def schedule(campaign_id: int, send_at: datetime | str | None = None) -> Campaign:
    """Schedule a draft (or reschedule) for ``send_at``, ``"now"`` or the next monthly slot."""
    return schedule_and_start(campaign_id, send_at)[0]


def schedule_and_start(
    campaign_id: int, send_at: datetime | str | None = None
) -> tuple[Campaign, str | None]:
    """Schedule as ``schedule`` does; start a due campaign at once.

    Returns the campaign and a note for staff (``QUEUE_DOWN_NOTE``) when the start could
    not be queued: the database is the scheduler, so the periodic tick starts it later.
    A paused campaign that never started (it was found overdue) may be scheduled again;
    one paused mid-send continues with ``resume`` instead.
    """
    now = utcnow()
    if send_at is None:
        when = next_slot(now)
    elif send_at == "now":
        when = now
    elif isinstance(send_at, datetime):
        if send_at.tzinfo is None or send_at.utcoffset() is None:
            raise Invalid({"send_at": "Give the time with its UTC offset, e.g. +01:00 or Z."})
        when = send_at
        if when < now - PAST_TOLERANCE:
            raise Invalid({"send_at": 'That time has passed; send "now" to send at once.'})
    else:
        raise Invalid({"send_at": 'Give an ISO 8601 time with offset, or "now".'})

    campaign = get(campaign_id)
    allowed = list(EDITABLE)
    paused_midway = False
    if campaign.status == CampaignStatus.PAUSED:
        if _never_started(campaign):
            allowed.append(CampaignStatus.PAUSED)
        else:
            paused_midway = True
    _clean_stored_html(campaign, allowed)
    campaign = _change_status(
        campaign_id,
        allowed,
        "scheduled",
        hint=" It was paused while sending; resume it instead." if paused_midway else "",
        to=CampaignStatus.SCHEDULED,
        send_at=when,
        status_reason=None,
    )
    log.info("campaign %s scheduled for %s", campaign_id, when.isoformat())
    if when <= utcnow() and not _start_now(campaign_id):
        return campaign, QUEUE_DOWN_NOTE
    return campaign, None


def _start_now(campaign_id: int) -> bool:
    """Start a due campaign within seconds instead of waiting for the next periodic tick.

    Returns False when Redis is unreachable: the campaign is committed as scheduled and
    the periodic tick starts it once Redis is back, so the outage is no error here.
    """
    try:
        sending.enqueue_start(campaign_id)
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
        log.warning(
            "campaign %s: queue unreachable (%s); the periodic tick will start it",
            campaign_id,
            type(exc).__name__,
        )
        return False
    return True


def cancel(campaign_id: int) -> Campaign:
    """Stop a scheduled, sending or paused campaign; batch jobs see it and stop."""
    campaign = _change_status(
        campaign_id,
        CANCELLABLE,
        "cancelled",
        to=CampaignStatus.CANCELLED,
        status_reason="Cancelled by a marketer.",
    )
    log.info("campaign %s cancelled", campaign_id)
    return campaign


def resume(campaign_id: int) -> Campaign:
    """Continue a paused campaign where it stopped.

    A campaign paused before it ever started (found overdue) has nothing to continue:
    it is scheduled for now instead, and starts within seconds.
    """
    campaign = get(campaign_id)
    if campaign.status == CampaignStatus.PAUSED and _never_started(campaign):
        return schedule(campaign_id, "now")
    campaign = _change_status(
        campaign_id,
        (CampaignStatus.PAUSED,),
        "resumed",
        to=CampaignStatus.SENDING,
        status_reason=None,
    )
    sending.resume_batches(campaign_id)
    log.info("campaign %s resumed", campaign_id)
    return campaign


def send_test(campaign_id: int, to: str) -> None:
    """Send one copy now to a staff account's address; its unsubscribe link leads nowhere.

    Any other address is refused (Invalid, field ``to``): a token or a login must not turn
    the service into a mailer to anyone. When the mail server does not take the copy,
    CopyNotSent says why, in words that quote no address.
    """
    campaign = get(campaign_id)
    try:
        address = addresses.normalize(to if isinstance(to, str) else "")
    except addresses.InvalidAddress as exc:
        raise Invalid({"to": str(exc)}) from None
    if db.session.scalar(select(AdminUser.id).where(AdminUser.email == address)) is None:
        raise Invalid({"to": "Test copies go only to the address of a staff (admin) account."})
    html = sanitizer.clean(campaign.html)  # also for a draft stored before cleaning existed
    # Marked, so that nobody takes the copy in their inbox for the edition that went out.
    subject = gettext("[Test] %(subject)s", subject=campaign.subject)
    template = builders.edition_template(subject, html, campaign.text)
    unsubscribe_url = current_app.config["PUBLIC_URL"] + TEST_COPY_PATH
    try:
        smtp.send(
            template.render(address, {"unsubscribe_url": unsubscribe_url}),
            f"campaign {campaign_id}: test copy",
        )
    except smtp.MailNotSent as exc:
        why = _why_not_taken(exc)
        log.warning("campaign %s: test copy not sent: %s", campaign_id, why)
        raise CopyNotSent(f"The mail server did not take the test copy: {why}.") from None
    log.info("campaign %s: test copy sent", campaign_id)


def _why_not_taken(error: smtp.MailNotSent) -> str:
    """Say what the mail server did, without its reply text (it may quote the address)."""
    if isinstance(error, smtp.MailRefused) and error.stage == "rcpt":
        return f"it refused the address ([{error.code}])"
    if error.code is not None:
        return f"it answered {error.code}"
    return f"it could not be reached ({error.detail})"


def totals(campaign: Campaign) -> dict[str, int]:
    """Recipients, sent, failed, unknown, bounced, complaints: live while sending, else stored."""
    if campaign.status in (CampaignStatus.SENDING, CampaignStatus.PAUSED, CampaignStatus.CANCELLED):
        return sending.live_totals(campaign)
    return {
        "recipients": campaign.recipients,
        "sent": campaign.sent,
        "failed": campaign.failed,
        "unknown": campaign.unknown,
        "bounced": campaign.bounced,
        "complaints": campaign.complaints,
    }


def stats() -> dict:
    """Counts only: subscribers, sign-ups awaiting confirmation, campaigns by status."""
    by_status = dict(
        db.session.execute(
            select(Campaign.status, func.count(Campaign.id)).group_by(Campaign.status)
        ).all()
    )
    return {
        **audience(),
        "campaigns": {status.value: by_status.get(status, 0) for status in CampaignStatus},
    }
