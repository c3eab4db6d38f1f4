"""The IMAP poll against a real Dovecot: each message handled once, then deleted.

The test starts Debian's dovecot-imapd (apt-get install dovecot-imapd) with a throwaway
configuration (tests/dovecot.py).
"""

from __future__ import annotations

from functools import partial

import pytest
from sqlalchemy.exc import OperationalError

from newsletter import bounces, create_app
from newsletter.extensions import db, get_redis
from newsletter.models import Subscriber
from tests.bounce_mail import BOUNCE_ADDRESS, add_edition, add_reader, at_once, dsn, return_path
from tests.postfix import free_port


@pytest.fixture
def app_config(dovecot):
    return {"BOUNCE_ADDRESS": BOUNCE_ADDRESS, **dovecot.settings}


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
    port = free_port()
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
