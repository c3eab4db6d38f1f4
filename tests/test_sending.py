"""Sending a campaign: fan-out, batch jobs, SMTP outcomes, pause/resume and recovery.

These run the jobs in this process (RQ's SimpleWorker) against the real SMTP fixture,
Redis and database; test_send_faults.py kills and races real worker processes.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text

from newsletter import campaigns, consent, sending, subscriptions, tokens
from newsletter.extensions import db, get_redis
from newsletter.mail.smtp import Outcome, classify, redact
from newsletter.models import (
    BatchStatus,
    Campaign,
    CampaignStatus,
    DeferredDelivery,
    SendBatch,
    Subscriber,
    Tally,
    utcnow,
)
from newsletter.queue import get_queue
from newsletter.tick import tick
from tests.conftest import link_in

BATCH = 10


@pytest.fixture
def app_config():
    return {"BATCH_SIZE": BATCH, "TICK_INTERVAL": 1, "SEND_LEASE": 2, "SEND_RETRY_DELAY": 1}


# --- helpers (also used by test_send_faults.py) ----------------------------------------


def add_subscribers(count: int, prefix: str = "reader") -> list[int]:
    """Store ``count`` confirmed subscribers directly; return their ids in order."""
    consent_id = consent.current().id
    rows = [
        Subscriber(
            email=f"{prefix}{i}@example.com", requested_at=utcnow(), consent_text_id=consent_id
        )
        for i in range(count)
    ]
    db.session.add_all(rows)
    db.session.commit()
    return [row.id for row in rows]


def add_campaign(status=CampaignStatus.SCHEDULED, send_at=None) -> int:
    campaign = Campaign(
        subject="The November edition",
        html="<h1>News</h1><p>Version 4.2 is out.</p>",
        text="News\n\nVersion 4.2 is out.",
        status=status,
        send_at=send_at or utcnow() - timedelta(seconds=1),
    )
    db.session.add(campaign)
    db.session.commit()
    return campaign.id


def campaign_row(campaign_id: int) -> Campaign:
    db.session.expire_all()
    return db.session.get(Campaign, campaign_id)


def count(model, *where) -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(model).where(*where))


def address(subscriber_id: int) -> str:
    return db.session.get(Subscriber, subscriber_id).email


def copies_per_recipient(smtp) -> dict[str, int]:
    copies: dict[str, int] = {}
    for message in smtp.messages:
        for rcpt in message.rcpt_tos:
            copies[rcpt] = copies.get(rcpt, 0) + 1
    return copies


def totals(campaign_id: int) -> dict[str, int]:
    """The totals the SMTP dialogue decides (bounces and complaints arrive later, by mail)."""
    live = sending.live_totals(campaign_row(campaign_id))
    return {name: value for name, value in live.items() if name not in ("bounced", "complaints")}


# --- the happy path --------------------------------------------------------------------


def test_fan_out_covers_every_subscriber_in_keyset_batches(app):
    ids = add_subscribers(45)
    campaign_id = add_campaign()

    assert sending.start(campaign_id)

    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENDING and campaign.started_at is not None
    assert campaign.recipients == 45
    batches = db.session.scalars(select(SendBatch).order_by(SendBatch.first_id)).all()
    assert [(b.first_id, b.last_id) for b in batches] == [
        (ids[i], ids[min(i + BATCH, 45) - 1]) for i in range(0, 45, BATCH)
    ]
    assert all(b.cursor == b.first_id - 1 and b.status == BatchStatus.QUEUED for b in batches)
    queued = get_queue("send").get_jobs()
    assert sorted(job.id for job in queued) == sorted(f"batch-{b.id}-0" for b in batches)
    # Jobs carry ids only: nothing personal in Redis.
    assert all(job.args == (b,) for job, b in zip(queued, [j.args[0] for j in queued], strict=True))
    for key in get_redis().scan_iter():
        assert b"@example.com" not in key
        if get_redis().type(key) == b"hash":
            assert not any(b"@example.com" in v for v in get_redis().hgetall(key).values())


def test_full_send_gives_each_reader_one_mail_with_their_own_unsubscribe_link(app, work, smtp):
    ids = add_subscribers(50)
    campaign_id = add_campaign()

    tick()
    work()

    copies = copies_per_recipient(smtp)
    assert len(copies) == 50 and set(copies.values()) == {1}
    for subscriber_id in ids:
        subscriber = db.session.get(Subscriber, subscriber_id)
        [mail] = smtp.to(subscriber.email)
        url = tokens.unsubscribe_url(subscriber)
        assert link_in(mail.text, "unsubscribe") == url
        assert link_in(mail.html, "unsubscribe") == url
        assert mail.message["List-Unsubscribe"] == f"<{url}>"
        assert mail.message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert mail.message["Subject"] == "The November edition"
        assert f"<{url}>".encode() in mail.data  # plain on the wire, not RFC 2047-encoded
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT and campaign.finished_at is not None
    assert (campaign.recipients, campaign.sent, campaign.failed, campaign.unknown) == (50, 50, 0, 0)
    # The bookkeeping lives only while sending.
    assert count(SendBatch) == 0 and count(DeferredDelivery) == 0


def test_campaign_without_subscribers_is_sent_at_once(app, work):
    campaign_id = add_campaign()
    tick()
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT and campaign.recipients == 0


def test_future_campaign_is_not_started(app, work, smtp):
    add_subscribers(3)
    campaign_id = add_campaign(send_at=utcnow() + timedelta(minutes=5))
    tick()
    work()
    assert campaign_row(campaign_id).status == CampaignStatus.SCHEDULED
    assert smtp.messages == [] and count(SendBatch) == 0


def test_concurrent_ticks_start_a_campaign_once(app, work, smtp):
    add_subscribers(30)
    campaign_id = add_campaign()
    barrier = threading.Barrier(4)

    def start_due():
        with app.app_context():
            barrier.wait()
            sending.start_due_campaigns()
            db.session.remove()

    threads = [threading.Thread(target=start_due) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not sending.start(campaign_id)  # and once more, after the fact

    assert count(SendBatch) == 3
    assert get_queue("send").count == 3
    tick()
    work()
    assert set(copies_per_recipient(smtp).values()) == {1}
    assert len(smtp.messages) == 30
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


def test_batch_job_run_twice_sends_nothing_twice(app, work, smtp):
    add_subscribers(12)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    batch_ids = db.session.scalars(select(SendBatch.id)).all()
    work()
    for batch_id in batch_ids:  # a duplicate job arriving late
        sending.send_batch(batch_id)
    assert len(smtp.messages) == 12
    assert campaign_row(campaign_id).sent == 12


def test_overdue_campaign_waits_for_a_person(app, work, smtp):
    add_subscribers(3)
    campaign_id = add_campaign(
        send_at=utcnow() - timedelta(seconds=app.config["OVERDUE_LIMIT"] + 60)
    )

    tick()
    work()

    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.PAUSED
    assert "scheduled time" in campaign.status_reason
    assert smtp.messages == [] and count(SendBatch) == 0

    assert campaigns.resume(campaign_id)  # a marketer decides to send it now
    work()
    assert len(smtp.messages) == 3
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


# --- Redis emptied -----------------------------------------------------------------------


def test_redis_emptied_after_scheduling_loses_nothing(app, work, smtp):
    add_subscribers(5)
    campaign_id = add_campaign()
    get_redis().flushdb()
    tick()
    work()
    assert len(smtp.messages) == 5
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


def expire_leases(campaign_id: int) -> None:
    """Let every batch's lease (or grace period) run out."""
    for batch in db.session.scalars(select(SendBatch).where(SendBatch.campaign_id == campaign_id)):
        batch.lease_until = utcnow() - timedelta(seconds=1)
    db.session.commit()


def test_redis_emptied_after_fan_out_is_recovered_by_the_tick(app, work, smtp):
    app.config["TICK_INTERVAL"] = 30
    add_subscribers(25)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    get_redis().flushdb()  # the batch jobs are gone

    tick()  # too early: the fresh batches get a grace period
    assert get_queue("send").count == 0
    expire_leases(campaign_id)
    tick()
    assert get_queue("send").count == 3
    tick()  # asking again does not duplicate waiting jobs
    assert get_queue("send").count == 3
    work()

    assert set(copies_per_recipient(smtp).values()) == {1} and len(smtp.messages) == 25
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


def test_expired_lease_of_a_vanished_worker_is_taken_over(app, work, smtp):
    ids = add_subscribers(10)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    get_redis().flushdb()
    # A worker claimed the batch, sent to the first four, and died.
    batch = db.session.scalar(select(SendBatch))
    batch.status, batch.lease_owner, batch.attempts = BatchStatus.RUNNING, "dead-worker", 1
    batch.cursor, batch.sent = ids[3], 4
    batch.lease_until = utcnow() + timedelta(seconds=30)
    db.session.commit()
    batch_id = batch.id

    tick()
    assert get_queue("send").count == 0  # the lease still holds
    expire_leases(campaign_id)
    tick()
    assert get_queue("send").job_ids == [f"batch-{batch_id}-1"]
    work()

    assert sorted(copies_per_recipient(smtp)) == sorted(address(i) for i in ids[4:])
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT and campaign.sent == 10


# --- SMTP outcomes -----------------------------------------------------------------------


def make_due(campaign_id: int) -> None:
    """Let the backoff of every deferred message pass."""
    for row in db.session.scalars(
        select(DeferredDelivery).where(DeferredDelivery.campaign_id == campaign_id)
    ):
        row.next_attempt_at = utcnow() - timedelta(seconds=1)
    db.session.commit()


def test_4xx_is_retried_with_backoff_and_then_delivered(app, work, smtp):
    app.config["SEND_RETRY_DELAY"] = 60
    ids = add_subscribers(15)
    busy = address(ids[7])
    smtp.handler.replies[busy] = "451 4.3.0 mailbox busy, try later"
    campaign_id = add_campaign()
    before = utcnow()

    tick()
    work()

    assert smtp.to(busy) == [] and len(smtp.messages) == 14
    [row] = db.session.scalars(select(DeferredDelivery)).all()
    assert row.subscriber_id == ids[7] and row.attempts == 1
    assert row.next_attempt_at >= before + timedelta(seconds=60)
    assert campaign_row(campaign_id).status == CampaignStatus.SENDING
    assert totals(campaign_id) == {"recipients": 15, "sent": 14, "failed": 0, "unknown": 0}

    del smtp.handler.replies[busy]
    tick()
    work()
    assert smtp.to(busy) == []  # not due yet

    make_due(campaign_id)
    tick()
    work()
    assert len(smtp.to(busy)) == 1
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT
    assert (campaign.sent, campaign.failed, campaign.unknown) == (15, 0, 0)
    assert count(DeferredDelivery) == 0


def test_4xx_that_never_clears_counts_as_failed(app, work, smtp):
    app.config.update(SEND_RETRY_ATTEMPTS=2, SEND_RETRY_DELAY=60)
    ids = add_subscribers(3)
    busy = address(ids[1])
    smtp.handler.replies[busy] = "450 4.2.1 mailbox unavailable"
    campaign_id = add_campaign()

    tick()
    work()
    make_due(campaign_id)
    before = utcnow()
    tick()
    work()
    row = db.session.scalar(select(DeferredDelivery))
    assert row.attempts == 2
    assert row.next_attempt_at >= before + timedelta(seconds=120)  # the backoff doubles
    make_due(campaign_id)
    tick()
    work()

    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT
    assert (campaign.sent, campaign.failed) == (2, 1)
    assert smtp.to(busy) == [] and count(DeferredDelivery) == 0


def test_4xx_after_the_lease_was_lost_leaves_no_retry_row_and_the_new_owner_finishes(
    app, work, smtp
):
    app.config["SMTP_CONNECTIONS"] = 1  # one message in flight: the thief's timing needs it
    ids = add_subscribers(3)
    busy = address(ids[1])
    smtp.handler.replies[busy] = "451 4.3.0 try later"
    smtp.handler.delay = 0.3
    campaign_id = add_campaign()
    sending.start(campaign_id)
    batch_id = db.session.scalar(select(SendBatch.id))

    def steal_the_lease_while_the_answer_for_reader1_is_awaited():
        with app.app_context():
            # Only once reader 0's checkpoint is committed: stealing earlier would make
            # reader 0 the message in flight, which the next owner rightly sends again.
            deadline = time.monotonic() + 10
            while db.session.scalar(select(SendBatch.cursor)) < ids[0]:
                assert time.monotonic() < deadline, "reader 0 was never checkpointed"
                db.session.rollback()
                time.sleep(0.01)
            db.session.execute(
                SendBatch.__table__.update()
                .where(SendBatch.id == batch_id)
                .values(lease_owner="another-worker", lease_until=utcnow() - timedelta(seconds=1))
            )
            db.session.commit()
            db.session.remove()

    thief = threading.Thread(target=steal_the_lease_while_the_answer_for_reader1_is_awaited)
    thief.start()
    sending.send_batch(batch_id)  # the worker that loses its lease mid-message
    thief.join()

    assert count(DeferredDelivery) == 0  # rolled back with the failed checkpoint
    smtp.handler.delay = 0.0
    work()  # the batch job still queued takes the expired lease and meets the 4xx again
    [row] = db.session.scalars(select(DeferredDelivery)).all()
    assert row.subscriber_id == ids[1]

    del smtp.handler.replies[busy]
    make_due(campaign_id)
    tick()
    work()
    copies = copies_per_recipient(smtp)
    assert copies == {address(i): 1 for i in ids}
    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent, campaign.failed) == (CampaignStatus.SENT, 3, 0)


def test_4xx_for_a_reader_with_a_retry_row_already_keeps_that_row(app, work, smtp):
    ids = add_subscribers(3)
    smtp.handler.replies[address(ids[0])] = "450 4.2.1 try later"
    campaign_id = add_campaign()
    sending.start(campaign_id)
    db.session.add(
        DeferredDelivery(
            campaign_id=campaign_id, subscriber_id=ids[0], attempts=2, next_attempt_at=utcnow()
        )
    )
    db.session.commit()

    work()

    [row] = db.session.scalars(select(DeferredDelivery)).all()
    assert (row.subscriber_id, row.attempts) == (ids[0], 2)
    assert len(smtp.messages) == 2
    assert db.session.scalar(select(SendBatch.status)) == BatchStatus.DONE


def test_retry_that_lost_its_lease_mid_message_counts_nothing(app, work, smtp):
    ids = add_subscribers(3)
    busy = address(ids[1])
    smtp.handler.replies[busy] = "451 4.3.0 try later"
    campaign_id = add_campaign()
    tick()
    work()
    del smtp.handler.replies[busy]
    make_due(campaign_id)
    smtp.handler.delay = 0.3
    smtp.handler.receiving.clear()
    row_id = db.session.scalar(select(DeferredDelivery.id))

    def another_run_takes_over_and_finishes_first():
        """The slow run's lease ran out; a second run sent and counted the message."""
        with app.app_context():
            assert smtp.handler.receiving.wait(10)  # the slow run's message is under way
            db.session.execute(
                DeferredDelivery.__table__.delete().where(DeferredDelivery.id == row_id)
            )
            db.session.execute(
                Campaign.__table__.update()
                .where(Campaign.id == campaign_id)
                .values(sent=Campaign.sent + 1)
            )
            db.session.commit()
            db.session.remove()

    other = threading.Thread(target=another_run_takes_over_and_finishes_first)
    other.start()
    sending.send_deferred(campaign_id)  # the slow run: its answer arrives after that
    other.join()

    assert len(smtp.to(busy)) == 1
    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent, campaign.failed) == (CampaignStatus.SENT, 3, 0)


def test_retry_waiting_for_the_rate_keeps_renewing_its_lease(app, work, smtp):
    ids = add_subscribers(3)
    busy = address(ids[1])
    smtp.handler.replies[busy] = "451 4.3.0 try later"
    campaign_id = add_campaign()
    tick()
    work()
    del smtp.handler.replies[busy]
    make_due(campaign_id)
    row_id = db.session.scalar(select(DeferredDelivery.id))
    app.config["SEND_RATE"] = 1
    now = int(time.time())
    for slot in range(now, now + 4):  # the retry waits about four seconds for a slot
        get_redis().set(f"nl:send-rate:{slot}", 1, ex=10)
    taken = []

    def another_run_tries_to_claim_after_the_first_lease_ran_out():
        with app.app_context():
            time.sleep(app.config["SEND_LEASE"] + 0.5)
            result = db.session.execute(
                DeferredDelivery.__table__.update()
                .where(DeferredDelivery.id == row_id, DeferredDelivery.lease_until < utcnow())
                .values(lease_until=utcnow() + timedelta(seconds=60))
            )
            taken.append(result.rowcount)
            db.session.commit()
            db.session.remove()

    other = threading.Thread(target=another_run_tries_to_claim_after_the_first_lease_ran_out)
    other.start()
    sending.send_deferred(campaign_id)
    other.join()

    assert taken == [0]
    assert len(smtp.to(busy)) == 1
    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent) == (CampaignStatus.SENT, 3)


def test_no_such_mailbox_erases_the_address_and_counts_failed(app, work, smtp):
    ids = add_subscribers(12)
    gone = address(ids[4])
    smtp.handler.replies[gone] = "550 5.1.1 no such user here"
    campaign_id = add_campaign()

    tick()
    work()

    assert db.session.get(Subscriber, ids[4]) is None
    assert count(Subscriber) == 11
    assert db.session.scalar(select(Tally.count).where(Tally.kind == "erased_undeliverable")) == 1
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT
    assert (campaign.recipients, campaign.sent, campaign.failed) == (12, 11, 1)


def test_other_permanent_refusal_counts_failed_and_keeps_the_reader(app, work, smtp):
    ids = add_subscribers(4)
    smtp.handler.replies[address(ids[0])] = "554 5.6.0 message content rejected"
    campaign_id = add_campaign()
    tick()
    work()
    assert db.session.get(Subscriber, ids[0]) is not None
    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent, campaign.failed) == (CampaignStatus.SENT, 3, 1)


@pytest.mark.parametrize("connections", [1, 4])
def test_policy_block_pauses_the_campaign_and_resume_continues_where_it_stopped(
    app, work, smtp, connections
):
    app.config["SMTP_CONNECTIONS"] = connections
    ids = add_subscribers(35)
    blocked = address(ids[14])
    smtp.handler.replies[blocked] = "550 5.7.1 sender blocked by policy"
    campaign_id = add_campaign()
    # The second batch (readers 10-19) sends in groups of ``connections``: the rest of the
    # blocked reader's group was under way at the same time and went out.
    group_end = min(10 + (14 - 10) // connections * connections + connections, 20) - 1

    tick()
    work()

    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.PAUSED
    assert "5.7.1" in campaign.status_reason and "resume" in campaign.status_reason
    assert len(smtp.messages) == group_end  # the first batch, the second up to the group
    assert count(Subscriber) == 35  # nobody is deleted for a policy block
    assert totals(campaign_id)["sent"] == group_end
    assert count(SendBatch) == 4  # the bookkeeping stays while paused
    # The blocked reader waits among the retries; the cursor moved past their group.
    [row] = db.session.scalars(select(DeferredDelivery)).all()
    assert row.subscriber_id == ids[14] and row.attempts == 1
    second = select(SendBatch.cursor).where(SendBatch.last_id == ids[19])
    assert db.session.scalar(second) == ids[group_end]

    del smtp.handler.replies[blocked]
    assert campaigns.resume(campaign_id)
    work()
    tick()  # the retry of the blocked reader is due at once
    work()

    copies = copies_per_recipient(smtp)
    assert len(copies) == 35 and set(copies.values()) == {1}
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT and campaign.sent == 35
    assert count(SendBatch) == 0


def test_block_that_never_clears_ends_as_failed_after_the_retries(app, work, smtp):
    app.config["SEND_RETRY_ATTEMPTS"] = 2
    ids = add_subscribers(5)
    blocked = address(ids[1])
    smtp.handler.replies[blocked] = "550 5.7.1 blocked"
    campaign_id = add_campaign()

    tick()
    work()
    for _ in range(2):  # a person resumes; the same reader is blocked again
        assert campaign_row(campaign_id).status == CampaignStatus.PAUSED
        assert campaigns.resume(campaign_id)
        work()
        tick()
        work()

    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent, campaign.failed) == (CampaignStatus.SENT, 4, 1)
    assert smtp.to(blocked) == [] and len(smtp.messages) == 4
    assert db.session.get(Subscriber, ids[1]) is not None


def test_pause_reason_keeps_no_address_the_server_quoted(app, work, smtp):
    ids = add_subscribers(3)
    blocked = address(ids[1])
    reply = f"550 5.7.1 <{blocked}>: blocked, ask postmaster@example.net"
    smtp.handler.rcpt_replies[blocked] = reply
    campaign_id = add_campaign()
    tick()
    work()
    reason = campaign_row(campaign_id).status_reason
    assert "5.7.1 <address>: blocked, ask [address]" in reason
    assert "@" not in reason and "reader1" not in reason


@pytest.mark.parametrize(
    ("reply", "redacted"),
    [
        ("550 5.1.1 <Reader.One+x@Example.COM>: unknown", "550 5.1.1 <address>: unknown"),
        ("550 5.7.1 me@example.com (a@b.org) off", "550 5.7.1 [address] ([address]) off"),
        ('550 5.7.1 "odd local"@x.org', '550 5.7.1 "odd [address]'),
        ("550 5.7.1 <reader@exam", "550 5.7.1 <address>"),  # cut off by the length limit
        ("553 5.1.8 <>: empty sender", "553 5.1.8 <>: empty sender"),
    ],
)
def test_redact_replaces_anything_like_an_address(reply, redacted):
    assert redact(reply) == redacted
    assert "@" not in redact(reply)


def test_connection_dropped_after_data_counts_unknown_and_resends_nothing(app, work, smtp):
    ids = add_subscribers(20)
    smtp.handler.drop_after_data.add(address(ids[5]))
    campaign_id = add_campaign()

    tick()
    work()

    copies = copies_per_recipient(smtp)
    assert len(copies) == 20 and set(copies.values()) == {1}  # the batch went on, reconnected
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT
    assert (campaign.sent, campaign.failed, campaign.unknown) == (19, 0, 1)


def test_unreachable_smtp_server_hands_the_batch_back_for_later(app, work, smtp):
    add_subscribers(5)
    campaign_id = add_campaign()
    mail_state = app.extensions["mail"]
    port = mail_state.port
    mail_state.port = 9  # nothing listens on the discard port
    try:
        tick()
        work()
    finally:
        mail_state.port = port

    batch = db.session.scalar(select(SendBatch))
    assert batch.status == BatchStatus.QUEUED and batch.attempts == 1
    assert batch.lease_until > utcnow()  # backs off before the tick tries again
    assert smtp.messages == []

    batch.lease_until = utcnow() - timedelta(seconds=1)
    db.session.commit()
    tick()
    work()
    assert len(smtp.messages) == 5
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


@pytest.mark.parametrize(
    ("setup", "error"),
    [
        ({"use_tls": True}, "SMTPNotSupportedError"),
        ({"username": "news", "password": "wrong"}, "SMTPAuthenticationError"),
    ],
    ids=["starttls-not-offered", "login-refused"],
)
def test_failed_tls_or_login_pauses_the_campaign_with_a_reason(app, work, smtp, setup, error):
    add_subscribers(5)
    campaign_id = add_campaign()
    smtp.handler.accept_login = False
    mail_state = app.extensions["mail"]
    saved = {name: getattr(mail_state, name) for name in setup}
    for name, value in setup.items():
        setattr(mail_state, name, value)
    try:
        tick()
        work()
        campaign = campaign_row(campaign_id)
        assert campaign.status == CampaignStatus.PAUSED
        assert error in campaign.status_reason
        assert "MAIL_USE_TLS" in campaign.status_reason
        assert db.session.scalar(select(SendBatch.status)) == BatchStatus.QUEUED
        assert smtp.messages == []
    finally:
        for name, value in saved.items():
            setattr(mail_state, name, value)

    assert campaigns.resume(campaign_id)
    work()
    assert len(smtp.messages) == 5
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


def test_address_smtp_cannot_carry_counts_failed_and_the_batch_goes_on(app, work, smtp):
    ids = add_subscribers(3)
    db.session.get(Subscriber, ids[1]).email = "jörg@example.com"  # needs SMTPUTF8
    db.session.commit()
    campaign_id = add_campaign()

    tick()
    work()

    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent, campaign.failed) == (CampaignStatus.SENT, 2, 1)
    assert db.session.get(Subscriber, ids[1]) is not None
    assert len(smtp.messages) == 2


def test_subscriber_erased_before_their_turn_gets_nothing(app, work, smtp):
    ids = add_subscribers(10)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    subscriptions.erase(db.session.get(Subscriber, ids[6]), "unsubscribe")

    work()

    assert len(smtp.messages) == 9
    assert "reader6@example.com" not in copies_per_recipient(smtp)
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


def test_reader_who_leaves_or_moves_while_the_batch_waits_for_the_rate_is_honoured(app, work, smtp):
    app.config["SEND_RATE"] = 1
    ids = add_subscribers(2)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    get_queue("send").empty()
    batch_id = db.session.scalar(select(SendBatch.id))
    now = int(time.time())
    for slot in range(now, now + 3):  # other workers used this second and the next two
        get_redis().set(f"nl:send-rate:{slot}", 1, ex=10)

    def while_the_batch_waits():
        with app.app_context():
            time.sleep(0.5)
            subscriptions.erase(db.session.get(Subscriber, ids[0]), "unsubscribe")
            db.session.get(Subscriber, ids[1]).email = "moved@example.com"
            db.session.commit()
            db.session.remove()

    other = threading.Thread(target=while_the_batch_waits)
    other.start()
    sending.send_batch(batch_id)
    other.join()

    assert list(copies_per_recipient(smtp)) == ["moved@example.com"]
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


def test_deferred_bookkeeping_goes_with_its_subscriber(app, work, smtp):
    ids = add_subscribers(3)
    smtp.handler.replies[address(ids[2])] = "452 4.2.2 mailbox full"
    campaign_id = add_campaign()
    tick()
    work()
    assert count(DeferredDelivery) == 1

    subscriptions.erase(db.session.get(Subscriber, ids[2]), "unsubscribe")
    assert count(DeferredDelivery) == 0
    tick()
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


def test_cancelled_campaign_keeps_its_totals_and_drops_the_bookkeeping(app, work, smtp):
    add_subscribers(25)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    # The first batch goes out, then a marketer cancels.
    first = get_queue("send").job_ids[0]
    get_queue("send").remove(first)
    sending.send_batch(int(first.split("-")[1]))
    campaign = campaign_row(campaign_id)
    campaign.status = CampaignStatus.CANCELLED
    db.session.commit()

    work()
    tick()

    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.CANCELLED
    assert (campaign.sent, campaign.recipients) == (10, 25)
    assert len(smtp.messages) == 10
    assert count(SendBatch) == 0 and count(DeferredDelivery) == 0


def test_concurrent_settling_of_a_cancelled_campaign_counts_once(app, smtp):
    """Two ticks settle at once; the second waited for the row lock (PostgreSQL)."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite runs one writer at a time; the race needs row locks")
    add_subscribers(25)
    campaign_id = add_campaign()
    sending.start(campaign_id)
    first = get_queue("send").job_ids[0]
    get_queue("send").empty()
    sending.send_batch(int(first.split("-")[1]))
    campaign = campaign_row(campaign_id)
    campaign.status = CampaignStatus.CANCELLED
    db.session.commit()

    results = []

    def settle():
        with app.app_context():
            results.append(sending.settle_cancelled(campaign_id))
            db.session.remove()

    with db.engine.connect() as locker:
        locker.execute(select(Campaign.id).where(Campaign.id == campaign_id).with_for_update())
        threads = [threading.Thread(target=settle) for _ in range(2)]
        for thread in threads:
            thread.start()
        waiting = text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        deadline = time.monotonic() + 10
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as watcher:
            while watcher.execute(waiting).scalar() < 2 and time.monotonic() < deadline:
                time.sleep(0.02)
        locker.rollback()  # both UPDATEs started with the batches in their snapshot
    for thread in threads:
        thread.join()

    assert sorted(results) == [False, True]
    campaign = campaign_row(campaign_id)
    assert (campaign.sent, campaign.recipients) == (10, 25)
    assert count(SendBatch) == 0


@pytest.mark.parametrize(
    ("code", "message", "outcome"),
    [
        (450, b"4.2.1 try later", Outcome.DEFERRED),
        (421, b"closing", Outcome.DEFERRED),
        (550, b"5.1.1 <x@example.com>: no such user", Outcome.NO_MAILBOX),
        (550, b"5.1.10 null MX", Outcome.NO_MAILBOX),
        (553, b"5.1.3 bad address syntax", Outcome.FAILED),
        (553, b"5.1.8 sender domain does not resolve", Outcome.SENDER),
        (550, b"5.1.7 bad sender mailbox syntax", Outcome.SENDER),
        (550, b"5.7.1 blocked by policy", Outcome.BLOCKED),
        (554, b"5.7.26 DMARC policy", Outcome.BLOCKED),
        (550, b"mailbox unavailable", Outcome.FAILED),
        (552, b"5.3.4 message too big", Outcome.FAILED),
    ],
)
def test_smtp_replies_are_sorted_by_class(code, message, outcome):
    assert classify(code, message) is outcome


@pytest.mark.parametrize(
    ("code", "message", "outcome"),
    [
        (550, b"5.1.1 sender unknown", Outcome.SENDER),
        (553, b"mailbox name not allowed", Outcome.SENDER),
        (550, b"5.7.1 sender blocked", Outcome.BLOCKED),
        (451, b"4.1.8 try later", Outcome.DEFERRED),
    ],
)
def test_refused_mail_from_is_about_our_sender_never_the_reader(code, message, outcome):
    assert classify(code, message, "mail") is outcome


@pytest.mark.parametrize(
    ("stage", "reply"),
    [("mail", "553 5.1.8 sender domain does not resolve"), ("rcpt", "550 5.1.8 bad sender")],
)
def test_refused_sender_address_pauses_and_erases_nobody(app, work, smtp, stage, reply):
    ids = add_subscribers(12)
    if stage == "mail":
        smtp.handler.mail_reply = reply
    else:
        smtp.handler.rcpt_replies[address(ids[3])] = reply
    campaign_id = add_campaign()

    tick()
    work()

    assert count(Subscriber) == 12  # nobody is erased for our own address's fault
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.PAUSED
    assert "5.1.8" in campaign.status_reason and "sender address" in campaign.status_reason
    assert totals(campaign_id)["failed"] == 0

    smtp.handler.mail_reply = None
    smtp.handler.rcpt_replies.clear()
    assert campaigns.resume(campaign_id)
    work()
    copies = copies_per_recipient(smtp)
    assert len(copies) == 12 and set(copies.values()) == {1}
    assert campaign_row(campaign_id).status == CampaignStatus.SENT


def test_no_such_mailbox_at_rcpt_erases_the_address(app, work, smtp):
    ids = add_subscribers(5)
    smtp.handler.rcpt_replies[address(ids[2])] = "550 5.1.1 <reader2@example.com> unknown"
    campaign_id = add_campaign()
    tick()
    work()
    assert db.session.get(Subscriber, ids[2]) is None and count(Subscriber) == 4
    campaign = campaign_row(campaign_id)
    assert (campaign.status, campaign.sent, campaign.failed) == (CampaignStatus.SENT, 4, 1)


def test_connection_dropped_before_data_retries_the_reader(app, work, smtp):
    ids = add_subscribers(20)
    smtp.handler.drop_at_rcpt.add(address(ids[5]))
    campaign_id = add_campaign()

    tick()
    work()

    copies = copies_per_recipient(smtp)
    assert len(copies) == 20 and set(copies.values()) == {1}  # reconnected, nobody lost
    campaign = campaign_row(campaign_id)
    assert campaign.status == CampaignStatus.SENT
    assert (campaign.sent, campaign.failed, campaign.unknown) == (20, 0, 0)
