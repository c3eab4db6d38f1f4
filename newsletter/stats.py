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


def this_month(kind: str) -> int:
    """This month's count of ``kind``."""
    return monthly([kind]).get(_last_months(1)[0], {}).get(kind, 0)


def history(months: int) -> list[dict]:
    """Confirmations and erasures per month for the last ``months`` months, newest first."""
    counts = monthly()
    rows = []
    for month in _last_months(months):
        kinds = counts.get(month, {})
        confirmed = kinds.get("confirmed", 0)
        erased = sum(n for kind, n in kinds.items() if kind.startswith("erased_"))
        rows.append(
            {"month": month, "confirmed": confirmed, "erased": erased, "change": confirmed - erased}
        )
    return rows


def _last_months(count: int) -> list[str]:
    now = utcnow()
    year, month = now.year, now.month
    months = []
    for _ in range(count):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return months


def subscribers() -> int:
    """How many confirmed subscribers there are."""
    return db.session.scalar(select(func.count(Subscriber.id))) or 0


def pending() -> int:
    """How many sign-ups and address changes wait for their confirmation."""
    return db.session.scalar(select(func.count(PendingSignup.id))) or 0


def audience() -> dict[str, int]:
    """How many subscribers there are, and how many sign-ups await confirmation."""
    return {"subscribers": subscribers(), "pending_signups": pending()}
