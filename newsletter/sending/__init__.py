"""Sending a campaign. The database drives everything; jobs carry ids only.

- ``dispatch``: start due campaigns (one conditional UPDATE each), fan them out into
  batches of subscriber ids, enqueue after the commit, recover lost batches, resume.
- ``batches``: the batch job, a leased run whose checkpoint moves only after the SMTP
  server answered.
- ``retries``: readers deferred by a 4xx (or a block), tried again under leases.
- ``policy``: what a run does with each SMTP outcome, one table for both kinds of run.
- ``totals``: finish a campaign (totals into its row, bookkeeping deleted), live totals.
- ``pacing``: SEND_RATE across all workers; ``run``: what both kinds of run share.

Services and the tick use the names below.
"""

from newsletter.sending.batches import send_batch
from newsletter.sending.dispatch import (
    enqueue_start,
    recover_batches,
    resume_batches,
    start,
    start_due_campaigns,
)
from newsletter.sending.retries import retry_deferred, send_deferred
from newsletter.sending.totals import (
    finish_campaigns,
    finish_if_done,
    live_totals,
    settle_cancelled,
)

__all__ = [
    "enqueue_start",
    "finish_campaigns",
    "finish_if_done",
    "live_totals",
    "recover_batches",
    "resume_batches",
    "retry_deferred",
    "send_batch",
    "send_deferred",
    "settle_cancelled",
    "start",
    "start_due_campaigns",
]
