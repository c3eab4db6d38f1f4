"""An RQ worker with the scheduler, for any machine: ``python worker.py [-v] [--burst]``.

Quiet by default: warnings and errors only, so the tick every TICK_INTERVAL writes no
line; ``-v``/``--verbose`` shows RQ's line for every job it runs.

It builds the app once, before RQ forks a work horse per job (the horse inherits it),
and keeps the database's periodic tick alive: every TICK_INTERVAL it enqueues the tick
job of the current time slot; the job id makes it one job however many workers ask, and
asking again every interval means an emptied Redis loses no schedule.

It rides out Redis or the database going away. RQ's loop retries a lost Redis connection
only while it waits for a job; any other Redis call that fails ends ``work()``, and RQ
restarts a dead scheduler process only every ten minutes. So the loop here starts a new
RQ worker, with backoff, and the worker looks after its scheduler every few seconds.
While the database is away the worker takes no job; the jobs that ran into the outage
fail, and the tick enqueues their work again once their leases run out.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import threading
import time

import redis
from rq import Worker
from rq.exceptions import StopRequested
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import configure_mappers

from newsletter import create_app
from newsletter.extensions import db, get_redis
from newsletter.mail import builders
from newsletter.queue import QUEUE_NAMES, get_queue
from newsletter.tick import enqueue_tick

log = logging.getLogger("newsletter.worker")

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)
RECONNECT_WAIT_MAX = 10.0  # seconds between attempts while Redis is away, at most
HEALTHY_RUN = 60.0  # a worker that ran this long starts the backoff from the beginning
SCHEDULER_CHECK = 5.0  # seconds between looks at the scheduler process


def keep_ticking(app, stop: threading.Event) -> None:
    interval = app.config["TICK_INTERVAL"]
    with app.app_context():
        while not stop.is_set():
            try:
                enqueue_tick(int(time.time() // interval))
            except Exception:  # noqa: BLE001 - Redis may be briefly away; try next time
                log.warning("could not enqueue the tick; retrying in %ss", interval, exc_info=True)
            stop.wait(interval)


class SupervisingWorker(Worker):
    """RQ's forking worker that keeps its work horse and its scheduler through an outage."""

    max_connection_wait_time = RECONNECT_WAIT_MAX  # RQ's own backoff while it waits for jobs

    def __init__(self, *args, stop: threading.Event, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.stop = stop  # set by SIGTERM/SIGINT, whether RQ's handlers or ours caught it
        self.next_scheduler_check = 0.0

    def _install_signal_handlers(self) -> None:
        super()._install_signal_handlers()
        if self.stop.is_set():  # the signal came while no RQ handler was installed
            self._stop_requested = True

    def handle_warm_shutdown_request(self) -> None:
        self.stop.set()
        super().handle_warm_shutdown_request()

    def dequeue_job_and_maintain_ttl(self, timeout, max_idle_time=None):
        self.wait_for_database()
        self.revive_scheduler()
        return super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)

    def wait_for_database(self) -> None:
        """Take no job while the database is away: it would only fail, and its work wait."""
        wait = 1.0
        while True:
            try:
                with db.engine.connect() as connection:
                    connection.exec_driver_sql("SELECT 1")
                return
            except DBAPIError as exc:
                reason = type(exc.orig).__name__
                log.warning("database unreachable (%s); no new job for %.0fs", reason, wait)
            self.heartbeat()
            time.sleep(wait)  # a SIGTERM now stops the worker (RQ's handler raises)
            wait = min(wait * 2, RECONNECT_WAIT_MAX)

    def maintain_heartbeats(self, job, execution) -> None:
        """Heartbeats while a horse works; a missed one must not abandon the horse."""
        try:
            super().maintain_heartbeats(job, execution)
        except REDIS_ERRORS as exc:
            log.warning("Redis unreachable (%s); job %s keeps running", type(exc).__name__, job.id)
        self.revive_scheduler()

    def revive_scheduler(self) -> None:
        """Start the scheduler process again if it died, e.g. when Redis went away.

        RQ looks only at its ten-minute maintenance; delayed retries would wait that long.
        A worker whose scheduler never ran asks for the lock too: it takes over from a
        scheduler that died elsewhere once that one's lock runs out.
        """
        if self.scheduler is None or time.monotonic() < self.next_scheduler_check:
            return
        self.next_scheduler_check = time.monotonic() + SCHEDULER_CHECK
        process = self.scheduler._process  # RQ's own check reads it the same way
        if process is not None and process.is_alive():
            return
        try:
            self.scheduler.acquire_locks(auto_start=True)
        except REDIS_ERRORS:
            pass  # still away; the next look tries again


def run_worker(burst: bool, stop: threading.Event, logging_level: str = "WARNING") -> None:
    """Run RQ workers until a signal stops them (or, in burst mode, the jobs run out).

    A worker that Redis failed under is replaced after a pause that doubles each time,
    up to RECONNECT_WAIT_MAX.
    """
    wait = 1.0
    _stop_on_signals(stop)
    while not stop.is_set():
        started = time.monotonic()
        worker = None
        try:
            worker = SupervisingWorker(
                [get_queue(name) for name in QUEUE_NAMES],
                connection=get_redis(),
                log_job_description=False,  # descriptions are fixed names anyway
                stop=stop,
            )
            worker.work(
                with_scheduler=True, burst=burst, logging_level=logging_level, max_idle_time=None
            )
            if burst:
                return
            reason = "see the error above"  # RQ logged why its loop ended
        except REDIS_ERRORS as exc:
            reason = type(exc).__name__
        finally:
            _stop_on_signals(stop)
            if worker is not None and worker.pubsub_thread is not None:
                worker.pubsub_thread.stop()  # RQ's teardown may not have got that far
        if stop.is_set():
            return
        if time.monotonic() - started > HEALTHY_RUN:
            wait = 1.0
        log.warning("the RQ worker stopped (%s); starting a new one in %.0fs", reason, wait)
        stop.wait(wait)
        wait = min(wait * 2, RECONNECT_WAIT_MAX)


def _stop_on_signals(stop: threading.Event) -> None:
    """Outside RQ's work loop (which installs its own handlers) a signal only asks to stop."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())


def prepare_work_horses(app) -> None:
    """Do once, in the worker, what each forked work horse would otherwise do again.

    RQ forks a horse for every job (a batch of BATCH_SIZE readers): what the horse
    inherits ready costs it nothing. Done in each horse, these took about 190 ms per
    batch of 500, a fifth of a send's time at loopback.
    """
    # A horse must not reuse the parent's database connections.
    os.register_at_fork(after_in_child=lambda: db.engine.dispose(close=False))
    # Nor walk the objects it inherited with its garbage collector: a full collection
    # over the app's objects held the interpreter lock for about 90 ms in every horse,
    # and touching them copies their pages. The parent goes on collecting as before.
    os.register_at_fork(before=gc.freeze, after_in_parent=gc.unfreeze)
    configure_mappers()  # the ORM sets its mappers up at first use: about 25 ms
    for name in builders.EDITION_TEMPLATES:  # compiled once, not per batch
        app.jinja_env.get_template(name)


def main(argv: list[str]) -> int:
    app = create_app(front_ends=False)
    burst = "--burst" in argv
    logging_level = "INFO" if {"-v", "--verbose"} & set(argv) else "WARNING"
    app.app_context().push()
    prepare_work_horses(app)
    stop = threading.Event()
    if not burst:
        threading.Thread(target=keep_ticking, args=(app, stop), daemon=True, name="tick").start()
    try:
        run_worker(burst, stop, logging_level)
    except StopRequested:
        # RQ's SIGTERM handler can still be installed for a moment after its loop ended
        # (Redis gone): it raises this wherever the main thread is. A stop all the same.
        pass
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
