"""An RQ worker with the scheduler, for any machine: ``python worker.py``.

It builds the app once, before RQ forks a work horse per job (the horse inherits it),
and keeps the database's periodic tick alive: every TICK_INTERVAL it enqueues the tick
job of the current time slot; the job id makes it one job however many workers ask, and
asking again every interval means an emptied Redis loses no schedule.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

from rq import Worker

from newsletter import create_app
from newsletter.extensions import QUEUE_NAMES, db, get_queue, get_redis
from newsletter.jobs import enqueue_tick

log = logging.getLogger("newsletter.worker")


def keep_ticking(app, stop: threading.Event) -> None:
    interval = app.config["TICK_INTERVAL"]
    with app.app_context():
        while not stop.is_set():
            try:
                enqueue_tick(int(time.time() // interval))
            except Exception:  # noqa: BLE001 - Redis may be briefly away; try next time
                log.warning("could not enqueue the tick; retrying in %ss", interval, exc_info=True)
            stop.wait(interval)


def main(argv: list[str]) -> int:
    app = create_app()
    burst = "--burst" in argv
    app.app_context().push()
    # A forked work horse must not reuse the parent's database connections.
    os.register_at_fork(after_in_child=lambda: db.engine.dispose(close=False))
    stop = threading.Event()
    if not burst:
        threading.Thread(target=keep_ticking, args=(app, stop), daemon=True, name="tick").start()
    worker = Worker(
        [get_queue(name) for name in QUEUE_NAMES],
        connection=get_redis(),
        log_job_description=False,  # descriptions are fixed names anyway; belt and braces
    )
    try:
        worker.work(with_scheduler=True, burst=burst, logging_level="INFO", max_idle_time=None)
    finally:
        stop.set()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
