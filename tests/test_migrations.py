"""``flask --app newsletter db upgrade`` from the command line, as an operator runs it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def flask(*args, instance: Path, **env) -> subprocess.CompletedProcess:
    environ = {
        "PATH": os.environ.get("PATH", ""),
        "NEWSLETTER_ENV": "development",
        "NEWSLETTER_INSTANCE": str(instance),
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "newsletter", *args],
        cwd=str(ROOT),
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.slow
def test_db_upgrade_twice_on_sqlite_records_its_version(tmp_path):
    instance = Path("/tmp") / f"nl-mig-{os.getpid()}"
    for _ in range(2):
        result = flask("db", "upgrade", instance=instance)
        assert result.returncode == 0, result.stderr[-2000:]
    with sqlite3.connect(instance / "newsletter.db") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [
            ("0001",)
        ]
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
    # Migrating needs no Redis, so none was started (and none is left running).
    assert not (instance / "redis.sock").exists()
    assert "Traceback" not in result.stderr
