"""Finishing campaigns: totals into the campaign row, bookkeeping deleted, live totals.

The bookkeeping (batches, deferred deliveries) lives only while a campaign sends; when
it ends, the totals move to the campaign row and the bookkeeping is deleted.
"""

from __future__ import annotations

import logging

from sqlalchemy import and_, delete, exists, func, or_, select

from newsletter import campaign_status, db_clock
from newsletter.extensions import db
from newsletter.models import BatchStatus, Campaign, CampaignStatus
from newsletter.sending.tables import batch_table, campaign_table, deferred_table

log = logging.getLogger(__name__)


def finish_campaigns() -> None:
    """Finish sending campaigns with nothing left; settle cancelled ones."""
    sending = db.session.scalars(
        select(campaign_table.c.id).where(campaign_table.c.status == CampaignStatus.SENDING)
    ).all()
    cancelled = db.session.scalars(
        select(campaign_table.c.id)
        .where(campaign_table.c.status == CampaignStatus.CANCELLED)
        .where(
            or_(
                exists().where(batch_table.c.campaign_id == campaign_table.c.id),
                exists().where(deferred_table.c.campaign_id == campaign_table.c.id),
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
        .where(batch_table.c.campaign_id == campaign_id)
        .scalar_subquery()
    )


def _close_books(campaign_id: int, status, *conditions, **values) -> bool:
    """Add the batch counters to the campaign row and delete the bookkeeping, once.

    One conditional UPDATE, if ``conditions`` hold; ``finished_at IS NULL`` is the guard
    against a second caller: on PostgreSQL one that waited for the row lock re-checks
    only the row, while its sums still see the deleted batches.
    """
    closed = campaign_status.change(
        campaign_id,
        (status,),
        campaign_table.c.finished_at.is_(None),
        *conditions,
        sent=campaign_table.c.sent + _sum(batch_table.c.sent, campaign_id),
        failed=campaign_table.c.failed + _sum(batch_table.c.failed, campaign_id),
        unknown=campaign_table.c.unknown + _sum(batch_table.c.unknown, campaign_id),
        finished_at=db_clock.now(),
        **values,
    )
    if not closed:
        db.session.rollback()
        return False
    db.session.execute(delete(batch_table).where(batch_table.c.campaign_id == campaign_id))
    db.session.execute(delete(deferred_table).where(deferred_table.c.campaign_id == campaign_id))
    db.session.commit()
    return True


def finish_if_done(campaign_id: int) -> bool:
    """Mark the campaign sent once every batch is done and no retry is left.

    The totals move to the campaign row and the bookkeeping is deleted in the same
    transaction; the conditional UPDATE lets exactly one of several callers do it.
    """
    finished = _close_books(
        campaign_id,
        CampaignStatus.SENDING,
        ~exists().where(
            batch_table.c.campaign_id == campaign_id, batch_table.c.status != BatchStatus.DONE
        ),
        ~exists().where(deferred_table.c.campaign_id == campaign_id),
        to=CampaignStatus.SENT,
    )
    if finished:
        log.info("campaign %s sent", campaign_id)
    return finished


def settle_cancelled(campaign_id: int) -> bool:
    """Keep the totals of a cancelled campaign and delete its bookkeeping.

    Waits while a batch still holds a live lease: that run stops within a second or so
    and its last checkpoint should count. The status stays cancelled, so only
    ``finished_at IS NULL`` keeps a second, concurrent caller from adding the sums again.
    """
    live = and_(
        batch_table.c.campaign_id == campaign_id,
        batch_table.c.status == BatchStatus.RUNNING,
        batch_table.c.lease_until >= db_clock.now(),
    )
    settled = _close_books(campaign_id, CampaignStatus.CANCELLED, ~exists().where(live))
    if settled:
        log.info("campaign %s cancelled; bookkeeping deleted", campaign_id)
    return settled


def live_totals(campaign: Campaign) -> dict[str, int]:
    """Recipients, sent, failed and unknown so far: stored totals plus the running batches."""
    sent, failed, unknown = db.session.execute(
        select(
            func.coalesce(func.sum(batch_table.c.sent), 0),
            func.coalesce(func.sum(batch_table.c.failed), 0),
            func.coalesce(func.sum(batch_table.c.unknown), 0),
        ).where(batch_table.c.campaign_id == campaign.id)
    ).one()
    row = db.session.execute(
        select(
            campaign_table.c.recipients,
            campaign_table.c.sent,
            campaign_table.c.failed,
            campaign_table.c.unknown,
            campaign_table.c.bounced,
            campaign_table.c.complaints,
        ).where(campaign_table.c.id == campaign.id)
    ).one()
    return {
        "recipients": row.recipients,
        "sent": row.sent + sent,
        "failed": row.failed + failed,
        "unknown": row.unknown + unknown,
        # Bounces and complaints arrive by mail, later; they count on the campaign row.
        "bounced": row.bounced,
        "complaints": row.complaints,
    }
