"""Mail about deliveries: sorting bounces and complaints, and acting on them.

Every edition leaves with the envelope sender ``bounces+<tag>@domain`` (``verp``). The
tag names the campaign and the reader by id and is signed, so a bounce says whom it is about
without an address being read out of it, and a bounce whose tag is missing or does not
verify changes nothing, whatever it says: a forged bounce can never unsubscribe anybody.

Both entry points, ``flask bounces read`` (a pipe from the MTA) and the IMAP poll, call
``handle``.
"""

from __future__ import annotations

import email
import email.message
import enum
import imaplib
import logging
import re
import ssl
from dataclasses import dataclass, replace
from email.utils import getaddresses
from typing import cast

from flask import current_app
from redis.exceptions import LockError
from sqlalchemy import delete, exists, select, update
from sqlalchemy.engine import CursorResult

from newsletter import config, dsn, subscriptions
from newsletter.extensions import db, get_redis
from newsletter.models import Campaign, CampaignStatus, PendingSignup, Subscriber
from newsletter.verp import Tag, TagKind, read_tag, tag_in_address

log = logging.getLogger(__name__)
# flufl.bounce logs every detector it tries at INFO; only its warnings are worth a line.
logging.getLogger("flufl.bounce").setLevel(logging.WARNING)


# --- classification ----------------------------------------------------------------------


class VerdictKind(enum.StrEnum):
    PERMANENT = "permanent"
    TEMPORARY = "temporary"
    COMPLAINT = "complaint"
    AUTO_REPLY = "auto_reply"
    IGNORE = "ignore"


@dataclass(frozen=True)
class Verdict:
    kind: VerdictKind
    tag: Tag | None  # a verified tag, or None


# Headers in which MTAs record the envelope recipient at delivery, then the plain To.
_RECIPIENT_HEADERS = ("Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "To")
# RFC 5965 feedback types that are a reader's complaint about the message; auth-failure
# (RFC 6591) and not-spam reports are not.
_COMPLAINT_TYPES = {"abuse", "fraud", "virus"}
_VACATION_HEADERS = ("X-Autoreply", "X-Autorespond", "X-Vacation")
_VACATION_SUBJECT = re.compile(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort)|auto:|out of (the )?office|"
    r"abwesenheit|vacation|away from)",
    re.IGNORECASE,
)


def classify(message: bytes) -> Verdict:
    """Sort a message that reached the bounce address, and find its verified tag."""
    parsed = email.message_from_bytes(message)  # compat32: what flufl.bounce expects
    report = _feedback_report(parsed)
    if report is not None:
        kind = (
            VerdictKind.COMPLAINT
            if _text(report.get("Feedback-Type")).strip().lower() in _COMPLAINT_TYPES
            else VerdictKind.IGNORE
        )
    else:
        kind = _delivery_kind(parsed)
    return Verdict(kind, _find_tag(parsed, with_original=report is not None))


def _delivery_kind(message: email.message.Message) -> VerdictKind:
    from_dsn = dsn.worst(dsn.statuses(message))
    if from_dsn is not None:
        return VerdictKind(from_dsn)
    if _looks_like_vacation(message):
        return VerdictKind.AUTO_REPLY
    recognised = _flufl_failures(message)
    if recognised is not VerdictKind.IGNORE:
        return recognised
    auto_submitted = _text(message.get("Auto-Submitted")).strip().lower()
    if auto_submitted and auto_submitted != "no":  # RFC 3834
        return VerdictKind.AUTO_REPLY
    return VerdictKind.IGNORE


def _looks_like_vacation(message: email.message.Message) -> bool:
    if any(message.get(name) for name in _VACATION_HEADERS):
        return True
    if _text(message.get("Precedence")).strip().lower() == "auto_reply":
        return True
    return bool(_VACATION_SUBJECT.match(_text(message.get("Subject"))))


def _flufl_failures(message: email.message.Message) -> VerdictKind:
    """What Mailman's detectors (flufl.bounce) recognise in a non-standard bounce."""
    from flufl.bounce import all_failures

    try:
        temporary, permanent = all_failures(message)
    except Exception as exc:  # noqa: BLE001 - heuristics over untrusted input; never fatal
        # A detector choking on odd input must not make the message unprocessable forever.
        log.warning("bounce detectors failed on a message (%s)", type(exc).__name__)
        return VerdictKind.IGNORE
    if permanent:
        return VerdictKind.PERMANENT
    if temporary:
        return VerdictKind.TEMPORARY
    return VerdictKind.IGNORE


def _feedback_report(message: email.message.Message) -> email.message.Message | None:
    """The fields of an RFC 5965 message/feedback-report part, if there is one."""
    for part in message.walk():
        if part.get_content_type() != "message/feedback-report":
            continue
        payload = part.get_payload()
        if isinstance(payload, list) and payload:
            return cast(email.message.Message, payload[0])
        return email.message_from_string(payload if isinstance(payload, str) else "")
    return None


def _find_tag(message: email.message.Message, with_original: bool) -> Tag | None:
    """The first verified tag among the places a VERP address shows up.

    The envelope recipient of the bounce itself, and for a feedback report also the
    report's Original-Mail-From and the enclosed original's Return-Path (a provider sends
    reports to its registered address, not to ours). Never the original's To or List-Id:
    those would let anyone name an address.
    """
    bounce_address = current_app.config.get("BOUNCE_ADDRESS")
    if not bounce_address:
        return None
    values = [_text(v) for name in _RECIPIENT_HEADERS for v in message.get_all(name) or []]
    if with_original:
        report = _feedback_report(message)
        if report is not None:
            values += [_text(v) for v in report.get_all("Original-Mail-From") or []]
        for part in message.walk():
            original = _enclosed_headers(part)
            if original is not None:
                values += [_text(v) for v in original.get_all("Return-Path") or []]
    for _, address in getaddresses(values):
        found = tag_in_address(address, bounce_address)
        tag = read_tag(found) if found else None
        if tag is not None:
            return tag
    return None


def _enclosed_headers(part: email.message.Message) -> email.message.Message | None:
    """The headers of an enclosed original (message/rfc822 or text/rfc822-headers)."""
    content_type = part.get_content_type()
    if content_type == "message/rfc822":
        payload = part.get_payload()
        return cast(email.message.Message, payload[0]) if isinstance(payload, list) else None
    if content_type == "text/rfc822-headers":
        return email.message_from_string(_text(part.get_payload(decode=False)))
    return None


def _text(value) -> str:
    return "" if value is None else str(value)


# --- actions -----------------------------------------------------------------------------


class Act(enum.StrEnum):
    ERASE_BOUNCED = "erase_bounced"
    COUNT_SOFT_BOUNCE = "count_soft_bounce"
    ERASE_COMPLAINT = "erase_complaint"
    END_PENDING = "end_pending"
    NOTHING = "nothing"


@dataclass(frozen=True)
class Action:
    """What a message calls for (``decide``) or what was done (``apply``); ids only."""

    act: Act
    subscriber_id: int | None = None
    pending_id: int | None = None
    campaign_id: int | None = None
    why: str = ""

    def summary(self) -> str:
        ids = [
            f"{name} {value}"
            for name, value in (
                ("subscriber", self.subscriber_id),
                ("pending", self.pending_id),
                ("campaign", self.campaign_id),
            )
            if value is not None
        ]
        return " ".join([self.act.value, *ids, *([f"({self.why})"] if self.why else [])])


def decide(message: bytes) -> Action:
    """What ``message`` calls for; reads and changes nothing in the database."""
    verdict = classify(message)
    tag = verdict.tag
    if verdict.kind is VerdictKind.IGNORE:
        return Action(Act.NOTHING, why="not about a delivery")
    if verdict.kind is VerdictKind.AUTO_REPLY:
        return Action(Act.NOTHING, why="auto-reply")
    if tag is None:
        return Action(Act.NOTHING, why=f"{verdict.kind.value} without a valid tag")
    if tag.kind is TagKind.CONFIRM:
        if verdict.kind is VerdictKind.TEMPORARY:
            return Action(Act.NOTHING, pending_id=tag.target_id, why="temporary")
        return Action(Act.END_PENDING, pending_id=tag.target_id, why=verdict.kind.value)
    act = {
        VerdictKind.PERMANENT: Act.ERASE_BOUNCED,
        VerdictKind.TEMPORARY: Act.COUNT_SOFT_BOUNCE,
        VerdictKind.COMPLAINT: Act.ERASE_COMPLAINT,
    }[verdict.kind]
    return Action(act, subscriber_id=tag.target_id, campaign_id=tag.campaign_id)


def handle(message: bytes) -> Action:
    """Act on one message that reached the bounce address; return what was done."""
    action = apply(decide(message))
    log.info("bounce handled: %s", action.summary())
    return action


def apply(action: Action) -> Action:
    """Carry ``action`` out; return what was done (a repeat or a gone reader: nothing)."""
    if action.act is Act.END_PENDING:
        return _end_pending(action)
    if action.act is Act.COUNT_SOFT_BOUNCE:
        return _count_soft_bounce(action)
    if action.act in (Act.ERASE_BOUNCED, Act.ERASE_COMPLAINT):
        return _erase(action)
    return action


def _claimed_subscriber(subscriber_id: int | None) -> Subscriber | None:
    """Lock the reader's row with a no-op UPDATE, then load it; None when they are gone.

    The UPDATE takes the row lock on PostgreSQL and the write lock on SQLite: the twin of
    a message, handled at the same instant by another worker, waits here until this one
    commits and then finds the reader gone, so nothing is counted twice.
    """
    claimed = _rowcount(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .values(soft_bounces=Subscriber.soft_bounces)
        .execution_options(synchronize_session=False)
    )
    if not claimed:
        db.session.rollback()
        return None
    return db.session.get(Subscriber, subscriber_id, populate_existing=True)


def _erase(action: Action) -> Action:
    subscriber = _claimed_subscriber(action.subscriber_id)
    if subscriber is None:
        return replace(action, act=Act.NOTHING, why="already gone")
    complaint = action.act is Act.ERASE_COMPLAINT
    _count_on_campaign(action, Campaign.complaints if complaint else Campaign.bounced)
    subscriptions.erase(subscriber, "complaint" if complaint else "bounced")  # commits
    return action


def _count_on_campaign(action: Action, column) -> None:
    """Add one to a campaign total, in the transaction that erases the reader."""
    if action.campaign_id is None:
        return
    db.session.execute(
        update(Campaign)
        .where(Campaign.id == action.campaign_id)
        .values({column: column + 1})
        .execution_options(synchronize_session=False)
    )


def _count_soft_bounce(action: Action) -> Action:
    """Count a temporary failure; BOUNCE_SOFT_LIMIT of them on editions in a row erase.

    Several notices about one edition (delayed, then failed) count once. A soft bounce
    after an edition that came back clean (one started in between) starts again at one.
    """
    subscriber = _claimed_subscriber(action.subscriber_id)
    if subscriber is None:
        return replace(action, act=Act.NOTHING, why="already gone")
    last = subscriber.last_soft_bounce_campaign_id
    restart = _clean_edition_between(last, action.campaign_id)
    counted = _rowcount(
        update(Subscriber)
        .where(
            Subscriber.id == subscriber.id,
            (Subscriber.last_soft_bounce_campaign_id.is_(None))
            | (Subscriber.last_soft_bounce_campaign_id != action.campaign_id),
        )
        .values(
            soft_bounces=1 if restart else Subscriber.soft_bounces + 1,
            last_soft_bounce_campaign_id=action.campaign_id,
        )
        .execution_options(synchronize_session=False)
    )
    if not counted:
        db.session.rollback()
        return replace(action, act=Act.NOTHING, why="this edition is counted already")
    count = db.session.scalar(select(Subscriber.soft_bounces).where(Subscriber.id == subscriber.id))
    if count is not None and count >= current_app.config["BOUNCE_SOFT_LIMIT"]:
        erased = replace(action, act=Act.ERASE_BOUNCED, why=f"{count} soft bounces in a row")
        _count_on_campaign(erased, Campaign.bounced)
        subscriptions.erase(subscriber, "bounced")  # commits
        return erased
    db.session.commit()
    return replace(action, why=f"{count} in a row")


def _clean_edition_between(earlier_id: int | None, later_id: int | None) -> bool:
    """Whether an edition started between two soft-bounced ones (it reached the reader)."""
    if earlier_id is None or later_id is None:
        return False
    starts = dict(
        db.session.execute(
            select(Campaign.id, Campaign.started_at).where(Campaign.id.in_([earlier_id, later_id]))
        ).all()
    )
    earlier, later = starts.get(earlier_id), starts.get(later_id)
    if earlier is None or later is None or later <= earlier:
        return False
    return bool(
        db.session.scalar(
            select(
                exists().where(
                    Campaign.started_at > earlier,
                    Campaign.started_at < later,
                    Campaign.status.in_([CampaignStatus.SENT, CampaignStatus.SENDING]),
                )
            )
        )
    )


def _rowcount(statement) -> int:
    return cast(CursorResult, db.session.execute(statement)).rowcount


def _end_pending(action: Action) -> Action:
    """A confirmation mail that cannot be delivered (or was reported): end the sign-up."""
    deleted = _rowcount(delete(PendingSignup).where(PendingSignup.id == action.pending_id))
    db.session.commit()
    if not deleted:
        return replace(action, act=Act.NOTHING, why="already gone")
    subscriptions.erase_traces()
    return action


# --- IMAP --------------------------------------------------------------------------------

# One poller at a time per deployment. IMAP has no compare-and-set: two sessions that both
# STORE \Deleted on a message both succeed, having both fetched (and handled) it. Redis is
# shared by every worker already, so a lock there is the claim. The key holds no address.
POLL_LOCK_KEY = "nl:bounces:imap-poll"
POLL_LOCK_SECONDS = 120
POLL_BATCH = 500


def poll_imap(url: str | None = None) -> list[Action]:
    """Handle every message in the bounce mailbox and delete each one handled.

    Returns the outcomes, or nothing when another worker is polling. A message whose
    handling fails (the database is away) stays for the next poll, and so do the rest.
    """
    url = url or current_app.config["BOUNCE_IMAP_URL"]
    target = config.parse_imap_url(url)
    lock = get_redis().lock(POLL_LOCK_KEY, timeout=POLL_LOCK_SECONDS)
    if not lock.acquire(blocking=False):
        return []
    outcomes = []
    try:
        with _connect(target) as imap:
            _ok(imap.select(_quoted(target.mailbox)), "SELECT")
            found = _ok(imap.uid("SEARCH", "UNDELETED"), "SEARCH")[0]
            uids = found.decode("ascii").split()
            for uid in uids[:POLL_BATCH]:
                lock.reacquire()  # LockNotOwnedError: it ran out, someone else may poll now
                message = _fetch(imap, uid)
                if message is not None:
                    outcomes.append(handle(message))
                _ok(imap.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
                _ok(imap.expunge(), "EXPUNGE")
    finally:
        try:
            lock.release()
        except LockError:
            pass  # expired meanwhile; nothing of ours to release
    return outcomes


def _connect(target: config.ImapTarget) -> imaplib.IMAP4_SSL:
    context = ssl.create_default_context(cafile=current_app.config.get("BOUNCE_IMAP_CA_FILE"))
    imap = imaplib.IMAP4_SSL(target.host, target.port, ssl_context=context, timeout=60)
    try:
        imap.login(target.user, target.password)
    except imaplib.IMAP4.error:
        imap.shutdown()
        raise
    return imap


def _fetch(imap: imaplib.IMAP4_SSL, uid: str) -> bytes | None:
    """The whole message, without setting \\Seen; None if it vanished meanwhile."""
    for item in _ok(imap.uid("FETCH", uid, "(BODY.PEEK[])"), "FETCH"):
        if isinstance(item, tuple):
            return item[1]
    return None


def _ok(response: tuple, command: str) -> list:
    status, data = response
    if status != "OK":
        raise imaplib.IMAP4.error(f"IMAP {command} answered {status}")
    return data


def _quoted(mailbox: str) -> str:
    return '"' + mailbox.replace("\\", "\\\\").replace('"', '\\"') + '"'
