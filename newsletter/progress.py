"""Where a campaign stands, as staff watch it: sending progress and the booked slot."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from newsletter import campaigns, db_clock
from newsletter.extensions import db
from newsletter.models import Campaign, CampaignStatus

# Statuses in which a campaign may still send: the progress bar keeps updating.
LIVE_STATUSES = (CampaignStatus.SCHEDULED, CampaignStatus.SENDING, CampaignStatus.PAUSED)


def progress_of(campaign: Campaign) -> dict:
    """Status and totals as the progress bar shows them."""
    totals = campaigns.totals(campaign)
    done = totals["sent"] + totals["failed"] + totals.get("unknown", 0)
    recipients = totals["recipients"]
    percent = 100 if campaign.status == CampaignStatus.SENT else 0
    if recipients:
        percent = min(100, int(done * 100 / recipients))
    return {
        "id": campaign.id,
        "status": campaign.status.value,
        "status_reason": campaign.status_reason,
        "recipients": recipients,
        "sent": totals["sent"],
        "failed": totals["failed"],
        "unknown": totals.get("unknown", 0),
        "bounced": totals.get("bounced", 0),
        "complaints": totals.get("complaints", 0),
        "done": done,
        "percent": percent,
        "finished": campaign.status not in LIVE_STATUSES,
        "seconds_to_send": (
            max(0, int((campaign.send_at - db_clock.read()).total_seconds()))
            if campaign.status == CampaignStatus.SCHEDULED and campaign.send_at is not None
            else 0
        ),
    }


def scheduled_for(moment: datetime) -> Campaign | None:
    """The campaign scheduled to go out at ``moment`` (e.g. the next monthly slot), if any."""
    return db.session.scalar(
        select(Campaign).where(
            Campaign.status == CampaignStatus.SCHEDULED, Campaign.send_at == moment
        )
    )
