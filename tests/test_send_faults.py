"""Faults with real forking workers (``python worker.py``): SIGKILL, cancel, unsubscribe,
Redis emptied mid-send, and the global SEND_RATE across two workers.

The SMTP fixture runs in this process and is slowed down with ``handler.delay`` so that
things can happen while a batch is under way. Every copy per recipient is counted.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import select

from newsletter import campaigns, sending, tokens
from newsletter.extensions import db, get_redis
from newsletter.models import CampaignStatus, SendBatch, Subscriber
from tests.conftest import ROOT, path_of, python_path
from tests.test_sending import (
    add_campaign,
    add_subscribers,
    address,
    campaign_row,
    copies_per_recipient,
    count,
)

pytestmark = pytest.mark.slow

WORKER_ENV = {"SEND_LEASE": "2s", "TICK_INTERVAL": "1s", "BATCH_SIZE": "10"}


@pytest.fixture
def app_config():
    return {"BATCH_SIZE": 10, "TICK_INTERVAL": 1, "SEND_LEASE": 2}


@pytest.fixture
def workers(base_environ, tmp_path):
    """Start ``python worker.py`` processes; whatever is left is killed at the end.

    ``prefix`` goes before the command, e.g. ``ip netns exec NAME`` to run it elsewhere.
    """
    started: list[subprocess.Popen] = []

    def start(*args, prefix=(), **env):
        log = open(tmp_path / f"worker-{len(started)}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            # Verbose: the tests read RQ's lines about its scheduler and its waiting.
            [*prefix, sys.executable, str(ROOT / "worker.py"), "--verbose", *args],
            env={**os.environ, **base_environ, **WORKER_ENV, **env, "PYTHONPATH": python_path(env)},
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        process.log = log
        started.append(process)
        return process

    yield start
    for process in started:
        kill_tree(process)
        process.log.close()


def descendants(pid: int) -> list[int]:
    """All processes below ``pid`` (RQ's work horse runs in a session of its own)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def kill_tree(process: subprocess.Popen) -> list[int]:
    """SIGKILL the worker, its process group and every process below it (the horse too)."""
    below = descendants(process.pid)
    for pid in [process.pid, *below]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)
    return below


def stop(process: subprocess.Popen) -> None:
    """Warm shutdown: the worker finishes its job and exits."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        kill_tree(process)


def wait_until(predicate, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def status(campaign_id: int) -> CampaignStatus:
    return campaign_row(campaign_id).status


@pytest.mark.parametrize("connections", [1, 4])
def test_sigkilled_worker_loses_nobody_and_repeats_at_most_the_messages_in_flight(
    app, smtp, workers, connections
):
    """At most one message per SMTP connection was in flight: only those may go twice."""
    ids = add_subscribers(50)
    campaign_id = add_campaign()
    assert sending.start(campaign_id)
    smtp.handler.delay = 0.05 * connections  # about as many messages a second either way

    first = workers(SMTP_CONNECTIONS=str(connections))
    wait_until(lambda: len(smtp.messages) >= 15, 60, "the first worker to send")
    horses = kill_tree(first)
    assert horses, "the worker had no work horse: it was not sending"
    at_kill = len(smtp.messages)
    assert at_kill < 50
    time.sleep(0.5)
    # Only the messages in flight may still land.
    assert len(smtp.messages) <= at_kill + connections

    workers(SMTP_CONNECTIONS=str(connections))  # its tick finds the lease run out
    took = wait_until(lambda: status(campaign_id) == CampaignStatus.SENT, 90, "the send to finish")

    copies = copies_per_recipient(smtp)
    assert set(copies) == {address(i) for i in ids}  # nobody missing
    assert sum(n - 1 for n in copies.values()) <= connections  # those in flight, twice
    campaign = campaign_row(campaign_id)
    assert campaign.sent == 50 and campaign.failed == 0
    assert count(SendBatch) == 0
    assert took < 45  # leases and the tick, not RQ's ten-minute clean-up


def test_cancel_stops_a_running_send_within_seconds(app, smtp, workers):
    add_subscribers(60)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    smtp.handler.delay = 0.1

    worker = workers()
    wait_until(lambda: len(smtp.messages) >= 8, 60, "sending to start")
    campaigns.cancel(campaign_id)
    at_cancel = len(smtp.messages)

    time.sleep(2.5)
    settled = len(smtp.messages)
    time.sleep(1.5)
    assert len(smtp.messages) == settled, "still sending after cancel"
    assert settled <= at_cancel + 15 and settled < 60

    # The worker's tick keeps the totals and deletes the bookkeeping.
    wait_until(lambda: count(SendBatch) == 0, 20, "the bookkeeping to go")
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.CANCELLED
    assert campaign.sent == settled and campaign.recipients == 60
    stop(worker)


def test_reader_who_unsubscribes_mid_send_gets_nothing_more(app, client, smtp, workers):
    ids = add_subscribers(40)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    smtp.handler.delay = 0.05
    leaving = [db.session.get(Subscriber, i) for i in (ids[25], ids[-1])]
    leaving_addresses = [s.email for s in leaving]
    paths = [path_of(tokens.unsubscribe_url(s)) for s in leaving]

    worker = workers()
    wait_until(lambda: len(smtp.messages) >= 5, 60, "sending to start")
    for path in paths:  # the RFC 8058 one-click POST a mail client makes
        response = client.post(
            path,
            data="List-Unsubscribe=One-Click",
            content_type="application/x-www-form-urlencoded",
        )
        assert response.status_code == 200
    wait_until(lambda: status(campaign_id) == CampaignStatus.SENT, 60, "the send to finish")

    copies = copies_per_recipient(smtp)
    assert not set(leaving_addresses) & set(copies)
    assert len(copies) == 38 and set(copies.values()) == {1}
    assert campaign_row(campaign_id).sent == 38
    stop(worker)


def test_redis_emptied_mid_send_is_recovered(app, smtp, workers):
    ids = add_subscribers(50)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    smtp.handler.delay = 0.03

    worker = workers()
    wait_until(lambda: len(smtp.messages) >= 12, 60, "sending to start")
    get_redis().flushdb()  # every waiting batch job is gone
    wait_until(lambda: status(campaign_id) == CampaignStatus.SENT, 90, "the send to finish")

    copies = copies_per_recipient(smtp)
    assert set(copies) == {address(i) for i in ids}
    assert set(copies.values()) == {1}
    stop(worker)


def test_send_rate_holds_across_two_workers(app, smtp, workers):
    assert_rate_holds_across(smtp, lambda: [workers("--burst", SEND_RATE="10") for _ in range(2)])


def assert_rate_holds_across(smtp, start_pair) -> None:
    """Two workers that ``start_pair`` starts with SEND_RATE=10 send no faster than that."""
    add_subscribers(40)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    assert len(db.session.scalars(select(SendBatch.id)).all()) == 4

    pair = start_pair()

    wait_until(lambda: len(smtp.messages) >= 1, 60, "the first message")
    first = time.monotonic()
    wait_until(lambda: len(smtp.messages) >= 40, 60, "all messages")
    spread = time.monotonic() - first

    # 40 messages at 10 per second need at least four one-second windows; two workers
    # each allowed 10 per second would finish within two.
    assert spread > 2.0, f"40 messages in {spread:.2f}s: the rate did not hold"
    assert set(copies_per_recipient(smtp).values()) == {1}
    for process in pair:
        process.wait(timeout=30)
    assert status(campaign_id) == CampaignStatus.SENT
