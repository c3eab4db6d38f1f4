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

from flask import current_app

from newsletter import bounces, sending, subscriptions
from newsletter.extensions import db, get_redis
from newsletter.queue import enqueue, job

BOUNCE_POLL_INTERVAL = 300  # seconds between two polls of the bounce mailbox
_BOUNCE_POLL_DUE = "nl:bounces:poll-due"


@job
def poll_bounces() -> None:
    """Read the bounce mailbox (BOUNCE_IMAP_URL) and act on what is there."""
    bounces.poll_imap()


def enqueue_bounce_poll() -> None:
    """With BOUNCE_IMAP_URL, start a poll every BOUNCE_POLL_INTERVAL (not every tick).

    The poll is a job of its own on the mail queue, so a slow IMAP server never holds up
    the tick; ``poll_imap`` takes a lock, so two polls never handle one message twice.
    """
    if not current_app.config.get("BOUNCE_IMAP_URL"):
        return
    if get_redis().set(_BOUNCE_POLL_DUE, "1", nx=True, ex=BOUNCE_POLL_INTERVAL):
        enqueue("mail", poll_bounces, job_id="bounce-poll", timeout=600)


TASKS = (
    subscriptions.requeue_unsent_confirmations,
    subscriptions.purge_expired,
    enqueue_bounce_poll,
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
