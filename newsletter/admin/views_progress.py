"""The progress bar's JSON, polled every second by the campaign page while it sends."""

from __future__ import annotations

from newsletter import progress as progress_service
from newsletter.admin.views_editor import campaign_or_404


def progress(campaign_id: int):
    return progress_service.progress_of(campaign_or_404(campaign_id))
