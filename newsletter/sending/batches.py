"""The batch job: one worker's leased run over one batch of subscriber ids.

The run takes a lease on its ``SendBatch`` row and sends in groups: the next readers, one
per SMTP connection (``SMTP_CONNECTIONS``), go out at once. The row's cursor moves past
a group only after the SMTP server answered for each of its readers, in one statement
with the counters and the lease. A killed worker's lease runs out and the tick enqueues
the batch again, so the next worker resumes after the cursor: nobody is skipped, and at
most the group that was in flight (one message per connection) goes out twice.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket

from flask import current_app
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

    _columns = (
        subscriber_table.c.id,
        subscriber_table.c.email,
        subscriber_table.c.token_key,
        subscriber_table.c.language,  # which version of the edition they get
    )

    def __init__(self, batch_id: int, owner: str) -> None:
        row = db.session.execute(select(batch_table).where(batch_table.c.id == batch_id)).one()
        db.session.rollback()
        super().__init__(row.campaign_id, current_app.config["SMTP_CONNECTIONS"])
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
        # The same columns as ``_fresh``: a reader unchanged since the page was read is
        # the same row, and their copy rendered from it stands.
        self._page = (
            select(*self._columns)
            .where(
                subscriber_table.c.id > bindparam("after"), subscriber_table.c.id <= self.last_id
            )
            .order_by(subscriber_table.c.id)
            .limit(PAGE_SIZE)
        )
        self._readers: list = []  # the group under way, as re-read right before sending
        self._fresh = select(*self._columns).where(
            subscriber_table.c.id.in_(bindparam("sids", expanding=True))
        )

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
        """Send group after group; each group's copies are rendered while the one before
        is on the wire, and handed out only after that one's checkpoint."""
        under_way = None
        for rows in self._groups():
            rendered = {row.id: self.render(row) for row in rows}
            if under_way is not None:
                self._record(under_way, self._results())
                under_way = None
            self.check()
            for _ in rows:
                self.wait_for_rate()
            under_way = [row.id for row in rows]
            # Re-read right before sending, after waiting for the rate slots: who unsubscribed
            # a moment ago gets nothing more, and a changed address is the one written to.
            fresh = {row.id: row for row in self.db.execute(self._fresh, {"sids": under_way})}
            self._readers = [fresh[row.id] for row in rows if row.id in fresh]
            self.begin(
                [
                    rendered[reader.id] if reader == row else self.render(reader)
                    for row in rows
                    if (reader := fresh.get(row.id)) is not None
                ]
            )
        if under_way is not None:
            self._record(under_way, self._results())

    def _groups(self):
        """The batch's readers after the cursor, a group (one per connection) at a time."""
        after = self.cursor
        while True:
            page = self.db.execute(self._page, {"after": after}).all()
            self.db.rollback()
            if not page:
                return
            after = page[-1].id
            while page:
                size = self.smtp.count  # fewer when the relay refused some connections
                yield page[:size]
                page = page[size:]

    def _results(self) -> dict:
        """The outcome of each reader of the group under way (none: they had left)."""
        outcomes = self.collect()
        return {reader.id: outcome for reader, outcome in zip(self._readers, outcomes, strict=True)}

    def _record(self, ids: list[int], results: dict) -> None:
        """Checkpoint past the group and act on each answer as ``policy`` says.

        A reader who is not moved on (our sender refused, the connection could not be
        opened again) keeps the cursor before them when nobody after them in the group was
        moved on: sent first on the next run, as with one connection. Otherwise the cursor
        cannot leave that hole: they wait among the retries, due at once, no try counted.
        """
        counts = {"sent": 0, "failed": 0, "unknown": 0}
        retries: list[tuple[int, int, object]] = []  # (subscriber, tries so far, when due)
        erase, moved = [], []
        pause = error = None
        for sid in ids:
            result = results.get(sid)
            if result is None:  # left before their turn: nothing to send, nothing to count
                moved.append(True)
                continue
            if isinstance(result, Exception):
                error = error or result
                moved.append(False)
                continue
            outcome, reply = result
            rule = policy.RULES[outcome]
            if rule.retry is not None:
                retries.append((sid, 1, policy.next_attempt(rule, 1)))
            elif rule.count is not None:
                counts[rule.count] += 1
            if rule.erase:
                erase.append(sid)
            if rule.pause is not None and pause is None:
                pause = (rule, outcome, reply)
            moved.append(rule.retry is not None or rule.count is not None)
        last = max((i for i, done in enumerate(moved) if done), default=-1)
        retries += [(ids[i], 0, db_clock.now()) for i in range(last) if not moved[i]]
        if last >= 0:
            self._advance(ids[last], retries, **counts)
        for sid in erase:
            erase_undeliverable(sid)
        if pause is not None:
            self.pause(*pause)
            self.release()
            raise Stop(pause[1].value)
        if error is not None:
            self.raise_for(error)

    def _advance(
        self, subscriber_id: int, retries=(), sent: int = 0, failed: int = 0, unknown: int = 0
    ) -> None:
        """Move the checkpoint past ``subscriber_id``: counters and lease in one statement.

        With retry rows, they and the checkpoint commit together: nobody lost, nobody
        twice. Raises Stop when another worker took the lease, which rolls the retry
        rows back with it.
        """
        values = {
            "new_cursor": subscriber_id,
            "add_sent": sent,
            "add_failed": failed,
            "add_unknown": unknown,
        }
        if retries:
            with db.engine.begin() as transaction:
                for sid, attempts, when in retries:
                    _defer(transaction, self.campaign_id, sid, attempts, when)
                result = transaction.execute(self._checkpoint, values)
                if result.rowcount != 1:
                    raise Stop("lease lost to another worker")
        else:
            result = self.db.execute(self._checkpoint, values)
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


def _defer(connection, campaign_id: int, subscriber_id: int, attempts: int, when) -> None:
    """Insert a retry row; one that already exists for this reader stays as it is."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(
        dialect_insert(deferred_table)
        .values(
            campaign_id=campaign_id,
            subscriber_id=subscriber_id,
            attempts=attempts,
            next_attempt_at=when,
        )
        .on_conflict_do_nothing(index_elements=["campaign_id", "subscriber_id"])
    )
