"""Workers on two hosts against one PostgreSQL and one Redis, one host's clock off.

The test makes the second host: a network namespace joined to this one by a veth pair
with addresses of its own. A throwaway PostgreSQL cluster, a ``redis-server`` and the SMTP
fixture listen on host A's end of the link; two ``python worker.py`` run on host A, two
in the namespace (host B) with their clock five minutes ahead (libfaketime). The edition
is scheduled a few seconds ahead: nobody starts it early. Once each of the four workers
holds one batch, a third worker starts on host B and idles: by its clock every lease has
run out, by the database's none has, and it takes none. Then host A's workers are
SIGKILLed: host B finishes the send, taking over each of A's batches only once its lease
ran out by the database's clock; nobody is missing and at most the messages in flight on
A's connections go out twice. Traffic stays on the link and loopback; the namespace and
the link are removed however the test ends.
"""

from __future__ import annotations

import os
import subprocess
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from newsletter import create_app, db_clock
from newsletter.extensions import db, get_redis
from newsletter.models import Campaign, CampaignStatus, SendBatch
from tests import test_send_faults
from tests.conftest import ROOT
from tests.smtp_server import SmtpServer
from tests.test_clock_skew import TICK_JOB, clock_ahead_environ
from tests.test_outages import PG_BIN, REDIS_SERVER, PostgresCluster, RedisServer, log_of
from tests.test_send_faults import WORKER_ENV, kill_tree, status, wait_until
from tests.test_sending import add_campaign, add_subscribers, address, copies_per_recipient

pytestmark = pytest.mark.slow

workers = test_send_faults.workers  # the fixture: ``python worker.py`` processes, killed after

READERS = 200
WORKERS_PER_HOST = 2
BATCHES = 4  # one for each of the first four workers
CONNECTIONS = 2  # SMTP_CONNECTIONS per worker: the messages a killed worker had in flight
SEND_LEASE = 2
START_IN = timedelta(seconds=8)  # the edition is scheduled this far ahead


def ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr}"


class Link:
    """Host B: a network namespace, joined to this one (host A) by a veth pair."""

    def __init__(self) -> None:
        tag = os.getpid() % 100_000
        self.namespace = f"nl-host-b-{tag}"
        self.a_end, self.b_end = f"nlA{tag}", f"nlB{tag}"
        net = 1 + os.getpid() % 250  # two runs at once get two networks
        self.network = f"10.201.{net}.0/24"
        self.a, self.b = f"10.201.{net}.1", f"10.201.{net}.2"

    def create(self) -> None:
        """Make the namespace and the link; on a failure, leave nothing behind."""
        self.remove()  # what a killed earlier run of this process id may have left
        try:
            self._create()
        except BaseException:
            self.remove()
            raise

    def _create(self) -> None:
        ip("netns", "add", self.namespace)
        ip("link", "add", self.a_end, "type", "veth", "peer", "name", self.b_end)
        ip("link", "set", self.b_end, "netns", self.namespace)
        ip("addr", "add", f"{self.a}/24", "dev", self.a_end)
        ip("link", "set", self.a_end, "up")
        inside = ("netns", "exec", self.namespace, "ip")
        ip(*inside, "addr", "add", f"{self.b}/24", "dev", self.b_end)
        ip(*inside, "link", "set", self.b_end, "up")
        ip(*inside, "link", "set", "lo", "up")

    @property
    def on_b(self) -> tuple[str, ...]:
        return ("ip", "netns", "exec", self.namespace)

    def remove(self) -> None:
        # Deleting the namespace deletes its end of the pair, and with it the other end.
        subprocess.run(["ip", "netns", "del", self.namespace], capture_output=True, timeout=30)
        subprocess.run(["ip", "link", "del", self.a_end], capture_output=True, timeout=30)


@pytest.fixture
def link():
    if os.geteuid() != 0:
        pytest.skip("two-host test skipped: creating network namespaces (ip netns) needs root")
    for needed in (REDIS_SERVER, str(PG_BIN / "initdb")):
        if not os.path.exists(needed):
            pytest.skip(f"two-host test skipped: {needed} is missing")
    made = Link()
    try:
        made.create()
    except AssertionError as exc:
        if "Operation not permitted" not in str(exc):
            raise
        pytest.skip(f"two-host test skipped: network namespaces are not allowed here ({exc})")
    yield made
    made.remove()  # also when the test failed: pytest runs a fixture's teardown either way


@pytest.fixture
def hosts(link, tmp_path, base_environ):
    """PostgreSQL, Redis and SMTP on host A's address; an app on them for the test."""
    cluster = PostgresCluster(host=link.a, trusted=link.network)
    redis_server = RedisServer(tmp_path, host=link.a)
    smtp = SmtpServer(host=link.a)
    try:
        cluster.create()
        cluster.start()
        redis_server.start()
        smtp.start()
        environ = {
            **WORKER_ENV,
            "BATCH_SIZE": str(READERS // BATCHES),
            "DATABASE_URL": cluster.url,
            "REDIS_URL": redis_server.url,
            "MAIL_SERVER": link.a,
            "MAIL_PORT": str(smtp.port),
            "SMTP_CONNECTIONS": str(CONNECTIONS),
        }
        app = create_app(
            test_config={"TESTING": True, "SEND_LEASE": SEND_LEASE},
            environ={**base_environ, **environ},
        )
        with app.app_context():
            from flask_migrate import upgrade

            upgrade(directory=str(ROOT / "migrations"))
            yield environ, smtp
            db.session.remove()
            db.engine.dispose()
            get_redis().close()
    finally:
        smtp.stop()
        redis_server.stop()
        cluster.remove()


class LeaseWatch:
    """Samples the batch rows with the database's time, in one statement each time.

    A batch claimed again (attempts up) while RUNNING must have had its lease run out: a
    claim between two samples is no earlier than the first, so a lease that the first
    sample shows still running at the second sample's time means it was taken early.
    """

    def __init__(self) -> None:
        self.last: dict[int, tuple] = {}
        self.taken_early: list[str] = []
        self.taken_over = 0
        self.running = 0  # batches RUNNING in the last sample

    def sample(self) -> None:
        rows = db.session.execute(
            select(
                SendBatch.id,
                SendBatch.status,
                SendBatch.attempts,
                SendBatch.lease_until,
                db_clock.now(),
            )
        ).all()
        db.session.rollback()
        self.running = sum(1 for row in rows if row.status.value == "running")
        for batch_id, batch_status, attempts, lease_until, now in rows:
            before = self.last.get(batch_id)
            if before is not None and attempts > before[1] and before[0] == "running":
                self.taken_over += 1
                if before[2] is not None and before[2] > now:
                    self.taken_early.append(f"batch {batch_id}: lease to {before[2]}, now {now}")
            self.last[batch_id] = (batch_status.value, attempts, lease_until)


def test_two_hosts_one_clock_ahead_one_killed_the_other_finishes(link, hosts, workers, request):
    environ, smtp = hosts
    ahead = clock_ahead_environ()
    ids = add_subscribers(READERS)
    campaign_id = add_campaign(send_at=db_clock.read() + START_IN)
    send_at = db.session.get(Campaign, campaign_id).send_at
    db.session.rollback()
    smtp.handler.delay = 0.3

    host_a = [workers(**environ) for _ in range(WORKERS_PER_HOST)]
    host_b = [workers(prefix=link.on_b, **environ, **ahead) for _ in range(WORKERS_PER_HOST)]

    # Host B's clock says the edition is five minutes overdue; the database's says wait.
    def started() -> bool:
        if db_clock.read() < send_at:
            assert status(campaign_id) == CampaignStatus.SCHEDULED, "started early"
            assert smtp.messages == [], "mail before the scheduled time"
        db.session.rollback()
        return status(campaign_id) != CampaignStatus.SCHEDULED

    wait_until(started, 60, "the edition to start")
    edition = db.session.get(Campaign, campaign_id)
    assert edition.started_at >= send_at
    db.session.rollback()

    watch = LeaseWatch()
    wait_until(lambda: watch.sample() or watch.running == BATCHES, 60, "every batch to be held")
    # An idle worker on host B: by its clock every lease ran out long ago.
    idle = workers(prefix=link.on_b, **environ, **ahead)
    host_b.append(idle)
    wait_until(
        lambda: watch.sample() or len(set(TICK_JOB.findall(log_of(idle)))) >= 3,
        60,
        "the idle worker to run three ticks",
    )
    # Host B is really on the other end of the link, for the database and for Redis.
    clients = db.session.scalar(
        text("SELECT count(*) FROM pg_stat_activity WHERE client_addr = CAST(:b AS inet)"),
        {"b": link.b},
    )
    db.session.rollback()
    assert clients >= 1, "no database connection from host B"
    assert any(c["addr"].startswith(f"{link.b}:") for c in get_redis().client_list())

    for process in host_a:
        kill_tree(process)
    at_kill = len(smtp.messages)
    assert at_kill < READERS, "the send ended before host A was killed"

    def finished() -> bool:
        watch.sample()
        return status(campaign_id) == CampaignStatus.SENT

    wait_until(finished, 120, "host B to finish the send")
    assert [p.poll() for p in host_b] == [None] * len(host_b), "a worker on host B quit"
    assert watch.taken_early == [], watch.taken_early
    assert watch.taken_over >= 1, "host B took over none of host A's batches"
    assert len(smtp.messages) > at_kill

    copies = copies_per_recipient(smtp)
    assert set(copies) == {address(i) for i in ids}, "somebody got nothing"
    assert sum(n - 1 for n in copies.values()) <= WORKERS_PER_HOST * CONNECTIONS, copies
    campaign = db.session.get(Campaign, campaign_id)
    assert campaign.sent >= READERS and campaign.failed == 0
