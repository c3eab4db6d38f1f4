"""No address and no link token reaches a log line: a property of the logging set-up.

Errors are forced for real: a database trigger makes the sign-up INSERT (in a request)
and the confirmation job's UPDATE (in a worker process) fail, and on PostgreSQL the
trigger's error text quotes the address, as a real constraint or driver error can.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import socket
import subprocess
import sys
import time
import zlib

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from newsletter import subscriptions
from newsletter.extensions import db, get_redis
from newsletter.models import ConsentText, PendingSignup, Subscriber
from newsletter.queue import enqueue
from tests.conftest import ROOT, Browser, csrf_token, run_worker_process

ADDRESS = "forced.failure.0815@example.com"
NEEDLE = "forced.failure.0815"
TOKEN_PATH = "/confirm/AbCdEf0123456789.secret-token"

LOGGERS = ("", "gunicorn.error", "gunicorn.access", "werkzeug", "rq.worker", "sqlalchemy.engine")


def test_every_logger_redacts_addresses_and_link_tokens(app):
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    for name in LOGGERS:
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        old_level, old_disabled = logger.level, logger.disabled
        logger.setLevel(logging.INFO)
        logger.disabled = False  # e.g. by a logging.config call of an earlier test
        try:
            logger.warning("request for %s", ADDRESS)
            logger.warning("%(r)s", {"r": f"GET {TOKEN_PATH}?email={ADDRESS.replace('@', '%40')}"})
            try:
                raise ValueError(f"cannot deliver to <{ADDRESS}>")
            except ValueError:
                logger.exception("failed")
        finally:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
            logger.disabled = old_disabled
    written = stream.getvalue()
    assert written.count("ValueError: cannot deliver") == len(LOGGERS), "no traceback written"
    assert written.count("[address]") >= 3 * len(LOGGERS)
    assert NEEDLE not in written and "secret-token" not in written


def test_database_errors_carry_no_sql_parameters(app):
    consent = ConsentText(version=1, text="Yes", sha256="0" * 64)
    db.session.add(consent)
    db.session.commit()
    # Its id, not 1: on PostgreSQL the sequence goes on across tests.
    row = {"email": ADDRESS, "requested_at": consent.created_at, "consent_text_id": consent.id}
    db.session.add(Subscriber(**row))
    db.session.commit()
    db.session.add(Subscriber(**row))
    with pytest.raises(IntegrityError) as error:
        db.session.commit()
    db.session.rollback()
    # (PostgreSQL's own DETAIL still names the value: the logging set-up redacts that.)
    assert "[parameters:" not in str(error.value)
    assert "SQL parameters hidden" in str(error.value)


def fail_on(table: str, event: str) -> None:
    """Make every INSERT or UPDATE of ``table`` fail; on PostgreSQL the error quotes the address."""
    if db.engine.dialect.name == "postgresql":
        statements = [
            """CREATE OR REPLACE FUNCTION forced_failure() RETURNS trigger AS $$
                BEGIN RAISE EXCEPTION 'forced failure for %', NEW.email; END;
                $$ LANGUAGE plpgsql""",
            f"CREATE TRIGGER forced_failure BEFORE {event} ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION forced_failure()",
        ]
    else:
        # SQLite resolves a trigger's tables when it fires: "no such table" at every write.
        statements = [
            f"CREATE TRIGGER forced_failure BEFORE {event} ON {table} "
            "BEGIN INSERT INTO forced_failure_table VALUES (1); END"
        ]
    with db.engine.begin() as connection:
        for statement in statements:
            connection.execute(text(statement))


@pytest.fixture
def forced_failures(app):
    yield fail_on
    db.session.remove()  # its open read would block the DROP on PostgreSQL
    with db.engine.begin() as connection:
        if db.engine.dialect.name == "postgresql":
            connection.execute(text("DROP FUNCTION IF EXISTS forced_failure() CASCADE"))
        else:
            connection.execute(text("DROP TRIGGER IF EXISTS forced_failure"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_forced_error_in_a_gunicorn_request_logs_no_address(base_environ, forced_failures):
    forced_failures("pending_signup", "INSERT")
    port = free_port()
    environ = {**os.environ, **base_environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "1",
            "-b",
            f"127.0.0.1:{port}",
            "--access-logfile",
            "-",
            "--error-logfile",
            "-",
            "newsletter:create_app()",
        ],
        env=environ,
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        browser = Browser(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 30
        while True:
            try:
                token = browser.form_token("/subscribe")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        status, _ = browser.request(
            "POST", "/subscribe", {"email": ADDRESS, "consent": "yes", "csrf_token": token}
        )
        assert status == 500  # the forced failure
        browser.request("GET", f"/subscribe?email={ADDRESS.replace('@', '%40')}")
        browser.request("GET", TOKEN_PATH)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode()
    assert "forced" in output and "Traceback" in output, output[-3000:]
    assert "GET /confirm/" in output  # the access log was written, token redacted
    assert NEEDLE not in output and "secret-token" not in output


def test_forced_error_in_a_job_reaches_no_log_and_no_redis(
    app, client, base_environ, forced_failures
):
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite triggers cannot quote a value in their error text")
    response = client.post(
        "/subscribe", data={"email": ADDRESS, "consent": "yes", "csrf_token": csrf_token(client)}
    )
    assert response.status_code == 200
    forced_failures("pending_signup", "UPDATE")
    # Fail it for good at once (no retry), so that RQ keeps its traceback in Redis.
    get_redis().flushdb()
    pending_id = db.session.scalar(select(PendingSignup.id))
    enqueue("mail", subscriptions.send_confirmation, pending_id, job_id=f"confirm-{pending_id}")
    db.session.remove()
    result = run_worker_process(base_environ, "--burst")
    output = result.stdout + result.stderr
    assert "forced failure" in output, output[-3000:]
    assert NEEDLE not in output
    redis = get_redis()
    assert redis.keys("rq:failed:*"), "the job must have failed for good"
    for key in redis.keys("*"):
        for value in redis_values(redis, key):
            assert NEEDLE.encode() not in value + _inflate(value), key


def redis_values(redis, key) -> list[bytes]:
    """Every stored value of a key, one by one (RQ compresses some of them)."""
    kind = redis.type(key)
    if kind == b"hash":
        return list(redis.hgetall(key).values())
    if kind == b"string":
        return [redis.get(key) or b""]
    if kind == b"stream":
        return [value for _, entry in redis.xrange(key) for value in entry.values()]
    if kind in (b"set", b"zset"):
        return list(redis.smembers(key) if kind == b"set" else redis.zrange(key, 0, -1))
    return [key]


def _inflate(data: bytes) -> bytes:
    """The text behind RQ's zlib-compressed (and, in results, base64-encoded) values."""
    for candidate in (data, _b64(data)):
        try:
            return zlib.decompress(candidate)
        except zlib.error:
            pass
    return b""


def _b64(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except ValueError:
        return b""
