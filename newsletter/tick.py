"""The periodic tick: the database is the scheduler, and this is its clock.

Every worker enqueues the tick of the current time slot every TICK_INTERVAL; the job id
makes it one job however many ask, and asking again each interval means an emptied
Redis loses no schedule. Each task reads what is due from the database, so a tick that
runs twice, or late, does no harm.

The tasks run in this order (the order they had when they registered themselves):
sign-up upkeep first, then the campaigns: start what is due before retrying and
recovering, and finish last, so that a campaign whose last batch ended during this tick
is marked sent in the same tick.
"""

from __future__ import annotations

from newsletter import sending, subscriptions
from newsletter.extensions import db
from newsletter.queue import enqueue, job

TASKS = (
    subscriptions.requeue_unsent_confirmations,
    subscriptions.purge_expired,
    sending.start_due_campaigns,
    sending.retry_deferred,
    sending.recover_batches,
    sending.finish_campaigns,
)


def enqueue_tick(slot: int):
    """Enqueue the tick of one time slot; every worker asks, the job id makes it one."""
    return enqueue("tick", tick, job_id=f"tick-{slot}", timeout=300)


@job
def tick() -> None:
    """Do what is due: resend lost confirmation mails, expire sign-ups, drive campaigns."""
    for task in TASKS:
        task()
        db.session.remove()
