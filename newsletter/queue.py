"""RQ plumbing: the queues, enqueueing with ids only, and the job decorator.

RQ stores a job's arguments and description in Redis (failed jobs for a year by
default) and logs the description, so jobs carry ids only, a fixed description, no
result, and a short failure TTL. Jobs re-read state, exit quietly when it no longer
applies, and are safe to run twice.
"""

from __future__ import annotations

import functools
import traceback

from rq import Queue, Retry, get_current_job
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus

from newsletter import logs
from newsletter.extensions import db, get_redis

# Highest priority first: the tick is short and drives recovery; sign-up mail beats editions.
QUEUE_NAMES = ("tick", "mail", "send")

FAILURE_TTL = 7 * 86400
DEFAULT_TIMEOUT = 120
# A job in one of these states holds its id only for inspection: the id may be reused.
_ENDED = (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED)


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


def get_queue(name: str) -> Queue:
    return Queue(name, connection=get_redis())


def _options(func, job_id: str | None, timeout: int, retry: Retry | None = None) -> dict:
    return dict(
        job_id=job_id,
        description=func.__name__,
        result_ttl=0,
        failure_ttl=FAILURE_TTL,
        timeout=timeout,
        retry=retry,
    )


def enqueue(
    queue_name: str,
    func,
    *args,
    job_id: str | None = None,
    timeout: int = DEFAULT_TIMEOUT,
    retry: Retry | None = None,
) -> Job | None:
    """Enqueue ``func(*args)``; a job id makes it unique while it waits or runs.

    A job id that belongs to an ended job (failed jobs are kept FAILURE_TTL for
    inspection) is freed and enqueued again: the database said the work is still to do.
    Returns None when the job already waits or runs.
    """
    queue = get_queue(queue_name)
    options = _options(func, job_id, timeout, retry)
    for _ in range(2):
        try:
            return queue.enqueue_call(func, args, unique=job_id is not None, **options)
        except DuplicateJobError:
            try:
                existing = Job.fetch(job_id, connection=queue.connection)
            except NoSuchJobError:
                continue  # it ended a moment ago
            if existing.get_status(refresh=False) not in _ENDED:
                return None
            existing.delete()
    return None  # another process enqueued it in between


def enqueue_new(queue_name: str, func, calls: list[tuple[tuple, str]], timeout: int) -> None:
    """Enqueue fresh jobs, ``(args, job_id)`` each, in one Redis round trip."""
    if not calls:
        return
    queue = get_queue(queue_name)
    with get_redis().pipeline() as pipe:
        queue.enqueue_many(
            [
                Queue.prepare_data(func, args, **_options(func, job_id, timeout))
                for args, job_id in calls
            ],
            pipeline=pipe,
        )
        pipe.execute()


def last_attempt() -> bool:
    """Whether the running job has no RQ retry left (outside a job: True)."""
    current = get_current_job()
    return current is None or not current.retries_left
