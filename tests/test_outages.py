"""Outages: Redis and PostgreSQL restarted under real worker processes mid-send.

Each test runs a server of its own (``redis-server``; a throwaway PostgreSQL cluster),
stops it while ``python worker.py`` processes send a campaign to the slowed SMTP fixture,
keeps it away until the workers have noticed, and starts it again on the same port. The
send must finish with every reader served once (at most the messages in flight on each
worker's connections twice), and the workers must still be running.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue
from rq.job import JobStatus
from rq.registry import FailedJobRegistry
from rq.scheduler import RQScheduler

from newsletter import create_app, subscriptions, tokens
from newsletter.extensions import db, get_redis
from newsletter.models import CampaignStatus, SendBatch, Subscriber
from tests import test_send_faults
from tests.conftest import ROOT, path_of
from tests.test_send_faults import status, wait_until
from tests.test_sending import (
    add_campaign,
    add_subscribers,
    address,
    campaign_row,
    copies_per_recipient,
    count,
)

pytestmark = pytest.mark.slow

workers = test_send_faults.workers  # the fixture: ``python worker.py`` processes, killed after

REDIS_SERVER = "/usr/bin/redis-server"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
READERS = 120
WORKERS = 2
CONNECTIONS = 4  # SMTP_CONNECTIONS: the default, which the workers run with

# What RQ's main loop logs when a Redis call failed: while a job ran or ended, "found an
# unhandled exception"; while it waited for one, its first retry "in 1 seconds" (its
# pubsub thread's message says 2 seconds, and the tick thread's warnings do not count).
MAIN_LOOP_NOTICED = re.compile(r"unhandled exception|Redis instance: .* retrying in 1 seconds")
ANY_NOTICE = re.compile(r"ConnectionError|Connection refused|retrying in|starting a new one")
SCHEDULER_DIED = re.compile(r"Scheduler \[PID \d+\] raised an exception")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def log_of(process: subprocess.Popen) -> str:
    return Path(process.log.name).read_text(errors="replace")


class RedisServer:
    """A ``redis-server`` on a loopback port (or ``host``) that keeps nothing on disk."""

    def __init__(self, folder: Path, host: str = "127.0.0.1") -> None:
        self.folder = folder
        self.host = host
        self.port = free_port(host)
        self.url = f"redis://{host}:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.folder / "redis.log", "a") as log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, "--port", str(self.port), "--bind", self.host]
                + ["--protected-mode", "no"]
                + ["--save", "", "--appendonly", "no", "--dir", str(self.folder)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=1)
        try:
            wait_until(lambda: self._answers(client), 10, "redis-server to answer")
        finally:
            client.close()

    @staticmethod
    def _answers(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        """Kill it: whatever it held is gone, as after a crash."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def redis_server(tmp_path):
    if not os.path.exists(REDIS_SERVER):
        pytest.skip(f"Redis outage test skipped: {REDIS_SERVER} is missing")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def assert_served_once(campaign_id: int, ids: list[int], copies: dict[str, int]) -> None:
    """Nobody missing; at most one extra copy per SMTP connection of each worker (the
    messages in flight)."""
    assert set(copies) == {address(i) for i in ids}, "somebody got nothing"
    assert sum(n - 1 for n in copies.values()) <= WORKERS * CONNECTIONS, copies
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT
    assert campaign.sent >= len(ids) and campaign.failed == 0
    assert count(SendBatch) == 0


def test_workers_ride_out_a_redis_restart_and_the_send_completes(app, smtp, redis_server, workers):
    ids = add_subscribers(READERS)
    campaign_id = add_campaign()  # due: the workers' tick starts it (in their Redis)
    smtp.handler.delay = 0.05
    pair = [workers(REDIS_URL=redis_server.url) for _ in range(WORKERS)]
    wait_until(lambda: len(smtp.messages) >= 20, 60, "sending to start")

    redis_server.stop()
    # Away until every worker's main loop and the RQ scheduler have given up on it.
    wait_until(
        lambda: (
            all(MAIN_LOOP_NOTICED.search(log_of(p)) for p in pair)
            and any(SCHEDULER_DIED.search(log_of(p)) for p in pair)
        ),
        45,
        "the workers to notice that Redis is gone",
    )
    assert len(smtp.messages) < READERS
    redis_server.start()  # the same port, and empty

    wait_until(lambda: status(campaign_id) == CampaignStatus.SENT, 60, "the send to finish")
    assert [p.poll() for p in pair] == [None] * WORKERS, "a worker quit"
    assert_served_once(campaign_id, ids, copies_per_recipient(smtp))

    # A scheduler runs again (it moves RQ's delayed retries to their queues).
    client = redis.Redis.from_url(redis_server.url)
    try:
        wait_until(
            lambda: client.exists(RQScheduler.get_locking_key("mail")),
            30,
            "an RQ scheduler to hold its lock again",
        )
    finally:
        client.close()
    assert [p.poll() for p in pair] == [None] * WORKERS, "a worker quit"


def test_idle_worker_gets_its_scheduler_back_after_a_redis_restart(redis_server, workers):
    worker = workers(REDIS_URL=redis_server.url)
    wait_until(lambda: "Scheduler for" in log_of(worker), 30, "the RQ scheduler to start")

    redis_server.stop()
    wait_until(
        lambda: MAIN_LOOP_NOTICED.search(log_of(worker)) and SCHEDULER_DIED.search(log_of(worker)),
        45,
        "the worker and its scheduler to notice that Redis is gone",
    )
    redis_server.start()

    # A delayed job, like RQ's retries of a failed mail, runs when a scheduler moves it.
    client = redis.Redis.from_url(redis_server.url)
    try:
        job = Queue("mail", connection=client).enqueue_in(
            timedelta(seconds=1), subscriptions.send_manage_link, None, result_ttl=60
        )
        wait_until(
            lambda: job.get_status(refresh=True) == JobStatus.FINISHED,
            30,
            "the delayed job to run (RQ itself restarts its scheduler after ten minutes)",
        )
    finally:
        client.close()
    assert worker.poll() is None, "the worker quit"


def test_worker_started_without_redis_waits_for_it_and_stops_on_sigterm(redis_server, workers):
    redis_server.stop()
    worker = workers(REDIS_URL=redis_server.url)
    wait_until(lambda: "starting a new one" in log_of(worker), 30, "the worker to wait")
    redis_server.start()
    wait_until(lambda: "Listening on" in log_of(worker), 30, "the worker to begin")

    before = len(log_of(worker))
    redis_server.stop()
    # Idle in RQ's wait for jobs or in our backoff, the worker says so in different words.
    wait_until(lambda: ANY_NOTICE.search(log_of(worker)[before:]), 30, "the worker to notice")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=20) == 0, log_of(worker)[-3000:]


# --- PostgreSQL ---------------------------------------------------------------------------


class PostgresCluster:
    """A throwaway PostgreSQL cluster on a loopback port, run as the postgres user.

    ``host`` is the address it listens on; ``trusted`` a network (besides loopback) whose
    clients it lets in without a password.
    """

    def __init__(self, host: str = "127.0.0.1", trusted: str | None = None) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="nl-pg-"))  # in /tmp: postgres may enter
        self.data = self.folder / "data"
        self.host = host
        self.trusted = trusted
        self.port = free_port(host)
        self.url = f"postgresql://postgres@{host}:{self.port}/postgres"
        self.as_owner: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            shutil.chown(self.folder, "postgres", "postgres")
            self.as_owner = ["runuser", "-u", "postgres", "--"]

    def _run(self, program: str, *args: str) -> None:
        result = subprocess.run(
            [*self.as_owner, str(PG_BIN / program), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, f"{program} failed: {result.stdout}{result.stderr}"

    def create(self) -> None:
        # trust: it listens on loopback only and lives for one test
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        if self.trusted:
            with open(self.data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {self.trusted} trust\n")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses={self.host} -c fsync=off"
        log = str(self.folder / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-l", log, "-o", options, "-w", "start")

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as when the server restarts."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def postgresql_cluster(request):
    if request.config.getoption("--db") != "postgresql":
        pytest.skip("PostgreSQL restart test: runs only with --db postgresql")
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL restart test skipped: {PG_BIN / 'initdb'} is missing")
    cluster = PostgresCluster()
    try:
        cluster.create()
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def cluster_app(postgresql_cluster, base_environ, smtp_server):
    """An app on the throwaway cluster; a failing view answers 500 instead of raising."""
    from flask_migrate import upgrade

    environ = {**base_environ, "DATABASE_URL": postgresql_cluster.url}
    app = create_app(test_config={"PROPAGATE_EXCEPTIONS": False}, environ=environ)
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        get_redis().flushdb()
        smtp_server.reset()
        yield app
        db.session.remove()
        db.engine.dispose()
        get_redis().flushdb()
        get_redis().close()


WAITS_FOR_THE_DATABASE = "database unreachable"


def test_workers_and_web_ride_out_a_postgresql_restart_and_the_send_completes(
    cluster_app, postgresql_cluster, smtp, workers
):
    ids = add_subscribers(READERS)
    campaign_id = add_campaign()
    manage_path = path_of(tokens.manage_url(db.session.get(Subscriber, ids[0])))
    client = cluster_app.test_client()
    assert client.get(manage_path).status_code == 200  # the pool keeps that connection
    db.session.remove()
    smtp.handler.delay = 0.05
    pair = [workers(DATABASE_URL=postgresql_cluster.url) for _ in range(WORKERS)]
    wait_until(lambda: len(smtp.messages) >= 20, 60, "sending to start")

    send_queue = Queue("send", connection=get_redis())
    postgresql_cluster.stop()
    # Away until every worker takes no more jobs: it waits for the database, or (a
    # worker that does not wait) every queued batch has been taken, and failed.
    wait_until(
        lambda: (
            all(WAITS_FOR_THE_DATABASE in log_of(p) for p in pair)
            or (send_queue.count == 0 and all("OperationalError" in log_of(p) for p in pair))
        ),
        45,
        "the workers to notice that the database is gone",
    )
    assert len(smtp.messages) < READERS
    # Only the batches under way failed; the queued ones wait for the database.
    assert FailedJobRegistry("send", connection=get_redis()).count <= WORKERS
    postgresql_cluster.start()

    # The web app's pooled connection died with the server: the first request must not fail.
    response = client.get(manage_path)
    assert response.status_code == 200, "the first request after the restart failed"

    wait_until(lambda: status(campaign_id) == CampaignStatus.SENT, 60, "the send to finish")
    assert [p.poll() for p in pair] == [None] * WORKERS, "a worker quit"
    assert_served_once(campaign_id, ids, copies_per_recipient(smtp))
