"""Times as staff plan them: in the monthly slot's zone, or a zone they choose."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo, available_timezones

from flask import current_app

from newsletter import i18n
from newsletter.slots import MonthlySlot

# Offered first in the editor's zone list; all the others follow.
COMMON_ZONES = (
    "UTC",
    "Europe/Berlin",
    "Europe/London",
    "Europe/Paris",
    "America/New_York",
    "America/Chicago",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
)


def slot() -> MonthlySlot:
    return MonthlySlot.parse(current_app.config["MONTHLY_SLOT"])


# In the tz database but no place anyone plans a send in ("Factory" names no zone;
# "localtime" is whatever the server is set to).
NOT_ZONES = {"Factory", "localtime"}


def zone_choices() -> list[str]:
    return sorted(available_timezones() - NOT_ZONES)


def localtime(moment: datetime | None, zone: str | None = None) -> str:
    """Show a UTC time in the slot's zone (what staff plan in), with the zone named."""
    if moment is None:
        return "–"
    tz = ZoneInfo(zone) if zone else slot().zone
    return i18n.format_datetime(moment, tz, "weekday")
