"""The monthly send slot, e.g. ``first tue 10:00 Europe/Berlin``.

The slot is wall-clock time in its own zone, so daylight-saving changes never move it:
10:00 in Berlin is 08:00 UTC in summer and 09:00 UTC in winter.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ORDINALS = {"first": 1, "second": 2, "third": 3, "fourth": 4, "last": -1}
WEEKDAYS = {
    name: index for index, name in enumerate(["mon", "tue", "wed", "thu", "fri", "sat", "sun"])
}
_SLOT = re.compile(
    r"^\s*(?:(?P<ordinal>first|second|third|fourth|last)\s+(?P<weekday>mon|tue|wed|thu|fri|sat|sun)"
    r"|(?P<day>\d{1,2}))\s+(?P<hour>\d{1,2}):(?P<minute>\d{2})\s+(?P<zone>\S+)\s*$",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class MonthlySlot:
    """One moment a month: an ordinal weekday or a day of the month, a time and a zone."""

    at: time
    zone: ZoneInfo
    ordinal: int | None = None
    weekday: int | None = None
    day: int | None = None

    @classmethod
    def parse(cls, text: str) -> MonthlySlot:
        match = _SLOT.match(text)
        if not match:
            raise ValueError(
                f"{text!r} is not a slot; write e.g. 'first tue 10:00 Europe/Berlin' "
                "or '1 09:30 UTC' (ordinal first..fourth or last, weekday mon..sun)"
            )
        hour, minute = int(match["hour"]), int(match["minute"])
        if hour > 23 or minute > 59:
            raise ValueError(f"{hour:02d}:{minute:02d} is not a time of day")
        try:
            zone = ZoneInfo(match["zone"])
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{match['zone']!r} is not a known time zone") from None
        if match["day"]:
            day = int(match["day"])
            if not 1 <= day <= 28:
                raise ValueError("a day-of-month slot must be 1..28, so that every month has it")
            return cls(at=time(hour, minute), zone=zone, day=day)
        return cls(
            at=time(hour, minute),
            zone=zone,
            ordinal=ORDINALS[match["ordinal"].lower()],
            weekday=WEEKDAYS[match["weekday"].lower()],
        )

    def day_in(self, year: int, month: int) -> date:
        if self.day is not None:
            return date(year, month, self.day)
        assert self.ordinal is not None and self.weekday is not None
        days = [
            d
            for d in range(1, calendar.monthrange(year, month)[1] + 1)
            if date(year, month, d).weekday() == self.weekday
        ]
        return date(year, month, days[self.ordinal - 1] if self.ordinal > 0 else days[-1])

    def in_month(self, year: int, month: int) -> datetime:
        """Return this month's slot as an aware UTC datetime."""
        local = datetime.combine(self.day_in(year, month), self.at, tzinfo=self.zone)
        return local.astimezone(UTC)

    def next_after(self, moment: datetime) -> datetime:
        """Return the first slot strictly after ``moment`` (an aware datetime)."""
        local = moment.astimezone(self.zone)
        year, month = local.year, local.month
        for _ in range(3):
            candidate = self.in_month(year, month)
            if candidate > moment:
                return candidate
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        raise AssertionError("unreachable: a slot exists every month")  # pragma: no cover

    def __str__(self) -> str:
        when = (
            str(self.day)
            if self.day is not None
            else f"{[k for k, v in ORDINALS.items() if v == self.ordinal][0]} "
            f"{[k for k, v in WEEKDAYS.items() if v == self.weekday][0]}"
        )
        return f"{when} {self.at:%H:%M} {self.zone.key}"


def parse_send_at(value) -> datetime | str | None:
    """Read a send time as the API and the CLI take it.

    ``None`` (the next monthly slot), ``"now"``, or ISO 8601 with a UTC offset. Raises
    ValueError with a message for the person who typed it.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError('Give an ISO 8601 time with offset, or "now".')
    if value.strip().lower() == "now":
        return "now"
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            'Not an ISO 8601 time; write e.g. "2026-12-01T10:00:00+01:00" or "now".'
        ) from None
    if moment.tzinfo is None:
        raise ValueError("The time has no UTC offset; add one, e.g. +01:00 or Z.")
    return moment


def parse_local_time(value: str, zone_name: str) -> datetime:
    """Read a wall-clock time (a form's ``datetime-local``) in ``zone_name`` as aware.

    Raises ValueError with a message for staff: for a bad value, an unknown zone, or a
    wall time that does not exist there (skipped by a daylight-saving change).
    """
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError("Choose a time zone from the list.") from None
    try:
        naive = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("Enter a date and time, e.g. 2026-12-01 10:00.") from None
    if naive.tzinfo is not None:
        raise ValueError("Enter the time without an offset and choose its zone.")
    local = naive.replace(tzinfo=zone)
    if local.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        raise ValueError(
            f"{naive:%H:%M} does not exist on {naive:%d %b %Y} in {zone.key} "
            "(the clocks skip it); choose another time."
        )
    return local
