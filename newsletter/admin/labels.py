"""Words staff see for the service's values: campaign statuses, in the page's language."""

from __future__ import annotations

from flask_babel import lazy_gettext

STATUS_LABELS = {
    "draft": lazy_gettext("draft"),
    "scheduled": lazy_gettext("scheduled"),
    "sending": lazy_gettext("sending"),
    "paused": lazy_gettext("paused"),
    "sent": lazy_gettext("sent"),
    "cancelled": lazy_gettext("cancelled"),
}


def status_label(value: str) -> str:
    label = STATUS_LABELS.get(value)
    return str(label) if label is not None else value
