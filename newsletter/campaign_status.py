"""The campaign status machine: which moves are allowed, and the one UPDATE that makes them.

Every write to a campaign row that depends on its status goes through ``change``: a
single conditional UPDATE (``WHERE status IN allowed AND ...``). Of two racing callers
(two ticks, a marketer and a batch run) exactly one changes the row; the other learns
that it did not and decides what that means. Nothing else writes ``Campaign.status``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from sqlalchemy import CursorResult, update

from newsletter.extensions import db
from newsletter.models import Campaign, CampaignStatus, utcnow

DRAFT, SCHEDULED, SENDING, PAUSED, SENT, CANCELLED = (
    CampaignStatus.DRAFT,
    CampaignStatus.SCHEDULED,
    CampaignStatus.SENDING,
    CampaignStatus.PAUSED,
    CampaignStatus.SENT,
    CampaignStatus.CANCELLED,
)

# Where each status may move. Scheduling again is a move to the same status; a campaign
# paused before it started (found overdue) may be scheduled again.
TRANSITIONS: dict[CampaignStatus, frozenset[CampaignStatus]] = {
    DRAFT: frozenset({SCHEDULED}),
    SCHEDULED: frozenset({SCHEDULED, SENDING, PAUSED, CANCELLED}),
    SENDING: frozenset({PAUSED, SENT, CANCELLED}),
    PAUSED: frozenset({SENDING, SCHEDULED, CANCELLED}),
    SENT: frozenset(),
    CANCELLED: frozenset(),
}

campaign_table = Campaign.__table__


def change(
    campaign_id: int,
    allowed: Iterable[CampaignStatus],
    *conditions,
    to: CampaignStatus | None = None,
    connection=None,
    **values,
) -> bool:
    """Write ``values`` (and status ``to``) only while the campaign's status is ``allowed``.

    ``conditions`` narrow the WHERE clause further. The statement runs on ``connection``
    or the session; the caller commits. Returns whether the row changed.
    """
    allowed = tuple(allowed)
    if to is not None:
        for status in allowed:
            if to not in TRANSITIONS[status]:
                raise ValueError(f"a campaign cannot move from {status.value} to {to.value}")
        values["status"] = to
    values.setdefault("updated_at", utcnow())
    statement = (
        update(campaign_table)
        .where(
            campaign_table.c.id == campaign_id, campaign_table.c.status.in_(allowed), *conditions
        )
        .values(**values)
    )
    result = cast(CursorResult, (connection or db.session).execute(statement))
    return result.rowcount == 1
