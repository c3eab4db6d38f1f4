"""A throwaway Dovecot for the IMAP poll tests: Debian's dovecot-imapd, started by root.

A configuration of its own: IMAPS only, on a free 127.0.0.1 port, a self-signed
certificate made with openssl (trusted through BOUNCE_IMAP_CA_FILE), one passwd-file
user, maildirs in /tmp. The system's Dovecot (if any) is not touched.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.postfix import free_port
from tests.tls import self_signed

DOVECOT = "/usr/sbin/dovecot"
USER, PASSWORD = "bounces", "a-long-test-password"

CONFIG = """\
protocols = imap
listen = 127.0.0.1
base_dir = {folder}/run
state_dir = {folder}/state
log_path = {folder}/dovecot.log
ssl = required
ssl_cert = <{folder}/cert.pem
ssl_key = <{folder}/key.pem
auth_mechanisms = plain
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {folder}/passwd
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={folder}/mail/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {port}
    ssl = yes
  }}
}}
"""


class Dovecot:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.ca_file = str(folder / "cert.pem")
        self.url = f"imaps://{USER}:{PASSWORD}@127.0.0.1:{port}/INBOX"
        # The service's settings for this mailbox (as test_config or environment).
        self.settings = {"BOUNCE_IMAP_URL": self.url, "BOUNCE_IMAP_CA_FILE": self.ca_file}

    def connect(self) -> imaplib.IMAP4_SSL:
        context = ssl.create_default_context(cafile=self.ca_file)
        imap = imaplib.IMAP4_SSL("127.0.0.1", self.port, ssl_context=context, timeout=30)
        imap.login(USER, PASSWORD)
        return imap

    def append(self, *messages: bytes) -> None:
        with self.connect() as imap:
            for message in messages:
                assert imap.append("INBOX", None, None, message)[0] == "OK"

    def count(self) -> int:
        with self.connect() as imap:
            imap.select("INBOX")
            return len(imap.uid("SEARCH", "ALL")[1][0].split())

    def empty(self) -> None:
        with self.connect() as imap:
            imap.select("INBOX")
            for uid in imap.uid("SEARCH", "ALL")[1][0].split():
                imap.uid("STORE", uid.decode(), "+FLAGS.SILENT", r"(\Deleted)")
            imap.expunge()


@contextmanager
def throwaway_dovecot() -> Iterator[Dovecot]:
    """Start Dovecot (skip the test without it, or when not root); stop and remove it after."""
    if not os.path.exists(DOVECOT):
        pytest.skip(f"{DOVECOT} is missing (apt-get install dovecot-imapd)")
    if os.geteuid() != 0:
        pytest.skip("the throwaway Dovecot is started by root, as CI runs")
    folder = Path(tempfile.mkdtemp(prefix="nl-dovecot-"))
    folder.chmod(0o755)
    self_signed(folder)
    (folder / "mail").mkdir()
    shutil.chown(folder / "mail", "nobody", "nogroup")
    (folder / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}\n")
    port = free_port()
    (folder / "dovecot.conf").write_text(CONFIG.format(folder=folder, port=port))
    process = subprocess.Popen(
        [DOVECOT, "-F", "-c", str(folder / "dovecot.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    server = Dovecot(folder, port)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                server.connect().logout()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    log = (folder / "dovecot.log").read_text(errors="replace")
                    pytest.fail(f"dovecot did not start: {process.stderr.read()!r} {log}")
                time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        process.wait(timeout=30)
        process.stderr.close()
        shutil.rmtree(folder, ignore_errors=True)
