"""Logging helpers: keep secrets in links out of access logs."""

from __future__ import annotations

import logging
import re

_TOKEN_PATH = re.compile(r"/(confirm|unsubscribe|manage)/[A-Za-z0-9_.\-]+")


class RedactTokens(logging.Filter):
    """Replace the token in ``/confirm/<token>``-style paths with ``…``."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/…", message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True
