"""What an operator sees: clear configuration errors, and ``make run`` from start to Ctrl-C."""

from __future__ import annotations

import http.cookiejar
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from newsletter import embedded_redis
from newsletter.devserver import free_port
from tests.conftest import CSRF_INPUT, ROOT, SECRET

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, "SECRET_KEY"),
        (
            {"SECRET_KEY": SECRET, "DATABASE_URL": "mysql://user@db.example.com/news"},
            "DATABASE_URL",
        ),
        (
            {"SECRET_KEY": SECRET, "DATABASE_URL": "sqlite:////no/such/folder/news.db"},
            "DATABASE_URL",
        ),
        ({"SECRET_KEY": SECRET, "REDIS_URL": "http://127.0.0.1:6379"}, "REDIS_URL"),
        ({"SECRET_KEY": "s" * 31}, "at least 32"),
        ({"SECRET_KEY": SECRET, "PUBLIC_URL": "https://bad_hostä.example/"}, "PUBLIC_URL"),
        ({"SECRET_KEY": SECRET, "LIST_ID": "News <not an id>"}, "LIST_ID"),
    ],
    ids=[
        "no-secret-key",
        "mysql-database",
        "missing-sqlite-folder",
        "http-redis",
        "short-secret-key",
        "bad-idn-public-url",
        "bad-list-id",
    ],
)
def test_bad_configuration_exits_with_a_clear_message(tmp_path, settings, named):
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "NEWSLETTER_ENV": "production",
        "NEWSLETTER_INSTANCE": str(tmp_path),
        **settings,
    }
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "newsletter", "routes"],
        env=environ,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert named in result.stderr
    assert "configuration error" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


class Browser:
    """Just enough of a browser for the test: cookies, GET, and form POSTs."""

    def __init__(self, base: str) -> None:
        self.base = base
        jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    def open(self, url: str, form: dict | None = None) -> tuple[int, str]:
        if not url.startswith("http"):
            url = self.base + url
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with self.opener.open(url, data=data, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()
        except (urllib.error.URLError, OSError):
            return 0, ""

    def submit(self, url: str, form: dict) -> tuple[int, str]:
        """Load the page with the form, then post ``form`` with its CSRF token."""
        status, page = self.open(url)
        match = CSRF_INPUT.search(page)
        assert match, f"no form on {url} ({status})"
        return self.open(url, {**form, "csrf_token": match.group(1)})


def _children_by_parent() -> dict[int, list[int]]:
    """Every process's children, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``."""
    children = _children_by_parent()
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def direct_children(pid: int) -> set[int]:
    return set(_children_by_parent().get(pid, []))


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float, message: str, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    pytest.fail(f"{message}\n--- make run output ---\n{log.read_text()}")


def test_make_run_serves_catches_mail_confirms_and_stops_cleanly(tmp_path):
    instance = tmp_path / "instance"
    port, outbox_port = free_port(), free_port()
    log = tmp_path / "run.log"
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", str(tmp_path)),
        "NEWSLETTER_INSTANCE": str(instance),
        "PORT": str(port),
        "OUTBOX_PORT": str(outbox_port),
    }
    with log.open("w") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "newsletter.devserver"],
            cwd=str(ROOT),
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
            process_group=0,
        )
    base = f"http://127.0.0.1:{port}"
    browser = Browser(base)
    children: set[int] = set()
    try:
        # It says where to look once everything answers.
        wait_for(
            lambda: f"{base}/dev/outbox" in log.read_text(), 90, "make run did not come up", log
        )
        assert browser.open("/healthz")[0] == 200

        status, page = browser.submit(
            "/subscribe", {"email": "newcomer@example.com", "consent": "yes"}
        )
        assert status == 200 and "Check your inbox" in page

        def caught_mail():
            outbox = browser.open("/dev/outbox")[1]
            return "newcomer@example.com" in outbox and re.search(
                r'href="(/dev/outbox/[^"]+)"', outbox
            )

        mail_path = wait_for(caught_mail, 30, "the worker sent no mail to the outbox", log).group(1)
        status, mail = browser.open(mail_path)
        assert status == 200
        confirm_url = re.search(rf'href="({re.escape(base)}/confirm/[^"]+)"', mail).group(1)
        status, page = browser.submit(confirm_url, {})
        assert status == 200 and "You're subscribed" in page

        children = descendants(server.pid)
        assert len(children) >= 2, "expected at least the worker and the web server"
        children.add(int((instance / "redis.pid").read_text()))  # daemonized, so not below us
        assert all(alive(pid) for pid in children)

        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=60) == 0, log.read_text()
        assert [pid for pid in children if alive(pid)] == [], log.read_text()
        assert not embedded_redis.socket_path(instance).exists()
        assert browser.open("/healthz")[0] == 0  # nothing listens any more
        assert "[make run] stopped" in log.read_text()
    finally:
        # A failed assertion leaves the service running: stop it the normal way first; its
        # children have their own process groups, so SIGKILL reaches them one by one.
        if server.poll() is None:
            children |= descendants(server.pid)
            server.send_signal(signal.SIGINT)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        embedded_redis.stop(instance)


def test_make_run_refuses_a_busy_port_and_starts_nothing(tmp_path):
    instance = tmp_path / "instance"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "newsletter.devserver"],
            cwd=str(ROOT),
            env={
                "PATH": os.environ.get("PATH", ""),
                "NEWSLETTER_INSTANCE": str(instance),
                "PORT": str(port),
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} is in use" in result.stdout
    assert "PORT=5001 make run" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert not embedded_redis.socket_path(instance).exists()


class MakeRun:
    """``make run`` (python -m newsletter.devserver) in its own process group, with its log."""

    def __init__(self, tmp_path: Path, name: str = "run", parent_shell: bool = False) -> None:
        self.instance = tmp_path / "instance"
        self.port = free_port()
        self.log = tmp_path / f"{name}.log"
        self.environ = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", str(tmp_path)),
            "NEWSLETTER_INSTANCE": str(self.instance),
            "PORT": str(self.port),
            "OUTBOX_PORT": str(free_port()),
        }
        command = [sys.executable, "-m", "newsletter.devserver"]
        if parent_shell:  # like make: a parent that can die without passing a signal on
            command = ["sh", "-c", f"{sys.executable} -m newsletter.devserver & wait"]
        with self.log.open("w") as output:
            self.process = subprocess.Popen(
                command,
                cwd=str(ROOT),
                env=self.environ,
                stdout=output,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        self.base = f"http://127.0.0.1:{self.port}"

    def wait_until_up(self) -> set[int]:
        """Wait for the banner; return the pids of everything it started."""
        wait_for(
            lambda: f"{self.base}/dev/outbox" in self.log.read_text(),
            90,
            "make run did not come up",
            self.log,
        )
        pids = descendants(self.process.pid)
        pids.add(int((self.instance / "redis.pid").read_text()))
        return pids

    def pid_of_redis(self) -> str:
        return (self.instance / "redis.pid").read_text()

    def stop(self, pids: set[int]) -> None:
        pids |= descendants(self.process.pid) if self.process.poll() is None else set()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        embedded_redis.stop(self.instance)


@pytest.mark.parametrize("how", ["sighup", "parent-killed"])
def test_make_run_stops_everything_when_the_terminal_closes_or_its_parent_dies(tmp_path, how):
    run = MakeRun(tmp_path, parent_shell=how == "parent-killed")
    pids: set[int] = set()
    try:
        pids = run.wait_until_up()
        assert len(pids) >= 3, "expected at least the worker, the web server and Redis"
        if how == "sighup":
            run.process.send_signal(signal.SIGHUP)
        else:
            run.process.kill()  # the shell standing in for make, SIGKILLed: no signal passed on
        wait_for(
            lambda: not [pid for pid in pids if alive(pid)],
            60,
            f"processes left running: {[pid for pid in pids if alive(pid)]}",
            run.log,
        )
        assert not embedded_redis.socket_path(run.instance).exists()
        assert port_is_free_now(run.port), "the web port is still taken"
    finally:
        run.stop(pids)


def port_is_free_now(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_a_second_make_run_on_the_same_instance_is_refused_and_the_first_keeps_running(tmp_path):
    first = MakeRun(tmp_path)
    pids: set[int] = set()
    try:
        pids = first.wait_until_up()
        second = subprocess.run(
            [sys.executable, "-m", "newsletter.devserver"],
            cwd=str(ROOT),
            env={**first.environ, "PORT": str(free_port()), "OUTBOX_PORT": str(free_port())},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        assert f"another `make run` (pid {first.process.pid})" in second.stdout
        assert "NEWSLETTER_INSTANCE=" in second.stdout
        # The worker and the web server (transient work horses come and go) and Redis.
        lasting = direct_children(first.process.pid) | {int(first.pid_of_redis())}
        assert all(alive(pid) for pid in lasting), "the refused copy touched the first one"
        assert lasting <= pids
        assert Browser(first.base).open("/healthz")[0] == 200
    finally:
        first.stop(pids)


def test_the_cli_next_to_make_run_needs_no_settings(tmp_path):
    run = MakeRun(tmp_path)
    pids: set[int] = set()
    # A fresh shell: nothing but PATH and HOME, and (only because this test's instance
    # folder is not ./instance) where the instance is.
    shell = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": run.environ["HOME"],
        "NEWSLETTER_INSTANCE": str(run.instance),
    }
    try:
        pids = run.wait_until_up()
        created = subprocess.run(
            [
                sys.executable,
                "-m",
                "flask",
                "--app",
                "newsletter",
                "admin",
                "create",
                "staff@example.com",
                "--password-stdin",
            ],
            cwd=str(ROOT),
            env=shell,
            input="a long enough password\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert created.returncode == 0, created.stderr
        assert f"{run.base}/admin/login" in created.stdout
        assert "development settings of the `make run`" in created.stderr
        status, page = Browser(run.base).submit(
            "/admin/login", {"email": "staff@example.com", "password": "a long enough password"}
        )
        assert status == 200 and "Log out" in page, "the account is not in make run's database"
    finally:
        run.stop(pids)
    after = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "newsletter", "admin", "list"],
        cwd=str(ROOT),
        env=shell,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert after.returncode != 0 and "SECRET_KEY" in after.stderr, "stale settings were used"
