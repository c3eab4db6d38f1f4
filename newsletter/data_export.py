"""What we hold about a reader, as they may ask for it (GDPR Art. 15 access, Art. 20 portability).

The same export serves the reader's manage page, the staff's data requests and the CLI.
"""

from __future__ import annotations

from flask import current_app
from flask_babel import gettext
from sqlalchemy import select

from newsletter import i18n, stats
from newsletter.extensions import db
from newsletter.models import DeferredDelivery, PendingPurpose, PendingSignup, Subscriber, utcnow


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
        # Temporary delivery failures on editions in a row (BOUNCE_SOFT_LIMIT of them erase).
        "soft_bounces": {
            "in_a_row": subscriber.soft_bounces,
            "last_edition_id": subscriber.last_soft_bounce_campaign_id,
        },
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
