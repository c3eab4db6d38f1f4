"""Sign-up, confirmation and erasure: the subscriber's life cycle, with its mail jobs.

Every function here answers the same way for known and unknown addresses; whether
there is anything to do is decided later, inside a job, where no visitor can time it.
The erasure itself is ``erasure.erase``: the sending code needs it too.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import cast

from flask import current_app
from flask_babel import gettext
from rq import Retry
from sqlalchemy import delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from newsletter import addresses, consent, db_clock, i18n, stats, tokens, verp
from newsletter.erasure import erase, erase_traces
from newsletter.extensions import db
from newsletter.mail import builders, smtp
from newsletter.models import PendingPurpose, PendingSignup, Subscriber, utcnow
from newsletter.queue import enqueue, job, last_attempt

log = logging.getLogger(__name__)


class InvalidSignup(ValueError):
    """The form cannot be accepted; ``errors`` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def request_signup(
    raw_email: str,
    consent_given: bool,
    remote_addr: str | None,
    language: str | None = None,
    consent_sha256: str | None = None,
) -> None:
    """Record an unconfirmed sign-up and queue its confirmation mail.

    Known, pending and new addresses take the same path; the job finds out whether the
    address is already subscribed and then sends nothing. ``language`` is the page's
    (the fallback if not offered); ``consent_sha256`` names the wording the form showed.
    """
    errors = {}
    try:
        email = addresses.normalize(raw_email)
    except addresses.InvalidAddress as exc:
        errors["email"] = str(exc)
    if not consent_given:
        errors["consent"] = gettext("Please tick the box to agree to receive the newsletter.")
    if errors:
        raise InvalidSignup(errors)

    language = i18n.supported(language) or i18n.fallback()
    consent_text = consent.shown(language, consent_sha256)
    ip = addresses.ip_prefix(remote_addr) if current_app.config["STORE_IP_PREFIX"] else None
    pending = _upsert_pending(email, PendingPurpose.SUBSCRIBE, consent_text.id, ip, None, language)
    enqueue_confirmation(pending.id)


def _upsert_pending(
    email: str,
    purpose: PendingPurpose,
    consent_id: int | None,
    ip: str | None,
    subscriber_id,
    language: str,
) -> PendingSignup:
    """Create the pending row, or refresh the one that exists (the form sent twice)."""
    for _ in range(2):
        pending = db.session.scalar(
            select(PendingSignup).where(
                PendingSignup.email == email, PendingSignup.purpose == purpose
            )
        )
        if pending is None:
            pending = PendingSignup(email=email, purpose=purpose)
            db.session.add(pending)
        pending.consent_text_id = consent_id
        pending.language = language
        pending.ip_prefix = ip
        pending.subscriber_id = subscriber_id
        pending.requested_at = db_clock.now()  # expiry is judged by the database's clock
        pending.mail_sent_at = None
        try:
            db.session.commit()
            return pending
        except IntegrityError:
            # The same address arrived twice at once; the other request created the row.
            db.session.rollback()
    raise RuntimeError("could not store the pending sign-up")  # pragma: no cover


# Confirmation keys of address changes carry this prefix, so that their pages say what
# they do, also on a repeat after the pending change is consumed.
CHANGE_KEY_PREFIX = "change:"


def confirm_key(pending: PendingSignup) -> str:
    if pending.purpose == PendingPurpose.CHANGE_EMAIL:
        return CHANGE_KEY_PREFIX + pending.public_id
    return pending.public_id


def check_confirm_token(token: str) -> bool:
    """Raise InvalidToken or ExpiredToken; change nothing (for the GET page).

    Return whether the token confirms an address change (else a sign-up).
    """
    return tokens.read(tokens.Purpose.CONFIRM, token).startswith(CHANGE_KEY_PREFIX)


def confirm(token: str) -> bool:
    """Turn the pending sign-up (or address change) behind ``token`` into effect, once.

    The pending row is consumed by a DELETE first, in the same transaction as its effect:
    of several clicks arriving at once, exactly one deletes the row (the others wait for
    its row lock, or for SQLite's write lock, and then delete nothing) and only that one
    stores the subscriber. A repeat (double click, or after an unsubscribe) finds no
    pending row and changes nothing: the caller shows the same "confirmed" page. Return
    whether it was an address change.
    """
    key = tokens.read(tokens.Purpose.CONFIRM, token)
    is_change = key.startswith(CHANGE_KEY_PREFIX)
    public_id = key.removeprefix(CHANGE_KEY_PREFIX)
    pending = db.session.execute(
        select(
            PendingSignup.id,
            PendingSignup.purpose,
            PendingSignup.email,
            PendingSignup.subscriber_id,
            PendingSignup.requested_at,
            PendingSignup.consent_text_id,
            PendingSignup.language,
            PendingSignup.ip_prefix,
        ).where(PendingSignup.public_id == public_id)
    ).first()
    db.session.rollback()  # end the read; the consuming DELETE starts the write
    if pending is None:
        return is_change
    try:
        if _delete(delete(PendingSignup).where(PendingSignup.id == pending.id)):
            if pending.purpose == PendingPurpose.CHANGE_EMAIL:
                _apply_address_change(pending.subscriber_id, pending.email)
            else:
                _store_subscriber(pending)
        db.session.commit()
    except IntegrityError:
        # The address became a subscriber in between (another sign-up of it was confirmed
        # at the same instant): the outcome is the same, only the pending row must go.
        db.session.rollback()
        _delete(delete(PendingSignup).where(PendingSignup.id == pending.id))
        db.session.commit()
    erase_traces()
    return pending.purpose == PendingPurpose.CHANGE_EMAIL


def _store_subscriber(pending) -> None:
    """Add the confirmed subscriber with its proof of consent, unless the address is one."""
    already = db.session.scalar(select(Subscriber.id).where(Subscriber.email == pending.email))
    if already is not None:
        return
    db.session.add(
        Subscriber(
            email=pending.email,
            requested_at=pending.requested_at,
            confirmed_at=db_clock.now(),  # the proof of consent: one clock for both times
            consent_text_id=pending.consent_text_id,
            language=pending.language,
            ip_prefix=pending.ip_prefix,
        )
    )
    db.session.flush()  # a unique-address race surfaces here, inside the try
    stats.tally("confirmed")


def _apply_address_change(subscriber_id: int | None, email: str) -> None:
    """Move the subscriber to the confirmed new address, unless another subscriber has it."""
    taken = db.session.scalar(select(Subscriber.id).where(Subscriber.email == email))
    if subscriber_id is None or taken is not None:
        return
    db.session.execute(
        update(Subscriber)
        .where(Subscriber.id == subscriber_id)
        .values(email=email, email_changed_at=db_clock.now())
        .execution_options(synchronize_session=False)
    )


def purge_expired() -> None:
    """Delete unconfirmed sign-ups older than CONFIRM_MAX_AGE (a tick task)."""
    cutoff = db_clock.now(-current_app.config["CONFIRM_MAX_AGE"])
    result = db.session.execute(delete(PendingSignup).where(PendingSignup.requested_at < cutoff))
    db.session.commit()
    if result.rowcount:
        erase_traces()
        log.info("purged %d expired sign-ups", result.rowcount)


# --- unsubscribe, erasure and self-service (GDPR Art. 15, 16, 17, 20) -----------------


def reader_language(purpose: tokens.Purpose, token: str) -> str | None:
    """The language stored behind a reader's link, for its pages; None if there is none.

    A confirmation link names a pending sign-up (gone once it is confirmed); the other
    links name a subscriber. A bad or expired link has no reader behind it. The look-up
    runs on a connection of its own, so the view's transaction starts with the view.
    """
    try:
        key = tokens.read(purpose, token)
    except (tokens.InvalidToken, tokens.ExpiredToken):
        return None
    if purpose == tokens.Purpose.CONFIRM:
        public_id = key.removeprefix(CHANGE_KEY_PREFIX)
        query = select(PendingSignup.language).where(PendingSignup.public_id == public_id)
    else:
        query = select(Subscriber.language).where(Subscriber.token_key == key)
    with db.engine.connect() as connection:
        return connection.execute(query).scalar()


def check_unsubscribe_token(token: str) -> None:
    """Raise InvalidToken for a token we did not make; change nothing (for the GET page)."""
    tokens.read(tokens.Purpose.UNSUBSCRIBE, token)


def unsubscribe(token: str) -> None:
    """Erase the subscriber behind ``token`` now; a repeat or a gone subscriber is a no-op."""
    key = tokens.read(tokens.Purpose.UNSUBSCRIBE, token)
    subscriber = db.session.scalar(select(Subscriber).where(Subscriber.token_key == key))
    if subscriber is not None:
        erase(subscriber, "unsubscribe")


def find_by_address(raw_email: str) -> Subscriber | None:
    """Look a subscriber up by address, for staff handling requests by post or email."""
    try:
        email = addresses.normalize(raw_email, check_deliverability=False)
    except addresses.InvalidAddress:
        return None
    return db.session.scalar(select(Subscriber).where(Subscriber.email == email))


def erase_address(raw_email: str, reason: str = "staff") -> bool:
    """Erase the subscriber and any unconfirmed sign-up of an address; say if there was any."""
    subscriber = find_by_address(raw_email)
    if subscriber is not None:
        erase(subscriber, reason)
        return True
    try:
        email = addresses.normalize(raw_email, check_deliverability=False)
    except addresses.InvalidAddress:
        return False
    deleted = _delete(delete(PendingSignup).where(PendingSignup.email == email))
    db.session.commit()
    if deleted:
        erase_traces()
    return bool(deleted)


def _delete(statement) -> int:
    """Run a DELETE in the session's transaction; return how many rows it removed."""
    result = cast(CursorResult, db.session.execute(statement))
    return result.rowcount


def request_manage_link(raw_email: str) -> None:
    """Queue the manage-link mail for an address; the same work for any address.

    Raises InvalidAddress for input that is no address at all. An unknown address still
    costs one lookup and one enqueue (of a job with nothing to do), so neither the page
    nor its timing tells a visitor whether the address is subscribed.
    """
    email = addresses.normalize(raw_email)
    subscriber_id = db.session.scalar(select(Subscriber.id).where(Subscriber.email == email))
    enqueue_manage_link(subscriber_id)


def subscriber_for_manage_token(token: str) -> Subscriber | None:
    """Return the subscriber behind a manage link, None if gone; raise for bad or old links."""
    key = tokens.read(tokens.Purpose.MANAGE, token)
    return db.session.scalar(select(Subscriber).where(Subscriber.token_key == key))


def request_address_change(subscriber: Subscriber, raw_email: str) -> None:
    """Ask the new address to confirm; only then does it replace the old one.

    The subscriber keeps their proof of consent; confirm() applies the change. Raises
    InvalidAddress. An address that belongs to another subscriber gets the same answer
    (and a mail whose link then changes nothing), so no subscriber learns who else is one.
    """
    email = addresses.normalize(raw_email)
    if email == subscriber.email:
        raise addresses.InvalidAddress(gettext("That is already the address we send to."))
    # One pending change per subscriber: a new request replaces an earlier one.
    db.session.execute(
        delete(PendingSignup).where(
            PendingSignup.subscriber_id == subscriber.id,
            PendingSignup.purpose == PendingPurpose.CHANGE_EMAIL,
            PendingSignup.email != email,
        )
    )
    db.session.commit()
    pending = _upsert_pending(
        email, PendingPurpose.CHANGE_EMAIL, None, None, subscriber.id, subscriber.language
    )
    enqueue_confirmation(pending.id)
    log.info("subscriber %s asked to move to a new mailbox (pending %s)", subscriber.id, pending.id)


# --- the mail jobs: confirmation and manage link ------------------------------------------

MAIL_RETRY = Retry(max=3, interval=[10, 60, 300])

# The tally of confirmation mails given up; the admin dashboard shows it.
CONFIRMATION_FAILED = "confirmation_failed"


def confirmation_retry() -> Retry | None:
    """CONFIRM_RETRY_ATTEMPTS tries in all, CONFIRM_RETRY_DELAY apart, doubling each time."""
    attempts = current_app.config["CONFIRM_RETRY_ATTEMPTS"]
    delay = current_app.config["CONFIRM_RETRY_DELAY"]
    if attempts < 2:
        return None
    return Retry(max=attempts - 1, interval=[delay * 2**n for n in range(attempts - 1)])


def enqueue_confirmation(pending_id: int):
    return enqueue(
        "mail",
        send_confirmation,
        pending_id,
        job_id=f"confirm-{pending_id}",
        retry=confirmation_retry(),
    )


@job
def send_confirmation(pending_id: int) -> None:
    """Mail the confirmation link of a pending sign-up or address change, once.

    A refusal of the recipient or the message ends the pending sign-up: at once when it is
    permanent (5xx), after the last of RQ's retries when it is temporary (4xx). Anything
    else (the relay unreachable, our login or sender refused) concerns every mail, not
    this one: the job fails and the tick enqueues it again until the sign-up expires.
    """
    pending = db.session.get(PendingSignup, pending_id)
    if pending is None or pending.mail_sent_at is not None:
        return
    if pending.purpose == PendingPurpose.SUBSCRIBE:
        subscribed = db.session.scalar(
            select(Subscriber.id).where(Subscriber.email == pending.email)
        )
        if subscribed is not None:
            # Already a subscriber: no second subscription and no mail, and the visitor saw
            # the same page as everyone else.
            db.session.delete(pending)
            db.session.commit()
            log.info("sign-up %s: already a subscriber, nothing sent", pending_id)
            return
    link = tokens.url(tokens.Purpose.CONFIRM, confirm_key(pending))
    if pending.purpose == PendingPurpose.SUBSCRIBE:
        mail = builders.confirmation_mail(pending.email, link, pending.language)
    else:
        mail = builders.change_address_mail(pending.email, link, pending.language)
    # With BOUNCE_ADDRESS, a later bounce of this mail names the pending sign-up (VERP).
    sender = verp.envelope_sender(verp.TagKind.CONFIRM, None, pending.id)
    if sender:
        mail = dataclasses.replace(mail, sender=sender)
    try:
        smtp.send(mail, f"sign-up {pending_id}")
    except smtp.MailRefused as refusal:
        if not (refusal.permanent or last_attempt()):
            raise  # RQ tries again after its backoff
        _give_up_confirmation(pending, refusal.code)
        return
    pending.mail_sent_at = utcnow()
    db.session.commit()
    log.info("sign-up %s: confirmation mail sent", pending_id)


def _give_up_confirmation(pending: PendingSignup, code: int) -> None:
    """Delete a pending sign-up whose confirmation mail cannot be delivered, and count it.

    Deleting (there is no column to mark it) keeps the tick from enqueueing it again and
    drops an address we cannot use anyway; the visitor can simply sign up again. An
    address change goes the same way: the subscriber keeps the old address.
    """
    pending_id, subscriber_id = pending.id, pending.subscriber_id
    db.session.delete(pending)
    stats.tally(CONFIRMATION_FAILED)
    db.session.commit()
    erase_traces()
    owner = f" (subscriber {subscriber_id})" if subscriber_id is not None else ""
    log.warning(
        "sign-up %s%s: SMTP refused the confirmation mail (%s); given up", pending_id, owner, code
    )


def requeue_unsent_confirmations() -> None:
    """Re-enqueue confirmation mails whose job was lost, e.g. Redis was emptied (a tick task)."""
    grace = db_clock.now(-30)
    ids = db.session.scalars(
        select(PendingSignup.id).where(
            PendingSignup.mail_sent_at.is_(None), PendingSignup.requested_at < grace
        )
    ).all()
    for pending_id in ids:
        enqueue_confirmation(pending_id)


def enqueue_manage_link(subscriber_id: int | None):
    """Queue the manage-link mail; ``None`` (an unknown address) queues a job that does nothing.

    Both cases cost the web request the same, so its timing reveals nothing.
    """
    return enqueue("mail", send_manage_link, subscriber_id, retry=MAIL_RETRY)


@job
def send_manage_link(subscriber_id: int | None) -> None:
    """Mail a subscriber their personal, expiring manage link."""
    subscriber = db.session.get(Subscriber, subscriber_id) if subscriber_id is not None else None
    if subscriber is None:
        return  # an unknown address, or erased since: nothing to send
    mail = builders.manage_mail(
        subscriber.email, tokens.manage_url(subscriber), subscriber.language
    )
    smtp.send(mail, f"manage link for subscriber {subscriber_id}")
    log.info("subscriber %s: manage link sent", subscriber_id)
