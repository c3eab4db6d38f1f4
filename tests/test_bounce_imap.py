"""The IMAP poll against a real Dovecot: each message handled once, then deleted.

The test starts Debian's dovecot-imapd (apt-get install dovecot-imapd) with a throwaway
configuration: IMAPS only, on a free 127.0.0.1 port, a self-signed certificate made with
openssl (trusted through BOUNCE_IMAP_CA_FILE), one passwd-file user, maildirs in /tmp.
"""

from __future__ import annotations

import imaplib
import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from newsletter import bounces, create_app
from newsletter.extensions import db, get_redis
from newsletter.models import Subscriber
from tests.bounce_mail import BOUNCE_ADDRESS, add_edition, add_reader, at_once, dsn, return_path
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Dovecot:
    def __init__(self, folder: Path, port: int) -> None:
        self.folder, self.port = folder, port
        self.ca_file = str(folder / "cert.pem")
        self.url = f"imaps://{USER}:{PASSWORD}@127.0.0.1:{port}/INBOX"

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


@pytest.fixture(scope="module")
def dovecot():
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
    port = _free_port()
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


@pytest.fixture
def app_config(dovecot):
    return {
        "BOUNCE_ADDRESS": BOUNCE_ADDRESS,
        "BOUNCE_IMAP_URL": dovecot.url,
        "BOUNCE_IMAP_CA_FILE": dovecot.ca_file,
    }


@pytest.fixture
def mailbox(app, dovecot):
    dovecot.empty()
    yield dovecot
    dovecot.empty()


def _notices(count: int) -> dict[int, bytes]:
    campaign_id = add_edition()
    readers = {add_reader(f"reader{n}@example.net"): n for n in range(count)}
    return {
        reader_id: dsn(return_path(campaign_id, reader_id), f"reader{n}@example.net")
        for reader_id, n in readers.items()
    }


@pytest.mark.slow
def test_two_pollers_at_once_handle_each_message_exactly_once_and_delete_it(app, mailbox):
    notices = _notices(12)
    mailbox.append(*notices.values(), b"Subject: hello\r\nFrom: a@example.net\r\n\r\nHi.\r\n")
    poll = partial(bounces.poll_imap, app.config["BOUNCE_IMAP_URL"])
    results = at_once(app, poll, poll)

    outcomes = [outcome for result in results for outcome in result]
    assert len(outcomes) == len(notices) + 1  # each message once, the stray one too
    erased = [o.subscriber_id for o in outcomes if o.act is bounces.Act.ERASE_BOUNCED]
    assert sorted(erased) == sorted(notices)
    assert mailbox.count() == 0
    db.session.expire_all()
    assert all(db.session.get(Subscriber, reader_id) is None for reader_id in notices)


@pytest.mark.slow
def test_a_poll_while_another_worker_polls_leaves_the_mailbox_alone(app, mailbox):
    notices = _notices(2)
    mailbox.append(*notices.values())
    other = get_redis().lock(bounces.POLL_LOCK_KEY, timeout=60)
    assert other.acquire(blocking=False)
    try:
        assert bounces.poll_imap() == []
        assert mailbox.count() == 2
    finally:
        other.release()
    assert len(bounces.poll_imap()) == 2
    assert mailbox.count() == 0


@pytest.mark.slow
def test_a_message_that_cannot_be_handled_stays_for_the_next_poll(app, mailbox, base_environ):
    """The database is away (a loopback port nobody listens on): nothing is deleted."""
    mailbox.append(dsn(return_path(1, 1), "someone@example.net"))
    port = _free_port()
    away = create_app(
        test_config={"BOUNCE_ADDRESS": BOUNCE_ADDRESS, "BOUNCE_IMAP_CA_FILE": mailbox.ca_file},
        environ={**base_environ, "DATABASE_URL": f"postgresql://nobody@127.0.0.1:{port}/none"},
    )
    try:
        with away.app_context():
            with pytest.raises(OperationalError):
                bounces.poll_imap(mailbox.url)
    finally:
        away.extensions["redis"].close()
    assert mailbox.count() == 1
    assert get_redis().get(bounces.POLL_LOCK_KEY) is None  # the lock was given back


@pytest.mark.slow
def test_the_workers_tick_polls_the_mailbox_every_few_minutes_not_every_tick(app, mailbox, work):
    from newsletter.tick import tick

    notices = _notices(2)
    mailbox.append(*notices.values())
    tick()
    work()
    assert mailbox.count() == 0
    db.session.expire_all()
    assert all(db.session.get(Subscriber, reader_id) is None for reader_id in notices)

    later = _notices(1)
    mailbox.append(*later.values())
    tick()
    work()
    assert mailbox.count() == 1, "polled again within BOUNCE_POLL_INTERVAL"
