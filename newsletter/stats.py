"""Counts without addresses: monthly tallies (confirmations, erasures, exports) and the
current number of subscribers and pending sign-ups.
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from newsletter.extensions import db
from newsletter.models import PendingSignup, Subscriber, Tally, utcnow


def tally(kind: str, amount: int = 1) -> None:
    """Add to this month's count of ``kind`` inside the caller's transaction."""
    month = utcnow().strftime("%Y-%m")
    dialect = postgresql if db.session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(Tally).values(month=month, kind=kind, count=amount)
    statement = statement.on_conflict_do_update(
        index_elements=[Tally.month, Tally.kind], set_={"count": Tally.count + amount}
    )
    db.session.execute(statement)


def monthly(kinds: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Return ``{month: {kind: count}}``, oldest month first."""
    query = select(Tally).order_by(Tally.month)
    if kinds:
        query = query.where(Tally.kind.in_(kinds))
    result: dict[str, dict[str, int]] = {}
    for row in db.session.scalars(query):
        result.setdefault(row.month, {})[row.kind] = row.count
    return result


def audience() -> dict[str, int]:
    """How many subscribers there are, and how many sign-ups await confirmation."""
    return {
        "subscribers": db.session.scalar(select(func.count(Subscriber.id))) or 0,
        "pending_signups": db.session.scalar(select(func.count(PendingSignup.id))) or 0,
    }
