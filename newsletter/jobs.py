"""Background jobs. They take ids, re-read state, exit quietly when it no longer
applies, and are safe to run twice.

RQ stores a job's arguments and description in Redis (failed jobs for a year by
default) and logs the description, so jobs carry ids only, a fixed description, no
result, and a short failure TTL.
"""

from __future__ import annotations

import functools
import logging
import traceback
from datetime import timedelta

from flask import current_app
from rq import Queue, Retry, get_current_job
from rq.exceptions import DuplicateJobError
from rq.job import Job, JobStatus
from sqlalchemy import select

from newsletter import logs
from newsletter.extensions import db, get_queue

log = logging.getLogger(__name__)

FAILURE_TTL = 7 * 86400
MAIL_JOB_TIMEOUT = 120


class JobFailed(Exception):
    """A job's exception whose text quoted an address; this carries its redacted traceback."""


def job(func):
    """Give each job a fresh database session, and keep addresses out of failed jobs.

    RQ stores the traceback of a failed job in Redis (FAILURE_TTL) and logs it. A
    traceback that quotes an address (a database error naming the row, say) is replaced
    by its redacted text; the job still fails, and RQ retries it as before.
    """

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except Exception as exc:
            original = "".join(traceback.format_exception(exc))
            redacted = logs.redact(original)
            if redacted == original:
                raise
            raise JobFailed(redacted) from None
        finally:
            db.session.remove()

    return wrapper


def enqueue(
    queue_name: str,
    func,
    *args,
    job_id: str | None = None,
    timeout: int = MAIL_JOB_TIMEOUT,
    retry: Retry | None = None,
):
    """Enqueue ``func(*args)`` with ids only; a job id makes it unique while it waits.

    A job id that belongs to a failed job (kept FAILURE_TTL for inspection) is freed and
    enqueued again: the database said the work is still to do.
    """
    queue: Queue = get_queue(queue_name)
    options = dict(
        job_id=job_id,
        unique=job_id is not None,
        description=func.__name__,
        result_ttl=0,
        failure_ttl=FAILURE_TTL,
        job_timeout=timeout,
        retry=retry,
    )
    try:
        return queue.enqueue(func, *args, **options)
    except DuplicateJobError:
        existing = Job.fetch(job_id, connection=queue.connection)
        if existing.get_status(refresh=False) not in (
            JobStatus.FAILED,
            JobStatus.STOPPED,
            JobStatus.CANCELED,
        ):
            return None
        existing.delete()
        try:
            return queue.enqueue(func, *args, **options)
        except DuplicateJobError:
            return None  # another process re-enqueued it in between


class MailNotSent(Exception):
    """SMTP refused or failed; the message names ids only (RQ keeps it with the failed job)."""


class MailRefused(MailNotSent):
    """The server refused this recipient (RCPT TO) or this message (DATA)."""

    def __init__(self, what: str, code: int) -> None:
        super().__init__(f"{what}: SMTP refused the message ({code})")
        self.code = code

    @property
    def permanent(self) -> bool:
        return self.code >= 500


# --- sign-up ---------------------------------------------------------------------------


MAIL_RETRY = Retry(max=3, interval=[10, 60, 300])

# The tally of confirmation mails given up; the admin dashboard shows it.
CONFIRMATION_FAILED = "confirmation_failed"


def confirmation_retry() -> Retry | None:
    """CONFIRM_RETRY_ATTEMPTS tries in all, CONFIRM_RETRY_DELAY apart, doubling each time."""
    attempts = current_app.config["CONFIRM_RETRY_ATTEMPTS"]
    delay = current_app.config["CONFIRM_RETRY_DELAY"]
    if attempts < 2:
        return None
    return Retry(max=attempts - 1, interval=[delay * 2**n for n in range(attempts - 1)])


def enqueue_confirmation(pending_id: int):
    return enqueue(
        "mail",
        send_confirmation,
        pending_id,
        job_id=f"confirm-{pending_id}",
        retry=confirmation_retry(),
    )


def _last_attempt() -> bool:
    current = get_current_job()
    return current is None or not current.retries_left


@job
def send_confirmation(pending_id: int) -> None:
    """Mail the confirmation link of a pending sign-up or address change, once.

    A refusal of the recipient or the message ends the pending sign-up: at once when it is
    permanent (5xx), after the last of RQ's retries when it is temporary (4xx). Anything
    else (the relay unreachable, our login or sender refused) concerns every mail, not
    this one: the job fails and the tick enqueues it again until the sign-up expires.
    """
    from newsletter import mailing, subscriptions, tokens
    from newsletter.models import PendingPurpose, PendingSignup, Subscriber, utcnow

    pending = db.session.get(PendingSignup, pending_id)
    if pending is None or pending.mail_sent_at is not None:
        return
    if pending.purpose == PendingPurpose.SUBSCRIBE:
        subscribed = db.session.scalar(
            select(Subscriber.id).where(Subscriber.email == pending.email)
        )
        if subscribed is not None:
            # Already a subscriber: no second subscription and no mail, and the visitor saw
            # the same page as everyone else.
            db.session.delete(pending)
            db.session.commit()
            log.info("sign-up %s: address already subscribed, nothing sent", pending_id)
            return
    link = tokens.url(tokens.Purpose.CONFIRM, subscriptions.confirm_key(pending))
    if pending.purpose == PendingPurpose.SUBSCRIBE:
        mail = mailing.confirmation_mail(pending.email, link, pending.language)
    else:
        mail = mailing.change_address_mail(pending.email, link, pending.language)
    try:
        send_or_explain(mail, f"sign-up {pending_id}")
    except MailRefused as refusal:
        if not (refusal.permanent or _last_attempt()):
            raise  # RQ tries again after its backoff
        give_up_confirmation(pending, refusal.code)
        return
    pending.mail_sent_at = utcnow()
    db.session.commit()
    log.info("sign-up %s: confirmation mail sent", pending_id)


def give_up_confirmation(pending, code: int) -> None:
    """Delete a pending sign-up whose confirmation mail cannot be delivered, and count it.

    Deleting (there is no column to mark it) keeps the tick from enqueueing it again and
    drops an address we cannot use anyway; the visitor can simply sign up again. An
    address change goes the same way: the subscriber keeps the old address.
    """
    from newsletter import stats, subscriptions

    pending_id, subscriber_id = pending.id, pending.subscriber_id
    db.session.delete(pending)
    stats.tally(CONFIRMATION_FAILED)
    db.session.commit()
    subscriptions.erase_traces()
    owner = f" (subscriber {subscriber_id})" if subscriber_id is not None else ""
    log.warning(
        "sign-up %s%s: SMTP refused the confirmation mail (%s); given up", pending_id, owner, code
    )


def send_or_explain(mail, what: str) -> None:
    """Send one transactional mail; on failure raise an error that names no address.

    smtplib's exceptions quote the recipient, and RQ stores and logs exception texts.
    A refusal at RCPT TO or DATA is MailRefused; one at MAIL FROM or the login is about
    our side, as are connection failures: plain MailNotSent.
    """
    import smtplib

    from newsletter import smtp

    try:
        smtp.send(mail)
    except smtplib.SMTPDataError as exc:
        raise MailRefused(what, exc.smtp_code) from None
    except smtplib.SMTPResponseException as exc:
        raise MailNotSent(f"{what}: SMTP answered {exc.smtp_code}") from None
    except smtplib.SMTPRecipientsRefused as exc:
        code = min(code for code, _ in exc.recipients.values())  # one recipient, in fact
        raise MailRefused(what, code) from None
    except (smtplib.SMTPException, OSError) as exc:
        raise MailNotSent(f"{what}: {type(exc).__name__}") from None


# --- the periodic tick -----------------------------------------------------------------


def enqueue_tick(slot: int):
    """Enqueue the tick of one time slot; every worker asks, the job id makes it one."""
    return enqueue("tick", tick, job_id=f"tick-{slot}", timeout=300)


TICK_TASKS: list = []


def tick_task(func):
    """Register ``func`` to run on every tick (the database is the scheduler)."""
    TICK_TASKS.append(func)
    return func


@job
def tick() -> None:
    """Do what is due: expire sign-ups, resend lost confirmation mails, drive campaigns."""
    for task in TICK_TASKS:
        task()
        db.session.remove()


@tick_task
def requeue_unsent_confirmations() -> None:
    """Re-enqueue confirmation mails whose job was lost (e.g. Redis was emptied)."""
    from newsletter.models import PendingSignup, utcnow

    grace = utcnow() - timedelta(seconds=30)
    ids = db.session.scalars(
        select(PendingSignup.id).where(
            PendingSignup.mail_sent_at.is_(None), PendingSignup.requested_at < grace
        )
    ).all()
    for pending_id in ids:
        enqueue_confirmation(pending_id)


@tick_task
def purge_pending() -> None:
    from newsletter import subscriptions

    purged = subscriptions.purge_expired_pending()
    if purged:
        log.info("purged %d expired sign-ups", purged)


# --- self-service ----------------------------------------------------------------------


def enqueue_manage_link(subscriber_id: int | None):
    """Queue the manage-link mail; ``None`` (an unknown address) queues a job that does nothing.

    Both cases cost the web request the same, so its timing reveals nothing.
    """
    return enqueue("mail", send_manage_link, subscriber_id, retry=MAIL_RETRY)


@job
def send_manage_link(subscriber_id: int | None) -> None:
    """Mail a subscriber their personal, expiring manage link."""
    from newsletter import mailing, subscriptions
    from newsletter.models import Subscriber

    subscriber = db.session.get(Subscriber, subscriber_id) if subscriber_id is not None else None
    if subscriber is None:
        return  # an unknown address, or erased since: nothing to send
    mail = mailing.manage_mail(
        subscriber.email, subscriptions.manage_url(subscriber), subscriber.language
    )
    send_or_explain(mail, f"manage link for subscriber {subscriber_id}")
    log.info("subscriber %s: manage link sent", subscriber_id)


# The campaign tick tasks live with the sending code and register themselves on import.
from newsletter import sending  # noqa: E402, F401
