"""Unsubscribe = erasure: after it returns, the address is in no table, file, Redis key or log.

The reader here has everything a subscriber can leave behind: a confirmed subscription,
a repeated sign-up waiting in the queue, an address change waiting for confirmation, a
manage-link mail, and a delivery of a sending campaign deferred by their server.
"""

from __future__ import annotations

import http.client
import json
import threading
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from rq import SimpleWorker
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import make_url
from werkzeug.serving import make_server

from newsletter import stats, subscriptions, tokens
from newsletter.extensions import db, get_redis
from newsletter.models import (
    Campaign,
    CampaignStatus,
    DeferredDelivery,
    PendingSignup,
    Subscriber,
    utcnow,
)
from newsletter.queue import QUEUE_NAMES, get_queue
from tests.conftest import csrf_token, link_in, path_of, service_log

ADDRESS = "Erase.Me.4711@Example.com"
NEW_ADDRESS = "moved.away.4711@example.com"
# What must be nowhere: the local parts are unique to this module.
NEEDLES = [b"erase.me.4711", b"moved.away.4711"]


def work_loudly() -> None:
    """Run queued jobs with RQ logging at DEBUG, so its log lines are checked too."""
    worker = SimpleWorker([get_queue(name) for name in QUEUE_NAMES], connection=get_redis())
    worker.work(burst=True, logging_level="DEBUG")


@contextmanager
def live_server(app):
    """Serve the app over real HTTP (werkzeug, with its access log) in a thread."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def gmail_post(port: int, path: str) -> tuple[int, dict, bytes]:
    """The one-click request as Gmail sends it: a form POST, no cookie, no token, no Referer."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(
            "POST",
            path,
            body=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def reader_with_everything(app, client, work, smtp, subscribed) -> tuple[int, str]:
    """Subscribe ADDRESS and give it every kind of data we hold; return (id, unsubscribe path)."""
    subscribed(ADDRESS)
    reader = db.session.scalar(select(Subscriber))
    assert reader.email == ADDRESS.lower()

    # A delivery deferred by a 4xx while a campaign is sending.
    campaign = Campaign(
        subject="November", html="<p>Hi</p>", text="Hi", status=CampaignStatus.SENDING
    )
    db.session.add(campaign)
    db.session.flush()
    db.session.add(
        DeferredDelivery(campaign_id=campaign.id, subscriber_id=reader.id, next_attempt_at=utcnow())
    )
    db.session.commit()

    # A manage-link mail, and through the manage page an address change awaiting confirmation.
    client.post("/manage", data={"email": ADDRESS, "csrf_token": csrf_token(client, "/manage")})
    work_loudly()
    manage = path_of(link_in(smtp.to(ADDRESS.lower())[-1].text, "manage"))
    response = client.post(
        f"{manage}/email", data={"email": NEW_ADDRESS, "csrf_token": csrf_token(client, manage)}
    )
    assert response.status_code == 200
    work_loudly()
    assert smtp.to(NEW_ADDRESS), "no confirmation mail to the new address"
    assert client.get(f"{manage}/export").status_code == 200

    # The sign-up form sent again; its job still waits in the queue.
    client.post(
        "/subscribe",
        data={"email": ADDRESS, "consent": "yes", "csrf_token": csrf_token(client)},
    )
    assert db.session.scalar(select(func.count()).select_from(PendingSignup)) == 2
    assert db.session.scalar(select(func.count()).select_from(DeferredDelivery)) == 1
    return reader.id, path_of(tokens.unsubscribe_url(reader))


def erase_through(route: str, app, client, runner, unsubscribe_path: str) -> None:
    if route == "one-click":
        with live_server(app) as port:
            status, headers, body = gmail_post(port, unsubscribe_path)
        assert status == 200 and "Location" not in headers and "Set-Cookie" not in headers
        assert b"unsubscribed" in body
    elif route == "manage":
        reader = db.session.scalar(select(Subscriber))
        manage = path_of(tokens.manage_url(reader))
        response = client.post(f"{manage}/delete", data={"csrf_token": csrf_token(client, manage)})
        assert response.status_code == 200
    else:
        result = runner.invoke(args=["subscriber", "delete", ADDRESS, "--yes"])
        assert result.exit_code == 0, result.output
        assert "erase.me" not in result.output.lower()


def table_dump() -> bytes:
    """Every row of every table in the database, as text."""
    db.session.remove()
    rows = []
    with db.engine.connect() as connection:
        for table in inspect(connection).get_table_names():
            for row in connection.execute(text(f'SELECT * FROM "{table}"')):
                rows.append(f"{table}: {tuple(row)!r}")
    assert any(row.startswith("campaign:") for row in rows)
    return "\n".join(rows).encode()


def redis_dump() -> bytes:
    """Every Redis key with its DUMP and its readable value (RQ's job data unzipped)."""
    redis = get_redis()
    blobs = []
    for key in redis.scan_iter("*"):
        blobs += [key, redis.dump(key) or b""]
        kind = redis.type(key).decode()
        if kind == "string":
            values = [redis.get(key) or b""]
        elif kind == "hash":
            values = [b for pair in redis.hgetall(key).items() for b in pair]
        elif kind == "list":
            values = redis.lrange(key, 0, -1)
        elif kind == "set":
            values = list(redis.smembers(key))
        elif kind == "zset":
            values = [member for member, _ in redis.zrange(key, 0, -1, withscores=True)]
        elif kind == "stream":
            values = [b for _, fields in redis.xrange(key) for pair in fields.items() for b in pair]
        else:
            values = []
        for value in values:
            blobs.append(value)
            try:
                blobs.append(zlib.decompress(value))  # RQ compresses pickled job arguments
            except zlib.error:
                pass
    return b"\n".join(blobs)


def assert_absent(blob: bytes, where: str) -> None:
    lowered = blob.lower()
    for needle in NEEDLES:
        assert needle not in lowered, f"{needle!r} found in {where}"


ROUTES = ["one-click", "manage", "staff"]


@pytest.mark.parametrize("route", ROUTES)
def test_erasure_leaves_no_trace_in_tables_redis_or_logs(
    route, app, client, runner, work, smtp, subscribed, logs
):
    reader_id, path = reader_with_everything(app, client, work, smtp, subscribed)
    # The needles must be findable where they are: otherwise the checks below prove nothing.
    assert b"erase.me.4711" in table_dump() and b"moved.away.4711" in table_dump()

    erase_through(route, app, client, runner, path)

    assert_absent(table_dump(), "the database tables")
    assert db.session.scalar(select(func.count()).select_from(DeferredDelivery)) == 0
    assert db.session.scalar(select(func.count()).select_from(PendingSignup)) == 0
    assert db.session.scalar(select(func.count()).select_from(Campaign)) == 1
    assert_absent(redis_dump(), "Redis")
    assert any(k.startswith(b"rq:") for k in get_redis().keys("*")), "Redis check saw no jobs"

    logged = service_log(logs).encode()
    assert_absent(logged, "the logs")
    assert f"subscriber {reader_id} erased" in logs.text
    if route == "one-click":
        assert any(
            r.name == "werkzeug" and "POST /unsubscribe/" in r.getMessage() for r in logs.records
        )
    assert any(r.name.startswith("rq") for r in logs.records), "RQ's logs were not captured"
    kind = {"one-click": "unsubscribe", "manage": "manage", "staff": "staff"}[route]
    assert stats.monthly([f"erased_{kind}"])


@pytest.mark.parametrize("route", ROUTES)
def test_erasure_leaves_no_trace_in_the_sqlite_file_or_its_wal(
    route, app, client, runner, work, smtp, subscribed, database_url
):
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        pytest.skip("the database files belong to the PostgreSQL server, not to us")
    files = [Path(url.database + suffix) for suffix in ("", "-wal", "-shm")]
    _, path = reader_with_everything(app, client, work, smtp, subscribed)
    before = b"".join(f.read_bytes() for f in files if f.exists())
    assert b"erase.me.4711" in before.lower(), "the file check would prove nothing"

    erase_through(route, app, client, runner, path)

    for file in files:
        if file.exists():
            assert_absent(file.read_bytes(), file.name)


def test_erasing_one_reader_keeps_the_others(app, client, work, smtp, subscribed):
    subscribed("keep.me@example.com")
    subscribed("go.away@example.com")
    gone = db.session.scalar(select(Subscriber).where(Subscriber.email == "go.away@example.com"))
    subscriptions.erase(gone, "unsubscribe")
    assert db.session.scalars(select(Subscriber.email)).all() == ["keep.me@example.com"]


# --- staff commands --------------------------------------------------------------------


def test_cli_export_prints_the_same_json_as_the_download(app, runner, subscribed):
    subscribed("by.post@example.com")
    result = runner.invoke(args=["subscriber", "export", "By.Post@Example.com"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["email"] == "by.post@example.com"
    assert set(data) >= {"requested_at", "confirmed_at", "consent", "ip_prefix", "email_changed_at"}
    assert data["consent"]["text"] and len(data["consent"]["sha256"]) == 64

    unknown = runner.invoke(args=["subscriber", "export", "nobody@example.com"])
    assert unknown.exit_code != 0 and "No subscriber" in unknown.output


def test_cli_delete_asks_first_and_erases(app, runner, client, subscribed):
    subscribed("by.mail@example.com")
    refused = runner.invoke(args=["subscriber", "delete", "by.mail@example.com"], input="n\n")
    assert refused.exit_code != 0
    assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 1

    done = runner.invoke(args=["subscriber", "delete", "by.mail@example.com"], input="y\n")
    assert done.exit_code == 0 and "Deleted" in done.output
    assert db.session.scalar(select(func.count()).select_from(Subscriber)) == 0

    again = runner.invoke(args=["subscriber", "delete", "by.mail@example.com", "--yes"])
    assert again.exit_code != 0 and "No subscriber" in again.output


def test_cli_delete_also_forgets_an_unconfirmed_sign_up(app, runner, client):
    client.post(
        "/subscribe",
        data={"email": "half@example.com", "consent": "yes", "csrf_token": csrf_token(client)},
    )
    assert db.session.scalar(select(func.count()).select_from(PendingSignup)) == 1
    result = runner.invoke(args=["subscriber", "delete", "half@example.com", "--yes"])
    assert result.exit_code == 0
    assert db.session.scalar(select(func.count()).select_from(PendingSignup)) == 0


def test_cli_stats_counts_erasures_by_route_without_addresses(app, runner, client, subscribed):
    for email in ("one@example.com", "two@example.com", "three@example.com"):
        subscribed(email)
    reader = db.session.scalar(select(Subscriber).where(Subscriber.email == "one@example.com"))
    app.test_client(use_cookies=False).post(path_of(tokens.unsubscribe_url(reader)))
    runner.invoke(args=["subscriber", "delete", "two@example.com", "--yes"])

    result = runner.invoke(args=["subscriber", "stats"])

    assert result.exit_code == 0
    assert "subscribers: 1" in result.output
    month = utcnow().strftime("%Y-%m")
    lines = result.output.splitlines()
    assert any(
        line.startswith(month) and "erased_unsubscribe" in line and line.endswith(" 1")
        for line in lines
    )
    assert any("erased_staff" in line and line.endswith(" 1") for line in lines)
    assert any("confirmed" in line and line.endswith(" 3") for line in lines)
    assert "@" not in result.output
