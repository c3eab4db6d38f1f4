"""The database's clock judges leases, due times and links, never a worker host's clock.

A real ``python worker.py`` runs with its clock five minutes ahead (libfaketime, Debian's
``faketime`` package) against PostgreSQL, whose server keeps the true time. By its own
clock every lease of the other workers has run out and every edition of the next five
minutes is due; by the database's clock neither is, and that is what it must go by.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from newsletter import db_clock, sending
from newsletter.extensions import db
from newsletter.models import BatchStatus, Campaign, CampaignStatus, SendBatch, Subscriber, utcnow
from tests import test_send_faults
from tests.conftest import csrf_token, link_in, path_of, post_signup, run_worker_process
from tests.test_outages import log_of
from tests.test_send_faults import WORKER_ENV, assert_rate_holds_across, status, wait_until
from tests.test_sending import add_campaign, add_subscribers, address, copies_per_recipient

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SKEW = timedelta(minutes=5)
# The clock, not the monotonic clock: a faked monotonic clock makes Python's timed waits
# (threading, RQ's loop) sleep for years.
AHEAD = {
    "LD_PRELOAD": str(LIBFAKETIME),
    "FAKETIME": "+5m",
    "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    "PYTHONPATH": str(Path(__file__).parent / "faketime"),  # its time.sleep; see there
}
workers = test_send_faults.workers  # the fixture: ``python worker.py`` processes, killed after
TICK_JOB = re.compile(r"\btick-(\d+)\b")


@pytest.fixture
def app_config():
    return {"BATCH_SIZE": 10, "TICK_INTERVAL": 1, "SEND_LEASE": 2}


def clock_ahead_environ() -> dict[str, str]:
    """The environment of a process whose clock runs SKEW ahead; checked, not assumed."""
    if not LIBFAKETIME.exists():
        pytest.skip(
            f"clock skew tests skipped: {LIBFAKETIME} is missing (apt-get install faketime)"
        )
    probe = subprocess.run(
        [sys.executable, "-c", "import time; time.sleep(0.01); print(time.time())"],
        env={"PATH": "/usr/bin:/bin", **AHEAD},
        capture_output=True,
        text=True,
        timeout=30,
    )
    ahead = float(probe.stdout) - time.time()
    assert abs(ahead - SKEW.total_seconds()) < 30, f"libfaketime put the clock {ahead:.0f}s ahead"
    return AHEAD


@pytest.fixture
def clock_ahead(request):
    if request.config.getoption("--db") == "sqlite":
        pytest.skip(
            "clock skew between hosts needs a database server: SQLite's clock is the clock "
            "of the process that runs the statement (a skewed process skews it too), and "
            "only processes on one machine share a SQLite file; runs with --db postgresql"
        )
    return clock_ahead_environ()


def soon_time(campaign_id: int):
    return db.session.scalar(select(Campaign.send_at).where(Campaign.id == campaign_id))


def test_the_database_clock_orders_with_stored_times_to_the_millisecond(app):
    """The SQL clock compares correctly with what UTCDateTime stored (text on SQLite)."""
    now = db_clock.read()
    assert abs(now - utcnow()) < timedelta(seconds=2)  # one machine: the same clock
    # A millisecond before: a clock that dropped the fraction would not find it due. Two
    # seconds ahead leaves room for a loaded machine between the read and the query.
    soon = add_campaign(send_at=now + timedelta(seconds=2))
    past = add_campaign(send_at=now - timedelta(milliseconds=1))
    due = select(Campaign.id).where(Campaign.send_at <= db_clock.now()).order_by(Campaign.id)
    assert db.session.scalars(due).all() == [past]
    later = select(Campaign.id).where(Campaign.send_at <= db_clock.now(10))
    assert sorted(db.session.scalars(later).all()) == [soon, past]
    db.session.rollback()
    deadline = time.monotonic() + 20
    while db_clock.read() <= soon_time(soon) and time.monotonic() < deadline:
        db.session.rollback()
        time.sleep(0.1)
    assert db.session.scalars(due).all() == [soon, past]
    # A time written by the SQL clock reads back as an aware UTC datetime.
    db.session.execute(update(Campaign).where(Campaign.id == soon).values(send_at=db_clock.now(30)))
    db.session.commit()
    stored = db.session.scalar(select(Campaign.send_at).where(Campaign.id == soon))
    assert timedelta(seconds=29) < stored - db_clock.read() <= timedelta(seconds=30)
    assert stored.utcoffset() == timedelta(0)


def test_a_worker_whose_clock_runs_ahead_takes_no_live_lease_and_starts_nothing_early(
    app, smtp, workers, clock_ahead
):
    ids = add_subscribers(20)
    live = add_campaign()
    assert sending.start(live)  # two batches; their jobs wait in Redis
    # Another worker holds both: leases that run 60 s more by the database's clock.
    db.session.execute(
        update(SendBatch)
        .where(SendBatch.campaign_id == live)
        .values(
            status=BatchStatus.RUNNING,
            lease_owner="other-host-1-abcd",
            lease_until=db_clock.now(60),
        )
    )
    db.session.commit()
    scheduled = add_campaign(send_at=db_clock.read() + timedelta(seconds=60))

    worker = workers(**WORKER_ENV, **clock_ahead)
    batch_ids = db.session.scalars(select(SendBatch.id).where(SendBatch.campaign_id == live)).all()
    db.session.rollback()
    # It ran the waiting batch jobs, and ticks enough for recovery and schedules to matter.
    wait_until(
        lambda: (
            all(f"batch-{b}-0" in log_of(worker) for b in batch_ids)
            and len(set(TICK_JOB.findall(log_of(worker)))) >= 3
        ),
        60,
        "the worker to run the batch jobs and three ticks",
    )
    time.sleep(1)
    assert smtp.messages == []
    db.session.expire_all()
    batches = db.session.scalars(select(SendBatch).where(SendBatch.campaign_id == live)).all()
    assert {(b.lease_owner, b.attempts) for b in batches} == {("other-host-1-abcd", 0)}
    assert status(scheduled) == CampaignStatus.SCHEDULED
    db.session.rollback()

    # Once the lease runs out and the edition is due, by the database's clock, it sends both.
    db.session.execute(
        update(SendBatch).where(SendBatch.campaign_id == live).values(lease_until=db_clock.now(-1))
    )
    db.session.execute(
        update(Campaign).where(Campaign.id == scheduled).values(send_at=db_clock.now())
    )
    db.session.commit()
    wait_until(
        lambda: status(live) == status(scheduled) == CampaignStatus.SENT, 60, "both sends to finish"
    )
    assert copies_per_recipient(smtp) == {address(i): 2 for i in ids}
    edition = db.session.get(Campaign, scheduled)
    assert edition.started_at >= edition.send_at


def test_a_link_signed_by_a_worker_whose_clock_runs_ahead_opens_at_once(
    app, client, smtp, base_environ, clock_ahead
):
    response = post_signup(client, "ahead.reader@example.com")
    assert response.status_code == 200
    db.session.remove()
    result = run_worker_process(base_environ, "--burst", **clock_ahead)
    assert result.returncode == 0, result.stderr[-2000:]
    confirm_path = path_of(link_in(smtp.to("ahead.reader@example.com")[0].text, "confirm"))
    # By the web host's clock the worker signed it five minutes from now: "expired".
    assert client.get(confirm_path).status_code == 200
    response = client.post(confirm_path, data={"csrf_token": csrf_token(client, confirm_path)})
    assert response.status_code == 200
    assert db.session.scalar(select(Subscriber.email)) == "ahead.reader@example.com"


def test_send_rate_holds_across_two_workers_whose_clocks_disagree(app, smtp, workers, clock_ahead):
    """The rate's windows are Redis's clock: by their own, each would get the whole rate."""
    assert_rate_holds_across(
        smtp,
        lambda: [
            workers("--burst", SEND_RATE="10"),
            workers("--burst", SEND_RATE="10", **clock_ahead),
        ],
    )
