"""Confirmation mails the receiving server refuses: bounded, given up, counted, logged."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from rq.job import Job
from rq.registry import FailedJobRegistry, ScheduledJobRegistry
from sqlalchemy import func, select

from newsletter import stats, subscriptions
from newsletter.extensions import db, get_redis
from newsletter.models import PendingPurpose, PendingSignup, utcnow
from newsletter.queue import get_queue
from tests.conftest import post_signup, service_log

ADDRESS = "refusing.reader@example.com"


def signup(client, email: str = ADDRESS) -> int:
    """Sign up through the form; return the pending sign-up's id."""
    assert post_signup(client, email).status_code == 200
    return db.session.scalar(select(PendingSignup.id).where(PendingSignup.email == email))


def pending_count() -> int:
    db.session.expire_all()
    return db.session.scalar(select(func.count()).select_from(PendingSignup))


def given_up() -> int:
    counts = stats.monthly([subscriptions.CONFIRMATION_FAILED]).values()
    return sum(month.get(subscriptions.CONFIRMATION_FAILED, 0) for month in counts)


def run_ticks(work, count: int = 2) -> None:
    """Let the tick look for unsent confirmations, as if it had waited past its grace."""
    db.session.execute(
        PendingSignup.__table__.update().values(requested_at=utcnow() - timedelta(minutes=5))
    )
    db.session.commit()
    for _ in range(count):
        subscriptions.requeue_unsent_confirmations()
        db.session.remove()
        work()


def assert_nothing_left_to_try() -> None:
    queue = get_queue("mail")
    assert queue.count == 0
    assert ScheduledJobRegistry(queue=queue).get_job_ids() == []
    assert FailedJobRegistry(queue=queue).get_job_ids() == []


@pytest.mark.parametrize(
    "stage, reply",
    [("rcpt", "550 5.1.1 no such user"), ("data", "554 5.7.1 message refused as spam")],
)
def test_a_permanent_refusal_ends_the_sign_up_after_one_attempt(
    stage, reply, app, client, work, smtp, logs
):
    programmed = smtp.handler.rcpt_replies if stage == "rcpt" else smtp.handler.replies
    programmed[ADDRESS] = reply
    pending_id = signup(client)
    work(with_scheduler=True)
    assert len(smtp.attempts(ADDRESS)) == 1
    assert pending_count() == 0
    assert given_up() == 1
    assert_nothing_left_to_try()
    run_ticks(work)
    assert len(smtp.attempts(ADDRESS)) == 1 and given_up() == 1

    logged = service_log(logs)
    assert f"sign-up {pending_id}: SMTP refused the confirmation mail ({reply[:3]})" in logged
    assert "refusing.reader" not in logged.lower()
    redis_conn = get_redis()
    for key in redis_conn.keys("*"):
        assert b"refusing.reader" not in key + (redis_conn.dump(key) or b"")


def test_a_temporary_refusal_is_retried_with_backoff_then_given_up(app, client, work, smtp, logs):
    app.config.update(CONFIRM_RETRY_ATTEMPTS=3, CONFIRM_RETRY_DELAY=1)
    smtp.handler.rcpt_replies[ADDRESS] = "451 4.3.0 try later"
    pending_id = signup(client)
    job = Job.fetch(f"confirm-{pending_id}", connection=get_redis())
    assert job.retry_intervals == [1, 2]  # the delay doubles

    deadline = time.monotonic() + 30
    while pending_count() and time.monotonic() < deadline:
        work(with_scheduler=True)
        run_ticks(work, count=1)  # ticks meanwhile must neither add attempts nor reset them
        time.sleep(0.2)

    attempts = smtp.attempts(ADDRESS)
    assert len(attempts) == 3
    assert attempts[2] - attempts[1] >= 1  # RQ schedules in whole seconds: 2 s, less than 1
    assert pending_count() == 0 and given_up() == 1
    assert_nothing_left_to_try()
    run_ticks(work)
    assert len(smtp.attempts(ADDRESS)) == 3

    logged = service_log(logs)
    assert f"sign-up {pending_id}: SMTP refused the confirmation mail (451)" in logged
    assert "refusing.reader" not in logged.lower()


def test_a_temporary_refusal_that_clears_is_delivered_and_not_counted(app, client, work, smtp):
    app.config.update(CONFIRM_RETRY_ATTEMPTS=3, CONFIRM_RETRY_DELAY=1)
    smtp.handler.rcpt_replies[ADDRESS] = "450 4.2.0 mailbox busy"
    signup(client)
    work(with_scheduler=True)
    assert len(smtp.attempts(ADDRESS)) == 1 and smtp.to(ADDRESS) == []
    smtp.handler.rcpt_replies.clear()
    time.sleep(2.1)
    work(with_scheduler=True)
    assert len(smtp.to(ADDRESS)) == 1
    assert given_up() == 0
    pending = db.session.scalar(select(PendingSignup))
    assert pending.mail_sent_at is not None


def test_a_refused_address_change_is_given_up_and_the_old_address_stays(
    app, client, work, smtp, subscribed
):
    from tests.test_manage import change_address, manage_path, subscriber

    subscribed("settled@example.com")
    path = manage_path(client, work, smtp, "settled@example.com")
    smtp.handler.rcpt_replies[ADDRESS] = "550 5.1.1 no such user"
    assert change_address(client, path, ADDRESS).status_code == 200
    pending = db.session.scalar(select(PendingSignup))
    assert pending.purpose == PendingPurpose.CHANGE_EMAIL
    work()
    assert len(smtp.attempts(ADDRESS)) == 1
    assert pending_count() == 0 and given_up() == 1
    assert subscriber("settled@example.com") is not None
    assert "refusing.reader" not in client.get(path).get_data(as_text=True)
