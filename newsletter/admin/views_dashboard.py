"""The dashboard: subscriber counts by month, bounces and complaints, the next slot, campaigns."""

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
        # Readers erased this month because their mail bounced, or because they complained.
        bounced=stats.this_month("erased_bounced"),
        complaints=stats.this_month("erased_complaint"),
        next_slot=next_slot,
        slot_rule=str(times.slot()),
        slot_campaign=progress.scheduled_for(next_slot),
        upcoming=[c for c in recent if c.status == CampaignStatus.SCHEDULED],
        recent=[(c, campaigns.totals(c)) for c in recent],
    )
