"""Erasure through the bounce path, end to end: no trace in tables, file, Redis or logs.

Four readers subscribe through the real journey and get an edition through the real
sending path, each copy with its VERP envelope sender. Then, as in production:

- one copy bounces for good, and the MTA pipes the notice to ``flask --app newsletter
  bounces read``, a real process;
- another bounces too, and a third reader complains (an ARF report from a feedback
  loop); both land in the bounce mailbox of a real Dovecot, which a real worker process
  (``python worker.py``) polls;
- forged notices about the fourth reader and the first (a valid DSN whose tag was
  tampered with, and one with no tag) go both ways, and change nothing.

After that the three addresses are in no table row, not in the SQLite file or its
write-ahead log, in no Redis key or value, and in no line logged by the test process,
the command or the worker. The fourth reader is kept, with no counter changed.
"""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import make_url

from newsletter import campaigns, stats
from newsletter.extensions import db, get_redis
from newsletter.models import Campaign, PendingSignup, Subscriber
from newsletter.tick import enqueue_bounce_poll
from tests.bounce_mail import BOUNCE_ADDRESS, arf, bounces_read, dsn
from tests.conftest import post_signup, run_worker_process, service_log
from tests.test_erasure import redis_dump, table_dump

BY_PIPE = "Bounced.By.Pipe.5150@Example.net"
BY_IMAP = "bounced.by.imap.5150@example.net"
COMPLAINED = "complained.5150@example.net"
KEPT = "kept.reader.5150@example.net"
# What must be nowhere afterwards (the local parts are unique to this module) ...
NEEDLES = [b"bounced.by.pipe.5150", b"bounced.by.imap.5150", b"complained.5150"]
# ... and what must still be there, so that each check is seen to find an address.
KEPT_NEEDLE = b"kept.reader.5150"


@pytest.fixture
def app_config(dovecot):
    return {"BOUNCE_ADDRESS": BOUNCE_ADDRESS, **dovecot.settings}


@pytest.fixture
def service_environ(base_environ, dovecot) -> dict[str, str]:
    """The environment of the command and the worker: the test app's settings."""
    return {**base_environ, "BOUNCE_ADDRESS": BOUNCE_ADDRESS, **dovecot.settings}


def assert_absent(blob: bytes, where: str, kept_too: bool = True) -> None:
    lowered = blob.lower()
    for needle in NEEDLES:
        assert needle not in lowered, f"{needle!r} found in {where}"
    if kept_too:
        assert KEPT_NEEDLE in lowered, f"the kept reader is not in {where}: the check is blind"


def sqlite_files(database_url: str) -> list[Path]:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return []  # PostgreSQL's files belong to its server
    return [Path(url.database + suffix) for suffix in ("", "-wal", "-shm")]


def file_bytes(files: list[Path]) -> dict[str, bytes]:
    """The files' bytes, read by another process (``cat``).

    Closing any descriptor of a file drops all of this process's POSIX locks on it, the
    held connection's too (SQLite's known caveat): so this process never opens the file.
    """
    return {
        file.name: subprocess.run(["cat", str(file)], capture_output=True, check=True).stdout
        for file in files
        if file.exists()
    }


@pytest.fixture
def sqlite_held_open(app, database_url):
    """The SQLite files, with an idle connection held open, as a running web server has.

    SQLite checkpoints the write-ahead log when the last connection closes; without this,
    the exit of the command or the worker would clean the log for us, and the file check
    could not tell whether the erasure itself does. On PostgreSQL: no files (its server's).
    """
    files = sqlite_files(database_url)
    if not files:
        yield []
        return
    held = sqlite3.connect(files[0])
    held.execute("SELECT count(*) FROM subscriber").fetchall()  # no transaction stays open
    yield files
    held.close()


def sent_edition(client, work, smtp, subscribed) -> tuple[int, dict[str, str]]:
    """Subscribe the four readers, send them an edition; return it and each VERP sender."""
    for reader in (BY_PIPE, BY_IMAP, COMPLAINED, KEPT):
        subscribed(reader)
    # The first reader sends the form again: a pending sign-up row (its confirmation job
    # finds them subscribed and sends nothing); the erasure must take it too.
    assert post_signup(client, BY_PIPE).status_code == 200
    assert db.session.scalar(select(func.count(PendingSignup.id))) == 1
    campaign_id = campaigns.create("Our news", "<p>Hello</p>").id
    campaigns.schedule(campaign_id, "now")
    work()
    work()
    senders = {}
    for reader in (BY_PIPE, BY_IMAP, COMPLAINED, KEPT):
        copy = smtp.to(reader.lower())[-1]
        assert copy.message["Subject"] == "Our news"
        assert copy.mail_from.startswith("bounces+") and copy.mail_from.endswith(
            "@news.example.com"
        )
        senders[reader] = copy.mail_from
    return campaign_id, senders


def forgeries(senders: dict[str, str]) -> list[bytes]:
    """Valid notices that must change nothing: a tampered tag, and no tag at all."""
    real = senders[BY_PIPE]
    local, domain = real.split("@")
    tampered = f"{local[:-1]}{'a' if local[-1] != 'a' else 'b'}@{domain}"
    return [
        dsn(tampered, BY_PIPE),
        dsn(tampered, KEPT),
        dsn(BOUNCE_ADDRESS, KEPT),
        dsn(BOUNCE_ADDRESS, BY_PIPE),
        arf(BOUNCE_ADDRESS, KEPT),
    ]


def counters(campaign_id: int) -> dict:
    db.session.expire_all()
    campaign = db.session.get(Campaign, campaign_id)
    month = stats.monthly(["erased_bounced", "erased_complaint"])
    return {
        "bounced": campaign.bounced,
        "complaints": campaign.complaints,
        "tallies": {kind: n for kinds in month.values() for kind, n in kinds.items()},
        "soft": sorted(db.session.scalars(select(Subscriber.soft_bounces)).all()),
        "readers": db.session.scalar(select(func.count(Subscriber.id))),
    }


@pytest.mark.slow
def test_bounced_and_complaining_readers_are_erased_without_a_trace_and_forgeries_change_nothing(
    app, client, work, smtp, subscribed, logs, dovecot, service_environ, sqlite_held_open
):
    dovecot.empty()
    files = sqlite_held_open
    campaign_id, senders = sent_edition(client, work, smtp, subscribed)
    before = b"".join(file_bytes(files).values())
    for needle in NEEDLES:
        assert needle in table_dump().lower(), "the table check would prove nothing"
        if files:
            assert needle in before.lower(), "the file check would prove nothing"
    ids = {
        reader: db.session.scalar(select(Subscriber.id).where(Subscriber.email == reader.lower()))
        for reader in (BY_PIPE, BY_IMAP, COMPLAINED, KEPT)
    }
    untouched = counters(campaign_id)
    assert untouched == {
        "bounced": 0,
        "complaints": 0,
        "tallies": {},
        "soft": [0, 0, 0, 0],
        "readers": 4,
    }
    outputs = []  # everything the command and the worker wrote

    # Forged notices through the pipe: handled (exit 0), and nothing happens.
    db.session.remove()
    for message in forgeries(senders):
        result = bounces_read(message, service_environ)
        outputs += [result.stdout, result.stderr]
        assert result.returncode == 0, result.stderr
        assert b"without a valid tag" in result.stdout, result.stdout
    assert counters(campaign_id) == untouched

    # A permanent failure through the pipe: the reader is erased at once.
    db.session.remove()
    result = bounces_read(dsn(senders[BY_PIPE], BY_PIPE), service_environ)
    outputs += [result.stdout, result.stderr]
    assert result.returncode == 0, result.stderr
    assert f"erase_bounced subscriber {ids[BY_PIPE]} campaign {campaign_id}".encode() in (
        result.stdout
    )

    # A bounce, a complaint and the forgeries again, in the mailbox the worker polls.
    dovecot.append(
        dsn(senders[BY_IMAP], BY_IMAP),
        arf(senders[COMPLAINED], COMPLAINED),
        *forgeries(senders),
    )
    enqueue_bounce_poll()
    db.session.remove()
    worker = run_worker_process(service_environ, "--burst")
    outputs += [worker.stdout.encode(), worker.stderr.encode()]
    assert worker.returncode == 0, worker.stderr
    assert dovecot.count() == 0, "the poll did not handle and delete every message"
    worker_log = worker.stdout + worker.stderr
    assert f"subscriber {ids[BY_IMAP]} erased (bounced)" in worker_log, worker_log
    assert f"subscriber {ids[COMPLAINED]} erased (complaint)" in worker_log, worker_log

    # Only the kept reader is left, and only the real notices counted.
    assert counters(campaign_id) == {
        "bounced": 2,
        "complaints": 1,
        "tallies": {"erased_bounced": 2, "erased_complaint": 1},
        "soft": [0],
        "readers": 1,
    }
    assert db.session.scalars(select(Subscriber.email)).all() == [KEPT]
    assert db.session.scalar(select(func.count(PendingSignup.id))) == 0

    assert_absent(table_dump(), "the database tables")
    after = file_bytes(files)
    for name, content in after.items():
        assert_absent(content, name, kept_too=False)
    if files:
        assert KEPT_NEEDLE in b"".join(after.values()).lower(), "the file check is blind"
    assert_absent(redis_dump(), "Redis", kept_too=False)
    assert any(k.startswith(b"rq:") for k in get_redis().keys("*")), "Redis check saw no jobs"
    assert_absent(service_log(logs).encode(), "the test process's logs", kept_too=False)
    assert any(r.name.startswith("rq") for r in logs.records), "RQ's logs were not captured"
    assert_absent(b"\n".join(outputs), "the command's and the worker's output", kept_too=False)
    assert len(smtp.to(BY_PIPE.lower())) == 2  # the confirmation and the edition, no more
