"""Python under libfaketime with the monotonic clock left alone (tests/test_clock_skew.py).

Debian's libfaketime 0.9.10 answers ``time.sleep`` (an absolute ``clock_nanosleep`` on
the monotonic clock) with EINVAL; faking the monotonic clock as well instead makes every
timed wait last for years. Timed waits on a condition work, so sleep on one. Only the
processes the clock skew tests start with ``LD_PRELOAD`` have this folder on their path.
"""

import threading
import time


def _sleep(seconds: float) -> None:
    if seconds < 0:
        raise ValueError("sleep length must be non-negative")
    threading.Event().wait(seconds)


time.sleep = _sleep
