"""Sending a campaign: fan-out into batches, the batch jobs, and the tick tasks behind them.

The database drives everything. The tick starts due campaigns with a conditional UPDATE
(two ticks never start one twice) and splits the subscribers into ``SendBatch`` rows over
id ranges; only after the commit are the batch jobs enqueued. A batch job takes a lease
on its row, sends over one SMTP connection and moves the row's cursor past a subscriber
only after the SMTP server answered for them, in one transaction with the counters and
the lease. A killed worker's lease runs out and the tick enqueues the batch again, so the
next worker resumes after the cursor: nobody is skipped, and at most the message that
was in flight goes out twice.

The bookkeeping (batches, deferred deliveries) lives only while a campaign sends; when it
ends, the totals move to the campaign row and the bookkeeping is deleted.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import socket
import time
from datetime import timedelta
from typing import NoReturn

from flask import current_app
from sqlalchemy import and_, bindparam, delete, exists, func, insert, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from newsletter import campaign_status, erasure, tokens
from newsletter.extensions import db, get_redis
from newsletter.mail import builders, smtp
from newsletter.mail.smtp import Outcome
from newsletter.models import (
    BatchStatus,
    Campaign,
    CampaignStatus,
    DeferredDelivery,
    SendBatch,
    Subscriber,
    utcnow,
)
from newsletter.queue import enqueue, enqueue_new, job

log = logging.getLogger(__name__)

PAGE_SIZE = 100  # subscribers read per query inside a batch
STATUS_CHECK_SECONDS = 1.0  # how often a running batch looks whether it was paused or cancelled

campaigns = Campaign.__table__
batches = SendBatch.__table__
deferred = DeferredDelivery.__table__
subscribers = Subscriber.__table__


class _Stop(Exception):
    """The batch must stop now (paused, cancelled, lost its lease, server gone)."""


# --- starting a campaign ----------------------------------------------------------------


def _requeue_grace() -> timedelta:
    """How long a fresh batch job may wait before the tick asks Redis for it again."""
    return timedelta(seconds=current_app.config["TICK_INTERVAL"])


def start_due_campaigns() -> None:
    """Start every scheduled campaign whose time has come; pause long-overdue ones."""
    due = db.session.execute(
        select(Campaign.id, Campaign.send_at)
        .where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.send_at <= utcnow())
        .order_by(Campaign.send_at)
    ).all()
    db.session.rollback()
    for campaign_id, send_at in due:
        _start_or_pause(campaign_id, send_at)


def enqueue_start(campaign_id: int) -> None:
    """Start one due campaign within seconds instead of at the next tick ("send now").

    Raises Redis's errors when it is unreachable; the tick starts the campaign later.
    """
    enqueue("tick", start_campaign, campaign_id, job_id=f"start-{campaign_id}", timeout=300)


@job
def start_campaign(campaign_id: int) -> None:
    """Start one campaign if it is due, as the tick would (and pause it if long overdue)."""
    send_at = db.session.scalar(
        select(Campaign.send_at).where(
            Campaign.id == campaign_id,
            Campaign.status == CampaignStatus.SCHEDULED,
            Campaign.send_at <= utcnow(),
        )
    )
    db.session.rollback()
    if send_at is not None:
        _start_or_pause(campaign_id, send_at)


def _start_or_pause(campaign_id: int, send_at) -> None:
    overdue = utcnow() - timedelta(seconds=current_app.config["OVERDUE_LIMIT"])
    if send_at < overdue:
        _pause_overdue(campaign_id, overdue)
    else:
        start(campaign_id)


def _pause_overdue(campaign_id: int, overdue) -> None:
    reason = (
        "Not sent: the service was not running at the scheduled time, and sending this late "
        "needs a person's decision. Resume to send now, or schedule a new time."
    )
    paused = campaign_status.change(
        campaign_id,
        (CampaignStatus.SCHEDULED,),
        campaigns.c.send_at < overdue,
        to=CampaignStatus.PAUSED,
        status_reason=reason,
    )
    db.session.commit()
    if paused:
        log.warning("campaign %s was overdue and is paused for a person to decide", campaign_id)


def start(campaign_id: int) -> bool:
    """Move a due campaign to sending and fan it out into batch jobs, once.

    The conditional UPDATE lets only one caller through; the batches are committed in
    the same transaction, then enqueued.
    """
    now = utcnow()
    claimed = campaign_status.change(
        campaign_id,
        (CampaignStatus.SCHEDULED,),
        campaigns.c.started_at.is_(None),
        campaigns.c.send_at <= now,
        to=CampaignStatus.SENDING,
        status_reason=None,
        started_at=now,
        finished_at=None,
        updated_at=now,
        recipients=0,
        sent=0,
        failed=0,
        unknown=0,
    )
    if not claimed:
        db.session.rollback()
        return False
    started = time.monotonic()
    recipients = _fan_out(campaign_id, now + _requeue_grace())
    db.session.execute(
        update(campaigns).where(campaigns.c.id == campaign_id).values(recipients=recipients)
    )
    db.session.commit()
    pending = db.session.execute(
        select(batches.c.id, batches.c.attempts).where(batches.c.campaign_id == campaign_id)
    ).all()
    db.session.rollback()
    _enqueue_new(pending)
    log.info(
        "campaign %s started: %d recipients in %d batches (%.2f s)",
        campaign_id,
        recipients,
        len(pending),
        time.monotonic() - started,
    )
    if not pending:
        finish_if_done(campaign_id)
    return True


def _fan_out(campaign_id: int, not_before) -> int:
    """Insert the batch rows over subscriber id ranges; return the number of recipients.

    Keyset windows of BATCH_SIZE ids: the database returns only each window's bounds and
    count, so the subscriber list is never loaded.
    """
    size = current_app.config["BATCH_SIZE"]
    after_id = bindparam("after_id")
    window = (
        select(subscribers.c.id)
        .where(subscribers.c.id > after_id)
        .order_by(subscribers.c.id)
        .limit(size)
        .subquery()
    )
    bounds = select(func.min(window.c.id), func.max(window.c.id), func.count())
    rows, total, after = [], 0, 0
    while True:
        first, last, count = db.session.execute(bounds, {"after_id": after}).one()
        if not count:
            break
        rows.append(
            {
                "campaign_id": campaign_id,
                "first_id": first,
                "last_id": last,
                "cursor": first - 1,
                "status": BatchStatus.QUEUED,
                "lease_until": not_before,
                "attempts": 0,
                "sent": 0,
                "failed": 0,
                "unknown": 0,
            }
        )
        total += count
        after = last
    if rows:
        db.session.execute(insert(batches), rows)
    return total


def _job_id(batch_id: int, attempts: int) -> str:
    # The attempt number makes a re-enqueue after a lost lease a new job, while asking
    # again for a batch whose job still waits in Redis is refused as a duplicate.
    return f"batch-{batch_id}-{attempts}"


def _batch_timeout() -> int:
    rate = current_app.config["SEND_RATE"]
    size = current_app.config["BATCH_SIZE"]
    return 600 + (math.ceil(2 * size / rate) if rate else 0)


def _enqueue_new(pending) -> None:
    """Enqueue fresh batch jobs in one Redis round trip."""
    calls = [((batch_id,), _job_id(batch_id, attempts)) for batch_id, attempts in pending]
    enqueue_new("send", send_batch, calls, _batch_timeout())


def _enqueue_again(batch_id: int, attempts: int) -> None:
    """Enqueue a batch unless its job still waits; a failed job's id is freed first."""
    enqueue(
        "send", send_batch, batch_id, job_id=_job_id(batch_id, attempts), timeout=_batch_timeout()
    )


# --- the batch job --------------------------------------------------------------------


def _owner() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(4)}"


def _lease_until():
    return utcnow() + timedelta(seconds=current_app.config["SEND_LEASE"])


@job
def send_batch(batch_id: int) -> None:
    """Send one batch, resuming after its cursor; exit quietly when it is not ours to send."""
    owner = _owner()
    now = utcnow()
    claimed = db.session.execute(
        update(batches)
        .where(
            batches.c.id == batch_id,
            or_(
                batches.c.status == BatchStatus.QUEUED,
                and_(batches.c.status == BatchStatus.RUNNING, batches.c.lease_until < now),
            ),
            exists().where(
                campaigns.c.id == batches.c.campaign_id,
                campaigns.c.status == CampaignStatus.SENDING,
            ),
        )
        .values(
            status=BatchStatus.RUNNING,
            lease_owner=owner,
            lease_until=_lease_until(),
            attempts=batches.c.attempts + 1,
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


class _Sender:
    """What the batch job and the deferred-retry job share: the edition, the SMTP
    connection, a database connection of its own, the rate limit and the status look.

    The per-message statements go through one Core connection instead of the ORM session:
    that costs about a quarter as much per message. Each of them is a single statement,
    so the connection autocommits (no BEGIN/COMMIT round trips); the rare outcomes that
    write two rows use a transaction of their own. On PostgreSQL its commits do not wait
    for the disk (``synchronous_commit off``): a database crash could then lose the last
    fraction of a second of checkpoints, which resends those messages and loses nobody; a
    worker crash loses nothing, since the server has the commit.
    """

    def __init__(self, campaign_id: int) -> None:
        self.campaign_id = campaign_id
        campaign = db.session.get(Campaign, campaign_id)
        self.template = builders.edition_template(campaign.subject, campaign.html, campaign.text)
        db.session.rollback()
        self.db = db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        self.postgresql = self.db.dialect.name == "postgresql"
        if self.postgresql:
            self.db.exec_driver_sql("SET synchronous_commit TO off")
        self.rate = current_app.config["SEND_RATE"]
        self.lease = current_app.config["SEND_LEASE"]
        self.next_check = 0.0
        self.smtp = smtp.Session()

    def dispose(self) -> None:
        """Close the SMTP connection and hand the database connection back, as it was."""
        self.close()
        try:
            if self.postgresql:
                self.db.exec_driver_sql("RESET synchronous_commit")
        finally:
            self.db.close()

    # -- the connection

    def open(self) -> None:
        """Connect; a refused login or failed TLS pauses the campaign (retrying won't help)."""
        try:
            self.smtp.open()
        except smtp.SetupFailed as exc:
            self._setup_failed(exc)

    def close(self) -> None:
        self.smtp.close()

    def render_and_deliver(self, subscriber) -> tuple[Outcome, str]:
        """Render the reader's copy and deliver it; an address SMTP cannot carry fails.

        Such an address (say a non-ASCII local part, without SMTPUTF8) fails the same way
        on every try: counted as failed, it no longer stops the batch again and again.
        """
        try:
            mail = self.template.render(
                subscriber.email, {"unsubscribe_url": tokens.unsubscribe_url(subscriber)}
            )
        except ValueError:
            log.warning("subscriber %s: address cannot be sent to; counted failed", subscriber.id)
            return Outcome.FAILED, "address cannot be sent to"
        return self.deliver(mail)

    def deliver(self, mail: builders.OutgoingMail) -> tuple[Outcome, str]:
        """Hand one message to the server (reconnecting if need be) and sort its answer."""
        try:
            return self.smtp.deliver(mail)
        except smtp.SetupFailed as exc:
            self._setup_failed(exc)

    def _setup_failed(self, exc: smtp.SetupFailed) -> NoReturn:
        self._pause(_SETUP_REASON.format(error=exc), "SMTP setup failed")
        self.stopped()
        raise _Stop("SMTP setup failed") from None

    # -- pacing and status

    def wait_for_rate(self) -> None:
        """Hold SEND_RATE messages per second across all workers (a Redis counter per window)."""
        if not self.rate:
            return
        window = max(1.0, 1.0 / self.rate)
        allowance = max(1, round(self.rate * window))
        redis = get_redis()
        while True:
            now = time.time()
            slot = int(now // window)
            key = f"nl:send-rate:{slot}"
            with redis.pipeline() as pipe:
                pipe.incr(key)
                pipe.expire(key, math.ceil(window) + 1)
                count = pipe.execute()[0]
            if count <= allowance:
                return
            time.sleep(max(0.001, (slot + 1) * window - time.time()))
            self.check()

    def check(self, force: bool = False) -> None:
        """At least once a second: stop when the campaign is no longer sending."""
        if not force and time.monotonic() < self.next_check:
            return
        self.next_check = time.monotonic() + STATUS_CHECK_SECONDS
        status = self.db.scalar(
            select(campaigns.c.status).where(campaigns.c.id == self.campaign_id)
        )
        self.db.rollback()
        if status != CampaignStatus.SENDING:
            self.stopped()
            raise _Stop(f"campaign {status}")
        self.renew()

    def stopped(self) -> None:
        """Give back what this run holds so that others can take it."""

    def renew(self) -> None:
        """Extend this run's lease."""

    def pause(self, outcome: Outcome, reply: str) -> None:
        """A policy block or a refused sender address: pause for a person to look at."""
        self._pause(_PAUSE_REASONS[outcome].format(reply=reply), outcome.value)

    def _pause(self, reason: str, label: str) -> None:
        campaign_status.change(
            self.campaign_id,
            (CampaignStatus.SENDING,),
            to=CampaignStatus.PAUSED,
            status_reason=reason[:500],
            connection=self.db,
        )
        self.db.commit()
        log.warning("campaign %s paused: %s", self.campaign_id, label)


_SETUP_REASON = (
    "Could not secure or log in to the connection to the mail server ({error}). Check "
    "MAIL_USE_TLS, MAIL_USE_SSL, MAIL_USERNAME and MAIL_PASSWORD, then resume."
)

_PAUSE_REASONS = {
    Outcome.BLOCKED: (
        "The mail server refused by policy ({reply}). Check the sending setup and "
        "reputation, then resume."
    ),
    Outcome.SENDER: (
        "The mail server refused our sender address ({reply}). Check the sender address "
        "(MAIL_DEFAULT_SENDER) and its domain's DNS, then resume."
    ),
}


class BatchRun(_Sender):
    """One worker's run over one leased batch."""

    def __init__(self, batch_id: int, owner: str) -> None:
        row = db.session.execute(select(batches).where(batches.c.id == batch_id)).one()
        db.session.rollback()
        super().__init__(row.campaign_id)
        self.batch_id = batch_id
        self.owner = owner
        self.cursor = row.cursor
        self.last_id = row.last_id
        self._checkpoint = (
            update(batches)
            .where(batches.c.id == batch_id, batches.c.lease_owner == owner)
            .values(
                cursor=bindparam("new_cursor"),
                sent=batches.c.sent + bindparam("add_sent"),
                failed=batches.c.failed + bindparam("add_failed"),
                unknown=batches.c.unknown + bindparam("add_unknown"),
                lease_until=bindparam("until"),
            )
        )
        self._page = (
            select(subscribers.c.id, subscribers.c.email, subscribers.c.token_key)
            .where(subscribers.c.id > bindparam("after"), subscribers.c.id <= self.last_id)
            .order_by(subscribers.c.id)
            .limit(PAGE_SIZE)
        )
        self._fresh = select(subscribers.c.id, subscribers.c.email, subscribers.c.token_key).where(
            subscribers.c.id == bindparam("sid")
        )

    def send(self) -> None:
        try:
            self.open()
            self._send_pages()
        except smtp.Unreachable as exc:
            self.release(delay=self.lease)
            log.warning("batch %s: SMTP server unreachable (%s); retry later", self.batch_id, exc)
            return
        except _Stop as exc:
            log.info("batch %s stopped: %s", self.batch_id, exc)
            return
        finally:
            self.close()
        done = self.db.execute(
            update(batches)
            .where(batches.c.id == self.batch_id, batches.c.lease_owner == self.owner)
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
        if outcome is Outcome.SENT:
            self._advance(subscriber.id, sent=1)
        elif outcome is Outcome.UNKNOWN:
            self._advance(subscriber.id, unknown=1)
        elif outcome is Outcome.DEFERRED:
            # The retry row and the checkpoint commit together: nobody lost, nobody twice.
            # A lost lease raises inside the block, which rolls the retry row back.
            with db.engine.begin() as transaction:
                _defer(transaction, self.campaign_id, subscriber.id, utcnow() + _retry_delay(1))
                self._advance(subscriber.id, connection=transaction)
        elif outcome is Outcome.NO_MAILBOX:
            self._advance(subscriber.id, failed=1)
            _erase_undeliverable(subscriber.id)
        elif outcome is Outcome.BLOCKED:
            # The reader moves to the retries (due at once, tried again after a resume) and
            # the cursor moves on: a resume must not meet this reader first and stop again.
            with db.engine.begin() as transaction:
                _defer(transaction, self.campaign_id, subscriber.id, utcnow())
                self._advance(subscriber.id, connection=transaction)
            self.pause(outcome, reply)
            self.release()
            raise _Stop(outcome.value)
        elif outcome is Outcome.SENDER:
            # Our own address was refused: nothing is wrong with this reader, who is sent
            # to first when the campaign is resumed.
            self.pause(outcome, reply)
            self.release()
            raise _Stop(outcome.value)
        else:
            self._advance(subscriber.id, failed=1)

    def _advance(
        self, subscriber_id: int, sent: int = 0, failed: int = 0, unknown: int = 0, connection=None
    ):
        """Move the checkpoint past ``subscriber_id``: counters and lease in one statement.

        Raises _Stop when another worker took the lease; inside ``connection``'s transaction
        that rolls back whatever the transaction wrote with it.
        """
        result = (connection or self.db).execute(
            self._checkpoint,
            {
                "new_cursor": subscriber_id,
                "add_sent": sent,
                "add_failed": failed,
                "add_unknown": unknown,
                "until": _lease_until(),
            },
        )
        self.db.commit()
        if result.rowcount != 1:
            raise _Stop("lease lost to another worker")
        self.cursor = subscriber_id

    def renew(self) -> None:
        result = self.db.execute(
            update(batches)
            .where(batches.c.id == self.batch_id, batches.c.lease_owner == self.owner)
            .values(lease_until=_lease_until())
        )
        self.db.commit()
        if result.rowcount != 1:
            raise _Stop("lease lost to another worker")

    def stopped(self) -> None:
        self.release()

    def release(self, delay: float | None = None) -> None:
        """Hand the batch back: queued, to be enqueued again by the tick or a resume."""
        self.db.execute(
            update(batches)
            .where(batches.c.id == self.batch_id, batches.c.lease_owner == self.owner)
            .values(
                status=BatchStatus.QUEUED,
                lease_owner=None,
                lease_until=utcnow() + timedelta(seconds=delay) if delay else None,
            )
        )
        self.db.commit()


def _defer(connection, campaign_id: int, subscriber_id: int, when) -> None:
    """Insert a retry row; one that already exists for this reader stays as it is."""
    dialect_insert = postgresql_insert if connection.dialect.name == "postgresql" else sqlite_insert
    connection.execute(
        dialect_insert(deferred)
        .values(
            campaign_id=campaign_id, subscriber_id=subscriber_id, attempts=1, next_attempt_at=when
        )
        .on_conflict_do_nothing(index_elements=["campaign_id", "subscriber_id"])
    )


def _retry_delay(attempts: int) -> timedelta:
    base = current_app.config["SEND_RETRY_DELAY"]
    return timedelta(seconds=base * 2 ** (attempts - 1))


def _erase_undeliverable(subscriber_id: int) -> None:
    """A 5.1.1/5.1.10 answer about the recipient: the address does not exist; let it go."""
    subscriber = db.session.get(Subscriber, subscriber_id)
    if subscriber is not None:
        erasure.erase(subscriber, "undeliverable")


# --- deferred deliveries (4xx) -----------------------------------------------------------


def retry_deferred() -> None:
    """Enqueue a retry job for each sending campaign with deferred messages now due."""
    now = utcnow()
    due = db.session.scalars(
        select(deferred.c.campaign_id)
        .distinct()
        .join(campaigns, campaigns.c.id == deferred.c.campaign_id)
        .where(
            campaigns.c.status == CampaignStatus.SENDING,
            deferred.c.next_attempt_at <= now,
            or_(deferred.c.lease_until.is_(None), deferred.c.lease_until < now),
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
            timeout=_batch_timeout(),
        )


@job
def send_deferred(campaign_id: int) -> None:
    """Try the due deferred messages of one campaign again, each under its own lease."""
    if db.session.scalar(select(campaigns.c.status).where(campaigns.c.id == campaign_id)) != (
        CampaignStatus.SENDING
    ):
        return
    run = DeferredRun(campaign_id)
    try:
        run.open()
        while run.send_next():
            pass
    except smtp.Unreachable as exc:
        log.warning("campaign %s: SMTP server unreachable (%s); retry later", campaign_id, exc)
        return
    except _Stop as exc:
        log.info("campaign %s: retries stopped: %s", campaign_id, exc)
        return
    finally:
        run.dispose()
    finish_if_done(campaign_id)


class DeferredRun(_Sender):
    """Retries of 4xx answers; the campaign row counts their outcomes."""

    def __init__(self, campaign_id: int) -> None:
        super().__init__(campaign_id)
        self.row_id: int | None = None
        self.lease_until = None  # the row's lease_until as this run set it: the lease token

    def send_next(self) -> bool:
        """Claim and send one due deferred message; return False when none is left."""
        self.check()
        now = utcnow()
        candidates = self.db.scalars(
            select(deferred.c.id)
            .where(
                deferred.c.campaign_id == self.campaign_id,
                deferred.c.next_attempt_at <= now,
                or_(deferred.c.lease_until.is_(None), deferred.c.lease_until < now),
            )
            .order_by(deferred.c.id)
            .limit(PAGE_SIZE)
        ).all()
        self.db.rollback()
        for row_id in candidates:
            until = _lease_until()
            claimed = self.db.execute(
                update(deferred)
                .where(
                    deferred.c.id == row_id,
                    or_(deferred.c.lease_until.is_(None), deferred.c.lease_until < now),
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

    def _ours(self):
        """The WHERE clause of a write to the claimed row: only while this run holds it."""
        return and_(deferred.c.id == self.row_id, deferred.c.lease_until == self.lease_until)

    def renew(self) -> None:
        if self.row_id is None:
            return
        until = _lease_until()
        result = self.db.execute(update(deferred).where(self._ours()).values(lease_until=until))
        self.db.commit()
        if result.rowcount != 1:
            self.row_id = None  # nothing of it is ours to give back
            raise _Stop("lease lost to another run")
        self.lease_until = until

    def _send(self, row_id: int) -> None:
        self.wait_for_rate()  # first: then the read below is as fresh as it can be
        row = self.db.execute(
            select(
                deferred.c.attempts, subscribers.c.id, subscribers.c.email, subscribers.c.token_key
            )
            .join(subscribers, subscribers.c.id == deferred.c.subscriber_id)
            .where(deferred.c.id == row_id)
        ).first()
        self.db.rollback()
        if row is None:
            return  # the subscriber left; the row went with them
        outcome, reply = self.render_and_deliver(row)
        if outcome is Outcome.DEFERRED and row.attempts < current_app.config["SEND_RETRY_ATTEMPTS"]:
            self.db.execute(
                update(deferred)
                .where(self._ours())
                .values(
                    attempts=row.attempts + 1,
                    next_attempt_at=utcnow() + _retry_delay(row.attempts + 1),
                    lease_until=None,
                )
            )
            self.db.commit()
            return
        last_try = row.attempts >= current_app.config["SEND_RETRY_ATTEMPTS"]
        if outcome is Outcome.SENDER or (outcome is Outcome.BLOCKED and not last_try):
            if outcome is Outcome.BLOCKED:  # a block counts as a try: it ends as failed
                self.db.execute(
                    update(deferred)
                    .where(self._ours())
                    .values(attempts=row.attempts + 1, next_attempt_at=utcnow())
                )
            self.pause(outcome, reply)
            self.stopped()
            raise _Stop(outcome.value)
        counter = {
            Outcome.SENT: campaigns.c.sent,
            Outcome.UNKNOWN: campaigns.c.unknown,
        }.get(outcome, campaigns.c.failed)
        with db.engine.begin() as transaction:
            # Counted only by the run that still held the row: one whose lease ran out
            # while the server answered must not count what the next run counts again.
            ours = transaction.execute(delete(deferred).where(self._ours())).rowcount == 1
            if ours:
                transaction.execute(
                    update(campaigns)
                    .where(campaigns.c.id == self.campaign_id)
                    .values({counter: counter + 1})
                )
        if ours and outcome is Outcome.NO_MAILBOX:
            _erase_undeliverable(row.id)

    def stopped(self) -> None:
        if self.row_id is not None:
            self.db.execute(update(deferred).where(self._ours()).values(lease_until=None))
            self.db.commit()


# --- recovery, finishing, totals ---------------------------------------------------------


def recover_batches() -> None:
    """Enqueue again the batches of sending campaigns that nobody holds.

    That is a queued batch whose job may be lost (Redis emptied) and a running batch whose
    lease ran out (its worker was killed). A job that still waits is not duplicated.
    """
    now = utcnow()
    orphans = db.session.execute(
        select(batches.c.id, batches.c.attempts)
        .join(campaigns, campaigns.c.id == batches.c.campaign_id)
        .where(
            campaigns.c.status == CampaignStatus.SENDING,
            batches.c.status != BatchStatus.DONE,
            or_(batches.c.lease_until.is_(None), batches.c.lease_until < now),
        )
        .order_by(batches.c.id)
    ).all()
    db.session.rollback()
    for batch_id, attempts in orphans:
        _enqueue_again(batch_id, attempts)


def finish_campaigns() -> None:
    """Finish sending campaigns with nothing left; settle cancelled ones."""
    sending = db.session.scalars(
        select(campaigns.c.id).where(campaigns.c.status == CampaignStatus.SENDING)
    ).all()
    cancelled = db.session.scalars(
        select(campaigns.c.id)
        .where(campaigns.c.status == CampaignStatus.CANCELLED)
        .where(
            or_(
                exists().where(batches.c.campaign_id == campaigns.c.id),
                exists().where(deferred.c.campaign_id == campaigns.c.id),
            )
        )
    ).all()
    db.session.rollback()
    for campaign_id in sending:
        finish_if_done(campaign_id)
    for campaign_id in cancelled:
        settle_cancelled(campaign_id)


def _sum(column, campaign_id: int):
    return (
        select(func.coalesce(func.sum(column), 0))
        .where(batches.c.campaign_id == campaign_id)
        .scalar_subquery()
    )


def _totals_into_campaign(campaign_id: int, status, *conditions, **values) -> bool:
    """One UPDATE that adds the batch counters to the campaign row, if ``conditions`` hold."""
    return campaign_status.change(
        campaign_id,
        (status,),
        campaigns.c.finished_at.is_(None),
        *conditions,
        sent=campaigns.c.sent + _sum(batches.c.sent, campaign_id),
        failed=campaigns.c.failed + _sum(batches.c.failed, campaign_id),
        unknown=campaigns.c.unknown + _sum(batches.c.unknown, campaign_id),
        finished_at=utcnow(),
        **values,
    )


def _delete_bookkeeping(campaign_id: int) -> None:
    db.session.execute(delete(batches).where(batches.c.campaign_id == campaign_id))
    db.session.execute(delete(deferred).where(deferred.c.campaign_id == campaign_id))


def finish_if_done(campaign_id: int) -> bool:
    """Mark the campaign sent once every batch is done and no retry is left.

    The totals move to the campaign row and the bookkeeping is deleted in the same
    transaction; the conditional UPDATE lets exactly one of several callers do it.
    ``finished_at IS NULL`` is that guard: on PostgreSQL a caller that waited for the
    row lock re-checks only the row, while its sums still see the deleted batches.
    """
    finished = _totals_into_campaign(
        campaign_id,
        CampaignStatus.SENDING,
        ~exists().where(batches.c.campaign_id == campaign_id, batches.c.status != BatchStatus.DONE),
        ~exists().where(deferred.c.campaign_id == campaign_id),
        to=CampaignStatus.SENT,
    )
    if not finished:
        db.session.rollback()
        return False
    _delete_bookkeeping(campaign_id)
    db.session.commit()
    log.info("campaign %s sent", campaign_id)
    return True


def settle_cancelled(campaign_id: int) -> bool:
    """Keep the totals of a cancelled campaign and delete its bookkeeping.

    Waits while a batch still holds a live lease: that run stops within a second or so
    and its last checkpoint should count. The status stays cancelled, so only
    ``finished_at IS NULL`` keeps a second, concurrent caller from adding the sums again.
    """
    now = utcnow()
    live = and_(
        batches.c.campaign_id == campaign_id,
        batches.c.status == BatchStatus.RUNNING,
        batches.c.lease_until >= now,
    )
    settled = _totals_into_campaign(campaign_id, CampaignStatus.CANCELLED, ~exists().where(live))
    if not settled:
        db.session.rollback()
        return False
    _delete_bookkeeping(campaign_id)
    db.session.commit()
    log.info("campaign %s cancelled; bookkeeping deleted", campaign_id)
    return True


def live_totals(campaign: Campaign) -> dict[str, int]:
    """Recipients, sent, failed and unknown so far: stored totals plus the running batches."""
    sent, failed, unknown = db.session.execute(
        select(
            func.coalesce(func.sum(batches.c.sent), 0),
            func.coalesce(func.sum(batches.c.failed), 0),
            func.coalesce(func.sum(batches.c.unknown), 0),
        ).where(batches.c.campaign_id == campaign.id)
    ).one()
    row = db.session.execute(
        select(
            campaigns.c.recipients, campaigns.c.sent, campaigns.c.failed, campaigns.c.unknown
        ).where(campaigns.c.id == campaign.id)
    ).one()
    return {
        "recipients": row.recipients,
        "sent": row.sent + sent,
        "failed": row.failed + failed,
        "unknown": row.unknown + unknown,
    }


def resume_batches(campaign_id: int) -> None:
    """Enqueue again the unfinished batches and retries of a campaign a person resumed.

    ``campaigns.resume`` has moved it from paused to sending; one that never started is
    scheduled there instead and never comes here.
    """
    now = utcnow()
    # A batch released by the pause is queued; free it from any backoff, then enqueue.
    db.session.execute(
        update(batches)
        .where(batches.c.campaign_id == campaign_id, batches.c.status == BatchStatus.QUEUED)
        .values(lease_until=now + _requeue_grace())
    )
    db.session.execute(
        update(deferred).where(deferred.c.campaign_id == campaign_id).values(lease_until=None)
    )
    db.session.commit()
    waiting = db.session.execute(
        select(batches.c.id, batches.c.attempts).where(
            batches.c.campaign_id == campaign_id,
            or_(
                batches.c.status == BatchStatus.QUEUED,
                and_(batches.c.status == BatchStatus.RUNNING, batches.c.lease_until < now),
            ),
        )
    ).all()
    db.session.rollback()
    for batch_id, attempts in waiting:
        _enqueue_again(batch_id, attempts)
    finish_if_done(campaign_id)
    log.info("campaign %s resumed: %d batches enqueued", campaign_id, len(waiting))
