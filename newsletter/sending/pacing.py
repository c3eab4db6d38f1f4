"""SEND_RATE across all workers: one Redis counter per time window, shared by every run.

The windows are Redis's clock (``TIME``, read inside the script that counts), not the
workers': on hosts whose clocks disagree, their own clocks would count in different
windows, and each host would get the whole rate.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from flask import current_app

from newsletter.extensions import get_redis

# Count one message in the current window of Redis's clock; return the count and how
# many microseconds the window has left. Redis replicates the script's effects, so
# reading TIME before writing is allowed.
_COUNT = """
local now = redis.call('TIME')
local micros = tonumber(now[1]) * 1000000 + tonumber(now[2])
local window = tonumber(ARGV[1])
local slot = math.floor(micros / window)
local key = KEYS[1] .. slot
local count = redis.call('INCR', key)
redis.call('EXPIRE', key, tonumber(ARGV[2]))
return {count, (slot + 1) * window - micros}
"""


def wait_for_rate(rate: float, while_waiting: Callable[[], None]) -> None:
    """Return once this process may send one more message at ``rate`` messages per second.

    ``while_waiting`` runs after each pause, so a run still notices a pause or cancel.
    """
    if not rate:
        return
    window = max(1.0, 1.0 / rate)
    allowance = max(1, round(rate * window))
    count_in_window = get_redis().register_script(_COUNT)
    while True:
        count, left = count_in_window(
            keys=["nl:send-rate:"], args=[round(window * 1_000_000), math.ceil(window) + 1]
        )
        if count <= allowance:
            return
        time.sleep(max(0.001, left / 1_000_000))
        while_waiting()


def batch_timeout() -> int:
    """How long RQ lets a batch (or retry) job run: a full batch at SEND_RATE, twice over."""
    rate = current_app.config["SEND_RATE"]
    size = current_app.config["BATCH_SIZE"]
    return 600 + (math.ceil(2 * size / rate) if rate else 0)
