"""``python worker.py``: a real forking RQ worker in its own process."""

from __future__ import annotations

from sqlalchemy import select

from newsletter.extensions import db
from newsletter.models import PendingSignup
from tests.conftest import csrf_token, run_worker_process


def test_worker_process_sends_the_confirmation_and_logs_no_address(app, client, smtp, base_environ):
    response = client.post(
        "/subscribe",
        data={
            "email": "worker.reader@example.com",
            "consent": "yes",
            "csrf_token": csrf_token(client),
        },
    )
    assert response.status_code == 200
    db.session.remove()
    result = run_worker_process(base_environ, "--burst", "--verbose")
    assert result.returncode == 0, result.stderr[-2000:]
    assert [m.rcpt_tos for m in smtp.messages] == [["worker.reader@example.com"]]
    logs = result.stdout + result.stderr
    assert "confirm-" in logs  # the worker did log the job, by id
    assert "worker.reader" not in logs
    assert db.session.scalar(select(PendingSignup.mail_sent_at)) is not None


def run_probe(base_environ, probe: str) -> str:
    """Run ``probe`` in a fresh Python with the test settings; its standard output."""
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run(
        [sys.executable, "-c", probe],
        env={**os.environ, **base_environ, "PYTHONPATH": str(ROOT)},
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_a_worker_process_does_not_pay_for_password_hashing(base_environ):
    """Argon2id's 64 MiB are for checking staff passwords, which a worker never does; the
    staff pages, the API and the migrations are not a worker's business either."""
    probe = (
        "import sys, worker\n"
        "from newsletter import create_app\n"
        "create_app(front_ends=False)\n"  # as worker.main builds it
        "heavy = ('argon2', 'pydantic', 'alembic', 'markdown', 'newsletter.admin')\n"
        "print(*[name for name in heavy if name in sys.modules])\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    stdout = run_probe(base_environ, probe)
    loaded, peak = stdout.rstrip("\n").rsplit("\n", 1)
    assert loaded.split() == [], "the worker imports what only staff, API or CLI use"
    peak_mib = int(peak) / 1024
    # The staff pages, the API and Alembic took it from 101 to 75 MiB (SQLite; 111 to
    # 84 on PostgreSQL); a work horse inherits all of it.
    assert peak_mib < 95, f"a worker's start-up peaked at {peak_mib:.0f} MiB"


def test_a_work_horse_inherits_what_the_worker_prepared(base_environ):
    """RQ forks a horse per batch; what each horse would set up again cost a fifth of a
    send at loopback (the ORM's mappers, the edition's templates, and a full garbage
    collection over the inherited objects). The worker itself keeps collecting."""
    probe = (
        "import gc, os, worker\n"
        "from newsletter import create_app\n"
        "from newsletter.models import Campaign\n"
        "app = create_app(front_ends=False)\n"
        "worker.prepare_work_horses(app)\n"
        "read, write = os.pipe()\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    names = ' '.join(sorted(name for _, name in app.jinja_env.cache.keys()))\n"
        "    horse = f'{gc.get_freeze_count()} {Campaign.__mapper__.configured} {names}'\n"
        "    os.write(write, horse.encode())\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(os.read(read, 1000).decode())\n"
        "print(gc.get_freeze_count())\n"
    )
    stdout = run_probe(base_environ, probe)
    horse, parent = stdout.rstrip("\n").split("\n")
    frozen, configured, *templates = horse.split()
    assert int(frozen) > 100_000  # the horse's collector leaves the inherited objects alone
    assert configured == "True"
    assert {"mail/edition.html", "mail/edition.txt"} <= set(templates)
    assert parent == "0"  # the worker's own objects are collected as ever


def run_ticking_worker(base_environ, *args: str, seconds: float = 10) -> str:
    """Run ``python worker.py`` ticking every second for a few seconds; its output."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tests.conftest import ROOT

    process = subprocess.Popen(
        [sys.executable, str(ROOT / "worker.py"), *args],
        env={**os.environ, **base_environ, "PYTHONPATH": str(ROOT), "TICK_INTERVAL": "1s"},
        cwd=str(ROOT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    time.sleep(seconds)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=60)
    return output


def test_a_worker_ticks_quietly_by_default_and_tells_every_job_with_verbose(app, base_environ):
    quiet = run_ticking_worker(base_environ)
    assert "tick" not in quiet.lower(), quiet[-2000:]
    verbose = run_ticking_worker(base_environ, "--verbose")
    assert verbose.lower().count("tick") >= 3, verbose[-2000:]  # one job per second
