"""Sign-up, confirmation and erasure: the subscriber's life cycle.

Every function here answers the same way for known and unknown addresses; whether
there is anything to do is decided later, inside a job, where no visitor can time it.
"""

from __future__ import annotations

from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from newsletter import addresses, consent, jobs, stats, tokens
from newsletter.extensions import db
from newsletter.models import PendingPurpose, PendingSignup, Subscriber, utcnow


class InvalidSignup(ValueError):
    """The form cannot be accepted; ``errors`` maps field names to messages."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(errors.values()))
        self.errors = errors


def request_signup(raw_email: str, consent_given: bool, remote_addr: str | None) -> None:
    """Record an unconfirmed sign-up and queue its confirmation mail.

    Known, pending and new addresses take the same path; the job finds out whether the
    address is already subscribed and then sends nothing.
    """
    errors = {}
    try:
        email = addresses.normalize(raw_email)
    except addresses.InvalidAddress as exc:
        errors["email"] = str(exc)
    if not consent_given:
        errors["consent"] = "Please tick the box to agree to receive the newsletter."
    if errors:
        raise InvalidSignup(errors)

    consent_text = consent.current()
    ip = addresses.ip_prefix(remote_addr) if current_app.config["STORE_IP_PREFIX"] else None
    pending = _upsert_pending(email, PendingPurpose.SUBSCRIBE, consent_text.id, ip, None)
    jobs.enqueue_confirmation(pending.id)


def _upsert_pending(
    email: str, purpose: PendingPurpose, consent_id: int | None, ip: str | None, subscriber_id
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
        pending.ip_prefix = ip
        pending.subscriber_id = subscriber_id
        pending.requested_at = utcnow()
        pending.mail_sent_at = None
        try:
            db.session.commit()
            return pending
        except IntegrityError:
            # The same address arrived twice at once; the other request created the row.
            db.session.rollback()
    raise RuntimeError("could not store the pending sign-up")  # pragma: no cover


def check_confirm_token(token: str) -> None:
    """Raise InvalidToken or ExpiredToken; change nothing (for the GET page)."""
    tokens.read(tokens.Purpose.CONFIRM, token)


def confirm(token: str) -> None:
    """Turn the pending sign-up behind ``token`` into a subscriber, once.

    A repeat (double click, or after an unsubscribe) finds no pending row and changes
    nothing: the caller shows the same "confirmed" page.
    """
    public_id = tokens.read(tokens.Purpose.CONFIRM, token)
    pending = db.session.scalar(select(PendingSignup).where(PendingSignup.public_id == public_id))
    if pending is None:
        return
    if pending.purpose == PendingPurpose.CHANGE_EMAIL:
        _apply_address_change(pending)
        return
    already = db.session.scalar(select(Subscriber.id).where(Subscriber.email == pending.email))
    if already is None:
        db.session.add(
            Subscriber(
                email=pending.email,
                requested_at=pending.requested_at,
                confirmed_at=utcnow(),
                consent_text_id=pending.consent_text_id,
                ip_prefix=pending.ip_prefix,
            )
        )
        stats.tally("confirmed")
    db.session.delete(pending)
    try:
        db.session.commit()
    except IntegrityError:
        # A concurrent click confirmed the same sign-up first: the outcome is the same.
        db.session.rollback()
    erase_traces()


def _apply_address_change(pending: PendingSignup) -> None:
    subscriber = db.session.get(Subscriber, pending.subscriber_id)
    taken = db.session.scalar(select(Subscriber.id).where(Subscriber.email == pending.email))
    if subscriber is not None and taken is None:
        subscriber.email = pending.email
        subscriber.email_changed_at = utcnow()
    db.session.delete(pending)
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
    erase_traces()


def purge_expired_pending() -> int:
    """Delete unconfirmed sign-ups older than CONFIRM_MAX_AGE; return how many."""
    cutoff = utcnow() - timedelta(seconds=current_app.config["CONFIRM_MAX_AGE"])
    result = db.session.execute(delete(PendingSignup).where(PendingSignup.requested_at < cutoff))
    db.session.commit()
    if result.rowcount:
        erase_traces()
    return result.rowcount


def erase_traces() -> None:
    """Flush SQLite's write-ahead log into the (secure-deleting) database file.

    With ``secure_delete`` the main file overwrites deleted rows, but the WAL still holds
    the frames that wrote them until a checkpoint.
    """
    engine = db.session.get_bind()
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
