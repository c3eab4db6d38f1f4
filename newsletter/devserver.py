"""``make run``: the whole service on one machine, on the embedded defaults.

It starts the embedded Redis, migrates the SQLite database, catches outgoing mail in a
local outbox (an aiosmtpd server writing a Maildir that ``/dev/outbox`` shows), and
runs one worker and the web server as child processes. Ctrl-C or SIGTERM stops all of
it, the embedded Redis included.

Settings (environment): PORT (5000), OUTBOX_PORT (8025, or any free port when that one
is taken), NEWSLETTER_INSTANCE (``./instance``); DATABASE_URL and REDIS_URL when given
are used instead of the embedded defaults.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TextIO

from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox

from newsletter import config, embedded_redis

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
DEFAULT_PORT = 5000
DEFAULT_OUTBOX_PORT = 8025
STARTUP_TIMEOUT = 60
STOP_TIMEOUT = 15


class StartupError(Exception):
    """Something the developer can fix stops the service from starting."""


def say(message: str) -> None:
    print(f"[make run] {message}", flush=True)


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # Like the servers we start: sockets of a stopped run in TIME_WAIT do not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _port(name: str, value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise StartupError(f"{name} must be a port number, not {value!r}")
    return int(value)


def choose_ports(env: dict[str, str]) -> tuple[int, int]:
    """The web port (must be free) and the outbox port (8025 unless taken)."""
    port = _port("PORT", env.get("PORT") or str(DEFAULT_PORT))
    if not port_is_free(port):
        raise StartupError(
            f"port {port} is in use (another `make run`?). Stop it, or choose another port: "
            "PORT=5001 make run (a second copy also needs its own NEWSLETTER_INSTANCE folder)"
        )
    if env.get("OUTBOX_PORT"):
        outbox_port = _port("OUTBOX_PORT", env["OUTBOX_PORT"])
        if not port_is_free(outbox_port):
            raise StartupError(f"OUTBOX_PORT {outbox_port} is in use")
    elif port_is_free(DEFAULT_OUTBOX_PORT):
        outbox_port = DEFAULT_OUTBOX_PORT
    else:
        outbox_port = free_port()
    return port, outbox_port


def migrate(env: dict[str, str]) -> None:
    """``flask db upgrade``, in this process."""
    from flask_migrate import upgrade

    from newsletter import create_app
    from newsletter.extensions import db, get_redis

    app = create_app(environ=env)
    with app.app_context():
        upgrade(directory=str(ROOT / "migrations"))
        db.engine.dispose()
        get_redis().close()


def start_outbox(folder: Path, port: int) -> Controller:
    """An SMTP server on ``port`` that keeps every mail it receives in the Maildir ``folder``."""
    controller = Controller(Mailbox(folder), hostname=HOST, port=port)
    controller.start()
    return controller


_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGTERM when ``make run`` dies, even by SIGKILL (Linux prctl)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def spawn(name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Its own process group: Ctrl-C reaches only us, and we stop the children in order
    # (a worker that got SIGINT from the terminal and then our SIGTERM would kill its job).
    say(f"starting the {name}")
    return subprocess.Popen(
        args, env=env, cwd=str(ROOT), process_group=0, preexec_fn=_die_with_parent
    )


def hold_instance(instance: Path) -> TextIO:
    """Take the instance folder's lock for as long as this run lives; refuse a second run.

    Two copies on one folder would share (and stop) one embedded Redis and one database.
    """
    lock = open(instance / config.MAKE_RUN_LOCK, "a+")  # held until this run ends
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        owner = lock.read().strip() or "?"
        lock.close()
        raise StartupError(
            f"another `make run` (pid {owner}) is using the instance folder {instance}. "
            "Stop it first, or give a second copy its own folder and port: "
            "NEWSLETTER_INSTANCE=instance2 PORT=5001 make run"
        ) from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


# What the CLI in another shell needs to reach this run (config.make_run_settings).
_SHARED_SETTINGS = (
    "NEWSLETTER_ENV",
    "PUBLIC_URL",
    "DATABASE_URL",
    "REDIS_URL",
    "MAIL_SERVER",
    "MAIL_PORT",
    "DEV_OUTBOX_DIR",
)


def write_settings(instance: Path, env: dict[str, str]) -> Path:
    path = instance / config.MAKE_RUN_SETTINGS
    lines = [f"{name}={env[name]}" for name in _SHARED_SETTINGS if env.get(name)]
    path.write_text(
        "# Written by `make run` while it runs; removed when it stops.\n" + "\n".join(lines) + "\n"
    )
    return path


def stop_child(name: str, process: subprocess.Popen) -> None:
    """SIGTERM the child's process group, wait, and SIGKILL whatever is left."""
    if process.poll() is None:
        say(f"stopping the {name}")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            say(f"the {name} did not stop within {STOP_TIMEOUT} s; killing it")
    # Members of the group that outlived their leader (an RQ scheduler, a reloader child).
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def wait_until_healthy(
    url: str, children: dict[str, subprocess.Popen], stop: threading.Event
) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not stop.is_set():
        for name, process in children.items():
            if process.poll() is not None:
                raise StartupError(
                    f"the {name} exited during startup (status {process.returncode})"
                )
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise StartupError(f"the web server did not answer {url} within {STARTUP_TIMEOUT} s")
        stop.wait(0.2)


def banner(public_url: str, outbox_port: int, outbox: Path, database: str) -> str:
    return "\n".join(
        [
            "",
            "  The newsletter service runs (development mode).",
            "",
            f"  Sign-up form:      {public_url}/",
            f"  Caught mail:       {public_url}/dev/outbox",
            f"  Health:            {public_url}/healthz",
            "",
            f"  Local outbox SMTP: {HOST}:{outbox_port} (Maildir {outbox})",
            f"  Database:          {database}",
            "",
            "  Press Ctrl-C to stop everything.",
            "",
        ]
    )


def run(env: dict[str, str], stop: threading.Event) -> int:
    instance = Path(env.get("NEWSLETTER_INSTANCE") or ROOT / "instance").resolve()
    instance.mkdir(parents=True, exist_ok=True)
    lock = hold_instance(instance)
    try:
        return _run(instance, env, stop)
    finally:
        (instance / config.MAKE_RUN_SETTINGS).unlink(missing_ok=True)
        lock.close()


def _run(instance: Path, env: dict[str, str], stop: threading.Event) -> int:
    port, outbox_port = choose_ports(env)
    outbox = instance / "outbox"
    public_url = f"http://{HOST}:{port}"
    env = {
        **env,
        "NEWSLETTER_ENV": "development",
        "NEWSLETTER_INSTANCE": str(instance),
        "PUBLIC_URL": public_url,
        "DEV_OUTBOX_DIR": str(outbox),
        "MAIL_SERVER": HOST,
        "MAIL_PORT": str(outbox_port),
        "MAIL_USE_TLS": "false",
        "MAIL_USE_SSL": "false",
        "MAIL_USERNAME": "",
        "MAIL_PASSWORD": "",
        "FLASK_RUN_HOST": HOST,
        "FLASK_RUN_PORT": str(port),
        "PYTHONUNBUFFERED": "1",
    }
    with contextlib.ExitStack() as cleanup:
        if not env.get("REDIS_URL"):
            say(f"starting the embedded Redis in {instance}")
            cleanup.callback(embedded_redis.stop, instance)
            env["REDIS_URL"] = embedded_redis.ensure_running(instance)
        say("migrating the database")
        migrate(env)
        outbox_server = start_outbox(outbox, outbox_port)
        cleanup.callback(outbox_server.stop)
        say(f"the local outbox listens on {HOST}:{outbox_port}")

        children: dict[str, subprocess.Popen] = {}
        worker = spawn("worker", [sys.executable, str(ROOT / "worker.py")], env)
        cleanup.callback(stop_child, "worker", worker)
        children["worker"] = worker
        flask_run = [
            "-m",
            "flask",
            "--app",
            "newsletter",
            "run",
            "--host",
            HOST,
            "--port",
            str(port),
        ]
        web = spawn("web server", [sys.executable, *flask_run], env)
        cleanup.callback(stop_child, "web server", web)  # stopped first: no new jobs
        children["web server"] = web

        wait_until_healthy(f"{public_url}/healthz", children, stop)
        if stop.is_set():
            return 0
        write_settings(instance, env)
        database = env.get("DATABASE_URL") or str(instance / "newsletter.db")
        print(banner(public_url, outbox_port, outbox, database), flush=True)
        while not stop.wait(0.5):
            for name, process in children.items():
                if process.poll() is not None:
                    say(f"the {name} exited (status {process.returncode}); stopping everything")
                    return 1
        say("stopping")
    say("stopped")
    return 0


def watch_parent(stop: threading.Event) -> None:
    """Stop when our parent (``make``, a shell) goes away without a signal reaching us."""
    parent = os.getppid()
    while not stop.wait(0.5):
        if os.getppid() != parent:
            say("the parent process is gone; stopping")
            stop.set()


def main() -> int:
    stop = threading.Event()

    def request_stop(signum, frame) -> None:
        stop.set()

    # Ctrl-C, a kill, and a closed terminal (SIGHUP) all stop everything we started.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, request_stop)
    threading.Thread(target=watch_parent, args=(stop,), daemon=True, name="parent").start()
    try:
        return run(config.process_environ(), stop)
    except StartupError as exc:
        say(f"error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
