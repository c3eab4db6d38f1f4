"""A throwaway Postfix for tests: Debian's postfix package, started by root, on loopback.

It gets its own config_directory, queue_directory and data_directory under /tmp and
listens on a free port of 127.0.0.1 only; the system's Postfix (if any) is not touched.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

BASE_CF = """\
compatibility_level = 3.6
# The mail host mx.example.net; its own name is its only local domain; no aliases.
myhostname = mx.example.net
mydomain = example.net
myorigin = $myhostname
mydestination = $myhostname
alias_maps =
alias_database =
queue_directory = {folder}/queue
data_directory = {folder}/data
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtp_dns_support_level = disabled
maillog_file_prefixes = /tmp
maillog_file = {folder}/maillog
biff = no
"""


@dataclass
class Postfix:
    port: int
    folder: Path

    def maillog(self) -> str:
        path = self.folder / "maillog"
        return path.read_text() if path.exists() else ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def throwaway_postfix(settings: str) -> Iterator[Postfix]:
    """Run Postfix with BASE_CF plus ``settings`` (main.cf lines); stop and remove it after.

    Skips the test when postfix is not installed or we are not root.
    """
    if not shutil.which("postfix") and not os.path.exists("/usr/sbin/postfix"):
        pytest.skip("postfix is not installed (apt-get install postfix)")
    if os.geteuid() != 0:
        pytest.skip("a throwaway Postfix must be started by root")
    folder = Path(tempfile.mkdtemp(prefix="nl-postfix-"))
    folder.chmod(0o755)  # the postfix user walks into its queue below it
    for name in ("etc", "queue", "data"):
        (folder / name).mkdir()
    shutil.chown(folder / "data", "postfix")
    server = Postfix(free_port(), folder)
    (folder / "etc" / "main.cf").write_text(BASE_CF.format(folder=folder) + settings)
    (folder / "etc" / "master.cf").write_text(_master_cf(server.port))
    command = ["/usr/sbin/postfix", "-c", str(folder / "etc")]
    started = subprocess.run([*command, "start"], capture_output=True, text=True, timeout=60)
    if started.returncode != 0:
        log = server.maillog()
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"postfix did not start: {started.stderr} {log[-2000:]}")
    try:
        wait_for_port(server.port)
        yield server
    finally:
        subprocess.run([*command, "stop"], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _master_cf(port: int) -> str:
    """Debian's master.cf, unchrooted, with smtpd on ``port`` of 127.0.0.1 only."""
    lines = []
    for line in Path("/etc/postfix/master.cf").read_text().splitlines():
        fields = line.split()
        if line.startswith(("#", " ", "\t")) or len(fields) < 8:
            lines.append(line)
            continue
        if fields[:2] == ["smtp", "inet"]:
            fields[0] = f"127.0.0.1:{port}"
        fields[4] = "n"  # no chroot: the queue is a plain folder in /tmp
        lines.append("  ".join(fields))
    return "\n".join(lines) + "\n"


def wait_for_port(port: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")
