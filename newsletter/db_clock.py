"""The database's clock: what leases, schedules and "overdue" are judged by.

Workers may run on many machines whose clocks disagree; the one clock they share is the
database's. ``now(seconds)`` is that clock as an SQL expression, to be used inside the
UPDATE or SELECT that compares or writes a lease or a due time, so it costs no round
trip; ``read()`` fetches it, in one round trip, where Python needs the value.

On PostgreSQL it is ``statement_timestamp()`` (``now()`` would stay at the start of a
long transaction). SQLite has no server: its clock is that of the process running the
statement, which is the one machine that can open the file. The expression is written
as ``UTCDateTime`` stores values there (``YYYY-MM-DD HH:MM:SS.ffffff``, UTC), so the
comparisons with stored values, which SQLite makes as text, stay exact.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Float, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from newsletter.extensions import db
from newsletter.models import UTCDateTime


class _database_now(FunctionElement):
    """The database's current UTC time plus a number of seconds (negative: earlier)."""

    type = UTCDateTime()
    inherit_cache = True
    name = "database_now"


@compiles(_database_now)
def _postgresql_now(element, compiler, **kw):
    seconds = compiler.process(element.clauses, **kw)
    return f"(statement_timestamp() + make_interval(secs => {seconds}))"


@compiles(_database_now, "sqlite")
def _sqlite_now(element, compiler, **kw):
    seconds = compiler.process(element.clauses, **kw)
    # %f gives milliseconds; three more digits make the microseconds UTCDateTime writes.
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now', {seconds} || ' seconds') || '000')"


def now(seconds: float = 0):
    """The database's time ``seconds`` from now, as an SQL expression."""
    return _database_now(literal(float(seconds), Float))


def read(connection=None) -> datetime:
    """The database's current time (aware, UTC), in one round trip.

    Runs on ``connection`` or the session; a session read begins a transaction, which
    the caller ends as usual.
    """
    return (connection or db.session).scalar(select(now()))
