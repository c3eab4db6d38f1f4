"""Deferred deliveries: readers a server asked us to try again later (4xx), or blocked.

Each due row is tried under a lease of its own; the campaign row counts the outcomes.
Retries are few, so a retry run sends one at a time, over one connection of the same
kind as a batch's (``mail.connections``), by the same ``policy``.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from flask import current_app
from sqlalchemy import and_, delete, or_, select, update

from newsletter import db_clock
from newsletter.extensions import db
from newsletter.mail import smtp
from newsletter.models import CampaignStatus
from newsletter.queue import enqueue, job
from newsletter.sending import policy
from newsletter.sending.pacing import batch_timeout
from newsletter.sending.run import PAGE_SIZE, Run, Stop, erase_undeliverable
from newsletter.sending.tables import campaign_table, deferred_table, subscriber_table
from newsletter.sending.totals import finish_if_done

log = logging.getLogger(__name__)


def retry_deferred() -> None:
    """Enqueue a retry job for each sending campaign with deferred messages now due."""
    now = db_clock.now()
    due = db.session.scalars(
        select(deferred_table.c.campaign_id)
        .distinct()
        .join(campaign_table, campaign_table.c.id == deferred_table.c.campaign_id)
        .where(
            campaign_table.c.status == CampaignStatus.SENDING,
            deferred_table.c.next_attempt_at <= now,
            or_(deferred_table.c.lease_until.is_(None), deferred_table.c.lease_until < now),
        )
    ).all()
    db.session.rollback()
    slot = int(time.time() // current_app.config["TICK_INTERVAL"])
    for campaign_id in due:
        enqueue(
            "send",
            send_deferred,
            campaign_id,
            job_id=f"deferred-{campaign_id}-{slot}",
            timeout=batch_timeout(),
        )


@job
def send_deferred(campaign_id: int) -> None:
    """Try the due deferred messages of one campaign again, each under its own lease."""
    status = db.session.scalar(
        select(campaign_table.c.status).where(campaign_table.c.id == campaign_id)
    )
    if status != CampaignStatus.SENDING:
        return
    run = DeferredRun(campaign_id)
    try:
        run.open()
        while run.send_next():
            pass
    except smtp.Unreachable as exc:
        log.warning("campaign %s: SMTP server unreachable (%s); retry later", campaign_id, exc)
        return
    except Stop as exc:
        log.info("campaign %s: retries stopped: %s", campaign_id, exc)
        return
    finally:
        run.dispose()
    finish_if_done(campaign_id)


class DeferredRun(Run):
    """Retries of 4xx answers and blocks; ``policy`` says what each answer does, and the
    campaign row counts the readers who are done."""

    def __init__(self, campaign_id: int) -> None:
        super().__init__(campaign_id)
        self.row_id: int | None = None
        self.lease_until = None  # the row's lease_until as this run set it: the lease token

    def send_next(self) -> bool:
        """Claim and send one due deferred message; return False when none is left."""
        self.check()
        now = db_clock.now()
        candidates = self.db.scalars(
            select(deferred_table.c.id)
            .where(
                deferred_table.c.campaign_id == self.campaign_id,
                deferred_table.c.next_attempt_at <= now,
                or_(deferred_table.c.lease_until.is_(None), deferred_table.c.lease_until < now),
            )
            .order_by(deferred_table.c.id)
            .limit(PAGE_SIZE)
        ).all()
        self.db.rollback()
        for row_id in candidates:
            until = self._lease_until()
            claimed = self.db.execute(
                update(deferred_table)
                .where(
                    deferred_table.c.id == row_id,
                    or_(deferred_table.c.lease_until.is_(None), deferred_table.c.lease_until < now),
                )
                .values(lease_until=until)
            )
            self.db.commit()
            if claimed.rowcount == 1:
                self.row_id, self.lease_until = row_id, until
                self._send(row_id)
                self.row_id = self.lease_until = None
                return True
        return False

    def _lease_until(self) -> datetime:
        """The end of a lease taken now, by the database's clock.

        A value, not an expression: it is also this run's token for the row.
        """
        return db_clock.read(self.db) + timedelta(seconds=self.lease)

    def _ours(self):
        """The WHERE clause of a write to the claimed row: only while this run holds it."""
        return and_(
            deferred_table.c.id == self.row_id, deferred_table.c.lease_until == self.lease_until
        )

    def renew(self) -> None:
        if self.row_id is None:
            return
        until = self._lease_until()
        result = self.db.execute(
            update(deferred_table).where(self._ours()).values(lease_until=until)
        )
        self.db.commit()
        if result.rowcount != 1:
            self.row_id = None  # nothing of it is ours to give back
            raise Stop("lease lost to another run")
        self.lease_until = until

    def _send(self, row_id: int) -> None:
        self.wait_for_rate()  # first: then the read below is as fresh as it can be
        row = self.db.execute(
            select(
                deferred_table.c.attempts,
                subscriber_table.c.id,
                subscriber_table.c.email,
                subscriber_table.c.token_key,
                subscriber_table.c.language,
            )
            .join(subscriber_table, subscriber_table.c.id == deferred_table.c.subscriber_id)
            .where(deferred_table.c.id == row_id)
        ).first()
        self.db.rollback()
        if row is None:
            return  # the subscriber left; the row went with them
        [result] = self.render_and_deliver([row])
        if isinstance(result, Exception):
            self.raise_for(result)
        outcome, reply = result
        rule = policy.for_retry(outcome, row.attempts)
        if rule.retry is not None:
            attempts = row.attempts + 1
            values = {"attempts": attempts, "next_attempt_at": policy.next_attempt(rule, attempts)}
            if rule.pause is None:
                values["lease_until"] = None  # given back now; a pause gives it back below
            self.db.execute(update(deferred_table).where(self._ours()).values(**values))
            self.db.commit()
        elif rule.count is not None:
            self._count(row.id, rule.count, rule.erase)
        if rule.pause is not None:
            self.pause(rule, outcome, reply)
            self.stopped()
            raise Stop(outcome.value)

    def _count(self, subscriber_id: int, count: str, erase: bool) -> None:
        """The reader is done: delete their row and count them in the campaign's ``count``."""
        counter = campaign_table.c[count]
        with db.engine.begin() as transaction:
            # Counted only by the run that still held the row: one whose lease ran out
            # while the server answered must not count what the next run counts again.
            ours = transaction.execute(delete(deferred_table).where(self._ours())).rowcount == 1
            if ours:
                transaction.execute(
                    update(campaign_table)
                    .where(campaign_table.c.id == self.campaign_id)
                    .values({counter: counter + 1})
                )
        if ours and erase:
            erase_undeliverable(subscriber_id)

    def stopped(self) -> None:
        if self.row_id is not None:
            self.db.execute(update(deferred_table).where(self._ours()).values(lease_until=None))
            self.db.commit()
