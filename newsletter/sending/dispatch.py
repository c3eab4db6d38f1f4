"""Starting campaigns: fan-out into batches, enqueueing, and finding lost batches again.

The tick starts due campaigns with a conditional UPDATE (two ticks never start one
twice) and splits the subscribers into ``SendBatch`` rows over id ranges; only after the
commit are the batch jobs enqueued, ids only. A batch nobody holds (its job lost with an
emptied Redis, or its worker killed) is enqueued again once its lease runs out.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from flask import current_app
from sqlalchemy import and_, bindparam, func, insert, or_, select, update

from newsletter import campaign_status, db_clock
from newsletter.extensions import db
from newsletter.models import BatchStatus, Campaign, CampaignStatus
from newsletter.queue import enqueue, enqueue_new, job
from newsletter.sending.batches import send_batch
from newsletter.sending.pacing import batch_timeout
from newsletter.sending.tables import batch_table, campaign_table, deferred_table, subscriber_table
from newsletter.sending.totals import finish_if_done

log = logging.getLogger(__name__)


def _requeue_grace() -> timedelta:
    """How long a fresh batch job may wait before the tick asks Redis for it again."""
    return timedelta(seconds=current_app.config["TICK_INTERVAL"])


def _overdue():
    """Scheduled before this, by the database's clock, a campaign waits for a person."""
    return Campaign.send_at < db_clock.now(-current_app.config["OVERDUE_LIMIT"])


def start_due_campaigns() -> None:
    """Start every scheduled campaign whose time has come; pause long-overdue ones."""
    due = db.session.execute(
        select(Campaign.id, _overdue())
        .where(Campaign.status == CampaignStatus.SCHEDULED, Campaign.send_at <= db_clock.now())
        .order_by(Campaign.send_at)
    ).all()
    db.session.rollback()
    for campaign_id, overdue in due:
        _start_or_pause(campaign_id, overdue)


def enqueue_start(campaign_id: int) -> None:
    """Start one due campaign within seconds instead of at the next tick ("send now").

    Raises Redis's errors when it is unreachable; the tick starts the campaign later.
    """
    enqueue("tick", start_campaign, campaign_id, job_id=f"start-{campaign_id}", timeout=300)


@job
def start_campaign(campaign_id: int) -> None:
    """Start one campaign if it is due, as the tick would (and pause it if long overdue)."""
    overdue = db.session.scalar(
        select(_overdue()).where(
            Campaign.id == campaign_id,
            Campaign.status == CampaignStatus.SCHEDULED,
            Campaign.send_at <= db_clock.now(),
        )
    )
    db.session.rollback()
    if overdue is not None:
        _start_or_pause(campaign_id, overdue)


def _start_or_pause(campaign_id: int, overdue: bool) -> None:
    if overdue:
        _pause_overdue(campaign_id)
    else:
        start(campaign_id)


def _pause_overdue(campaign_id: int) -> None:
    reason = (
        "Not sent: the service was not running at the scheduled time, and sending this late "
        "needs a person's decision. Resume to send now, or schedule a new time."
    )
    paused = campaign_status.change(
        campaign_id,
        (CampaignStatus.SCHEDULED,),
        _overdue(),
        to=CampaignStatus.PAUSED,
        status_reason=reason,
    )
    db.session.commit()
    if paused:
        log.warning("campaign %s was overdue and is paused for a person to decide", campaign_id)


def start(campaign_id: int) -> bool:
    """Move a due campaign to sending and fan it out into batch jobs, once.

    The conditional UPDATE lets only one caller through; the batches are committed in
    the same transaction, then enqueued. Due, started and the first leases are the
    database's time.
    """
    now = db_clock.read()
    claimed = campaign_status.change(
        campaign_id,
        (CampaignStatus.SCHEDULED,),
        campaign_table.c.started_at.is_(None),
        campaign_table.c.send_at <= now,
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
        update(campaign_table)
        .where(campaign_table.c.id == campaign_id)
        .values(recipients=recipients)
    )
    db.session.commit()
    pending = db.session.execute(
        select(batch_table.c.id, batch_table.c.attempts).where(
            batch_table.c.campaign_id == campaign_id
        )
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
        select(subscriber_table.c.id)
        .where(subscriber_table.c.id > after_id)
        .order_by(subscriber_table.c.id)
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
        db.session.execute(insert(batch_table), rows)
    return total


def _job_id(batch_id: int, attempts: int) -> str:
    # The attempt number makes a re-enqueue after a lost lease a new job, while asking
    # again for a batch whose job still waits in Redis is refused as a duplicate.
    return f"batch-{batch_id}-{attempts}"


def _enqueue_new(pending) -> None:
    """Enqueue fresh batch jobs in one Redis round trip."""
    calls = [((batch_id,), _job_id(batch_id, attempts)) for batch_id, attempts in pending]
    enqueue_new("send", send_batch, calls, batch_timeout())


def _enqueue_again(batch_id: int, attempts: int) -> None:
    """Enqueue a batch unless its job still waits; a failed job's id is freed first."""
    enqueue(
        "send", send_batch, batch_id, job_id=_job_id(batch_id, attempts), timeout=batch_timeout()
    )


def recover_batches() -> None:
    """Enqueue again the batches of sending campaigns that nobody holds.

    That is a queued batch whose job may be lost (Redis emptied) and a running batch whose
    lease ran out (its worker was killed). A job that still waits is not duplicated.
    """
    now = db_clock.now()
    orphans = db.session.execute(
        select(batch_table.c.id, batch_table.c.attempts)
        .join(campaign_table, campaign_table.c.id == batch_table.c.campaign_id)
        .where(
            campaign_table.c.status == CampaignStatus.SENDING,
            batch_table.c.status != BatchStatus.DONE,
            or_(batch_table.c.lease_until.is_(None), batch_table.c.lease_until < now),
        )
        .order_by(batch_table.c.id)
    ).all()
    db.session.rollback()
    for batch_id, attempts in orphans:
        _enqueue_again(batch_id, attempts)


def resume_batches(campaign_id: int) -> None:
    """Enqueue again the unfinished batches and retries of a campaign a person resumed.

    ``campaigns.resume`` has moved it from paused to sending; one that never started is
    scheduled there instead and never comes here.
    """
    now = db_clock.read()
    # A batch released by the pause is queued; free it from any backoff, then enqueue.
    db.session.execute(
        update(batch_table)
        .where(batch_table.c.campaign_id == campaign_id, batch_table.c.status == BatchStatus.QUEUED)
        .values(lease_until=now + _requeue_grace())
    )
    db.session.execute(
        update(deferred_table)
        .where(deferred_table.c.campaign_id == campaign_id)
        .values(lease_until=None)
    )
    db.session.commit()
    waiting = db.session.execute(
        select(batch_table.c.id, batch_table.c.attempts).where(
            batch_table.c.campaign_id == campaign_id,
            or_(
                batch_table.c.status == BatchStatus.QUEUED,
                and_(batch_table.c.status == BatchStatus.RUNNING, batch_table.c.lease_until < now),
            ),
        )
    ).all()
    db.session.rollback()
    for batch_id, attempts in waiting:
        _enqueue_again(batch_id, attempts)
    finish_if_done(campaign_id)
    log.info("campaign %s resumed: %d batches enqueued", campaign_id, len(waiting))
