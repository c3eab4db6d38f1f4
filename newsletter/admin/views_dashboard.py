"""The dashboard: subscriber counts by month, the next slot, recent campaigns."""

from __future__ import annotations

from flask import render_template

from newsletter import campaigns, progress, stats, subscriptions
from newsletter.admin import times
from newsletter.models import CampaignStatus

RECENT_CAMPAIGNS = 5
DASHBOARD_MONTHS = 6


def dashboard():
    next_slot = campaigns.next_slot()
    recent = campaigns.list_all(limit=RECENT_CAMPAIGNS)
    return render_template(
        "admin/dashboard.html",
        subscribers=stats.subscribers(),
        history=stats.history(DASHBOARD_MONTHS),
        # Confirmation mails given up this month: the receiving server refused them.
        failed_confirmations=stats.this_month(subscriptions.CONFIRMATION_FAILED),
        next_slot=next_slot,
        slot_rule=str(times.slot()),
        slot_campaign=progress.scheduled_for(next_slot),
        upcoming=[c for c in recent if c.status == CampaignStatus.SCHEDULED],
        recent=[(c, campaigns.totals(c)) for c in recent],
    )
