"""Sign-up, confirmation and erasure: the subscriber's life cycle.

Every function here answers the same way for known and unknown addresses; whether
there is anything to do is decided later, inside a job, where no visitor can time it.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import cast

from flask import current_app
from flask_babel import gettext
from sqlalchemy import delete, select, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError

from newsletter import addresses, consent, i18n, jobs, stats, tokens
from newsletter.extensions import db
from newsletter.models import PendingPurpose, PendingSignup, Subscriber, utcnow

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
    jobs.enqueue_confirmation(pending.id)


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
        pending.requested_at = utcnow()
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
            confirmed_at=utcnow(),
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
        .values(email=email, email_changed_at=utcnow())
        .execution_options(synchronize_session=False)
    )


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


# --- unsubscribe, erasure and self-service (GDPR Art. 15, 16, 17, 20) ------------------


def unsubscribe_url(subscriber: Subscriber) -> str:
    """The personal unsubscribe link every newsletter carries.

    It names the subscription's random ``token_key``, not the address, and does not
    expire: it works until the subscriber is gone and never for a later subscription.
    """
    return tokens.url(tokens.Purpose.UNSUBSCRIBE, subscriber.token_key)


def manage_url(subscriber: Subscriber) -> str:
    """The personal, expiring link to the manage page (MANAGE_MAX_AGE)."""
    return tokens.url(tokens.Purpose.MANAGE, subscriber.token_key)


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


def erase(subscriber: Subscriber, reason: str) -> None:
    """Delete the subscriber and everything tied to them, and count it (without the address).

    Campaign bookkeeping and pending address changes go with the row (ON DELETE CASCADE);
    unconfirmed sign-ups of the same address go too, since the person asked us to forget
    the address. ``reason`` names the route: unsubscribe, manage, staff, undeliverable.
    """
    subscriber_id, email = subscriber.id, subscriber.email
    _delete(delete(PendingSignup).where(PendingSignup.email == email))
    deleted = _delete(delete(Subscriber).where(Subscriber.id == subscriber_id))
    if deleted:
        stats.tally(f"erased_{reason}")
    db.session.commit()
    erase_traces()
    if deleted:
        log.info("subscriber %s erased (%s)", subscriber_id, reason)


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
    jobs.enqueue_manage_link(subscriber_id)


def subscriber_for_manage_token(token: str) -> Subscriber | None:
    """Return the subscriber behind a manage link, None if gone; raise for bad or old links."""
    key = tokens.read(tokens.Purpose.MANAGE, token)
    return db.session.scalar(select(Subscriber).where(Subscriber.token_key == key))


def _iso(moment) -> str | None:
    return moment.isoformat() if moment is not None else None


def pending_address_change(subscriber: Subscriber) -> PendingSignup | None:
    return db.session.scalar(
        select(PendingSignup).where(
            PendingSignup.subscriber_id == subscriber.id,
            PendingSignup.purpose == PendingPurpose.CHANGE_EMAIL,
        )
    )


def export_data(subscriber: Subscriber) -> dict:
    """Everything we hold about the subscriber, machine-readable (Art. 15, 20)."""
    from newsletter.models import DeferredDelivery

    consent_text = subscriber.consent_text
    change = pending_address_change(subscriber)
    with i18n.force_locale(subscriber.language):
        about = gettext(
            "All data the newsletter holds about you, as a JSON file (Art. 15 and 20 GDPR)."
        )
    deferred = db.session.scalars(
        select(DeferredDelivery)
        .where(DeferredDelivery.subscriber_id == subscriber.id)
        .order_by(DeferredDelivery.id)
    ).all()
    config = current_app.config
    return {
        "about": about,
        "email": subscriber.email,
        "language": subscriber.language,
        "requested_at": _iso(subscriber.requested_at),
        "confirmed_at": _iso(subscriber.confirmed_at),
        "email_changed_at": _iso(subscriber.email_changed_at),
        "ip_prefix": subscriber.ip_prefix,
        "consent": {
            "language": consent_text.language,
            "version": consent_text.version,
            "text": consent_text.text,
            "sha256": consent_text.sha256,
        },
        "pending_address_change": (
            {"email": change.email, "requested_at": _iso(change.requested_at)} if change else None
        ),
        "pending_deliveries": [
            {
                "campaign_id": row.campaign_id,
                "attempts": row.attempts,
                "next_attempt_at": _iso(row.next_attempt_at),
            }
            for row in deferred
        ],
        "controller": {
            "name": config["CONTROLLER_NAME"],
            "address": config["CONTROLLER_ADDRESS"],
            "email": config["CONTROLLER_EMAIL"],
        },
        "exported_at": _iso(utcnow()),
    }


def record_export() -> None:
    """Count a served access request (no address)."""
    stats.tally("exported")
    db.session.commit()


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
    jobs.enqueue_confirmation(pending.id)
    log.info("subscriber %s asked to change the address (pending %s)", subscriber.id, pending.id)
