"""The one erase: a subscriber and everything tied to them, gone for good.

A foundation, not part of ``subscriptions``: the sending code erases an address the
mail server says does not exist, and it sits below the services.
"""

from __future__ import annotations

import logging
from typing import cast

from sqlalchemy import delete
from sqlalchemy.engine import CursorResult

from newsletter import stats
from newsletter.extensions import db
from newsletter.models import PendingSignup, Subscriber

log = logging.getLogger(__name__)


def erase(subscriber: Subscriber, reason: str) -> None:
    """Delete the subscriber and everything tied to them, and count it (without the address).

    Campaign bookkeeping and pending address changes go with the row (ON DELETE CASCADE);
    unconfirmed sign-ups of the same address go too, since the person asked us to forget
    the address. ``reason`` names the route: unsubscribe, manage, staff, undeliverable.
    """
    subscriber_id, email = subscriber.id, subscriber.email
    db.session.execute(delete(PendingSignup).where(PendingSignup.email == email))
    result = cast(
        CursorResult, db.session.execute(delete(Subscriber).where(Subscriber.id == subscriber_id))
    )
    if result.rowcount:
        stats.tally(f"erased_{reason}")
    db.session.commit()
    erase_traces()
    if result.rowcount:
        log.info("subscriber %s erased (%s)", subscriber_id, reason)


def erase_traces() -> None:
    """Flush SQLite's write-ahead log into the (secure-deleting) database file.

    With ``secure_delete`` the main file overwrites deleted rows, but the WAL still holds
    the frames that wrote them until a checkpoint.
    """
    engine = db.session.get_bind()
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
