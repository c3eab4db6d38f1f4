"""The batch job: one worker's leased run over one batch of subscriber ids.

The run takes a lease on its ``SendBatch`` row, sends over one SMTP connection and moves
the row's cursor past a subscriber only after the SMTP server answered for them, in one
statement with the counters and the lease. A killed worker's lease runs out and the tick
enqueues the batch again, so the next worker resumes after the cursor: nobody is
skipped, and at most the message that was in flight goes out twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket

from sqlalchemy import and_, bindparam, exists, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from newsletter import db_clock
from newsletter.extensions import db
from newsletter.mail import smtp
from newsletter.models import BatchStatus, CampaignStatus
from newsletter.queue import job
from newsletter.sending import policy
from newsletter.sending.run import PAGE_SIZE, Run, Stop, erase_undeliverable, lease_until
from newsletter.sending.tables import batch_table, campaign_table, deferred_table, subscriber_table
from newsletter.sending.totals import finish_if_done

log = logging.getLogger(__name__)


def _owner() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


@job
def send_batch(batch_id: int) -> None:
    """Send one batch, resuming after its cursor; exit quietly when it is not ours to send."""
    owner = _owner()
    claimed = db.session.execute(
        update(batch_table)
        .where(
            batch_table.c.id == batch_id,
            or_(
                batch_table.c.status == BatchStatus.QUEUED,
                and_(
                    batch_table.c.status == BatchStatus.RUNNING,
                    batch_table.c.lease_until < db_clock.now(),
                ),
            ),
            exists().where(
                campaign_table.c.id == batch_table.c.campaign_id,
                campaign_table.c.status == CampaignStatus.SENDING,
            ),
        )
        .values(
            status=BatchStatus.RUNNING,
            lease_owner=owner,
            lease_until=lease_until(),
            attempts=batch_table.c.attempts + 1,
        )
    )
    db.session.commit()
    if claimed.rowcount != 1:
        return
    run = BatchRun(batch_id, owner)
    try:
        run.send()
    finally:
        run.dispose()


class BatchRun(Run):
    """One worker's run over one leased batch; ``policy`` says what each answer does."""

    def __init__(self, batch_id: int, owner: str) -> None:
        row = db.session.execute(select(batch_table).where(batch_table.c.id == batch_id)).one()
        db.session.rollback()
        super().__init__(row.campaign_id)
        self.batch_id = batch_id
        self.owner = owner
        self.cursor = row.cursor
        self.last_id = row.last_id
        self._checkpoint = (
            update(batch_table)
            .where(batch_table.c.id == batch_id, batch_table.c.lease_owner == owner)
            .values(
                cursor=bindparam("new_cursor"),
                sent=batch_table.c.sent + bindparam("add_sent"),
                failed=batch_table.c.failed + bindparam("add_failed"),
                unknown=batch_table.c.unknown + bindparam("add_unknown"),
                lease_until=lease_until(),
            )
        )
        self._page = (
            select(subscriber_table.c.id, subscriber_table.c.email, subscriber_table.c.token_key)
            .where(
                subscriber_table.c.id > bindparam("after"), subscriber_table.c.id <= self.last_id
            )
            .order_by(subscriber_table.c.id)
            .limit(PAGE_SIZE)
        )
        self._fresh = select(
            subscriber_table.c.id,
            subscriber_table.c.email,
            subscriber_table.c.token_key,
            subscriber_table.c.language,  # which version of the edition they get
        ).where(subscriber_table.c.id == bindparam("sid"))

    def send(self) -> None:
        try:
            self.open()
            self._send_pages()
        except smtp.Unreachable as exc:
            self.release(delay=self.lease)
            log.warning("batch %s: SMTP server unreachable (%s); retry later", self.batch_id, exc)
            return
        except Stop as exc:
            log.info("batch %s stopped: %s", self.batch_id, exc)
            return
        finally:
            self.close()
        done = self.db.execute(
            update(batch_table)
            .where(batch_table.c.id == self.batch_id, batch_table.c.lease_owner == self.owner)
            .values(status=BatchStatus.DONE, lease_owner=None, lease_until=None)
        )
        self.db.commit()
        if done.rowcount:
            log.info("batch %s done", self.batch_id)
            finish_if_done(self.campaign_id)

    def _send_pages(self) -> None:
        while True:
            page = self.db.execute(self._page, {"after": self.cursor}).all()
            self.db.rollback()
            if not page:
                return
            for subscriber in page:
                self.check()
                self._send_one(subscriber)

    def _send_one(self, subscriber) -> None:
        # Re-read right before sending, after waiting for a rate slot: who unsubscribed a
        # moment ago gets nothing more, and a changed address is the one written to.
        self.wait_for_rate()
        fresh = self.db.execute(self._fresh, {"sid": subscriber.id}).first()
        if fresh is None:
            self._advance(subscriber.id)
            return
        outcome, reply = self.render_and_deliver(fresh)
        rule = policy.RULES[outcome]
        if rule.retry is not None:
            # The retry row and the checkpoint commit together: nobody lost, nobody twice.
            # A lost lease raises inside the block, which rolls the retry row back.
            with db.engine.begin() as transaction:
                when = policy.next_attempt(rule, 1)
                _defer(transaction, self.campaign_id, subscriber.id, when)
                self._advance(subscriber.id, connection=transaction)
        elif rule.count is not None:
            self._advance(subscriber.id, **{rule.count: 1})
        if rule.erase:
            erase_undeliverable(subscriber.id)
        if rule.pause is not None:
            self.pause(rule, outcome, reply)
            self.release()
            raise Stop(outcome.value)

    def _advance(
        self, subscriber_id: int, sent: int = 0, failed: int = 0, unknown: int = 0, connection=None
    ):
        """Move the checkpoint past ``subscriber_id``: counters and lease in one statement.

        Raises Stop when another worker took the lease; inside ``connection``'s transaction
        that rolls back whatever the transaction wrote with it.
        """
        result = (connection or self.db).execute(
            self._checkpoint,
            {
                "new_cursor": subscriber_id,
                "add_sent": sent,
                "add_failed": failed,
                "add_unknown": unknown,
            },
        )
        self.db.commit()
        if result.rowcount != 1:
            raise Stop("lease lost to another worker")
        self.cursor = subscriber_id

    def renew(self) -> None:
        result = self.db.execute(
            update(batch_table)
            .where(batch_table.c.id == self.batch_id, batch_table.c.lease_owner == self.owner)
            .values(lease_until=lease_until())
        )
        self.db.commit()
        if result.rowcount != 1:
            raise Stop("lease lost to another worker")

    def stopped(self) -> None:
        self.release()

    def release(self, delay: float | None = None) -> None:
        """Hand the batch back: queued, to be enqueued again by the tick or a resume."""
        self.db.execute(
            update(batch_table)
            .where(batch_table.c.id == self.batch_id, batch_table.c.lease_owner == self.owner)
            .values(
                status=BatchStatus.QUEUED,
                lease_owner=None,
                lease_until=db_clock.now(delay) if delay else None,
            )
        )
        self.db.commit()


def _defer(connection, campaign_id: int, subscriber_id: int, when) -> None:
    """Insert a retry row; one that already exists for this reader stays as it is."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(
        dialect_insert(deferred_table)
        .values(
            campaign_id=campaign_id, subscriber_id=subscriber_id, attempts=1, next_attempt_at=when
        )
        .on_conflict_do_nothing(index_elements=["campaign_id", "subscriber_id"])
    )
