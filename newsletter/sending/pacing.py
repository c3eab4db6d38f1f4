"""SEND_RATE across all workers: one Redis counter per time window, shared by every run."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from flask import current_app

from newsletter.extensions import get_redis


def wait_for_rate(rate: float, while_waiting: Callable[[], None]) -> None:
    """Return once this process may send one more message at ``rate`` messages per second.

    ``while_waiting`` runs after each pause, so a run still notices a pause or cancel.
    """
    if not rate:
        return
    window = max(1.0, 1.0 / rate)
    allowance = max(1, round(rate * window))
    redis = get_redis()
    while True:
        now = time.time()
        slot = int(now // window)
        key = f"nl:send-rate:{slot}"
        with redis.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, math.ceil(window) + 1)
            count = pipe.execute()[0]
        if count <= allowance:
            return
        time.sleep(max(0.001, (slot + 1) * window - time.time()))
        while_waiting()


def batch_timeout() -> int:
    """How long RQ lets a batch (or retry) job run: a full batch at SEND_RATE, twice over."""
    rate = current_app.config["SEND_RATE"]
    size = current_app.config["BATCH_SIZE"]
    return 600 + (math.ceil(2 * size / rate) if rate else 0)
