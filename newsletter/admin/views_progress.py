"""The progress bar's JSON, polled every second by the campaign page while it sends."""

from __future__ import annotations

from newsletter import progress as progress_service
from newsletter.admin.labels import status_label
from newsletter.admin.views_editor import campaign_or_404


def progress(campaign_id: int):
    found = progress_service.progress_of(campaign_or_404(campaign_id))
    return {**found, "status_label": status_label(found["status"])}
