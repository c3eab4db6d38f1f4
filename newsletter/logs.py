"""Logging set-up: no address and no link token ever reaches a log line.

Redaction is a property of the process's logging, not of each call site: every record
is redacted when it is created (``logging.setLogRecordFactory``), whichever logger made
it (ours, Flask's, Werkzeug's, gunicorn's error and access logs, RQ's, SQLAlchemy's) and
whichever handler writes it. The message, the formatted traceback of ``exc_info`` and
the stack are redacted, so an exception whose text quotes an address (a database error
with its SQL parameters, an SMTP reply) is written without it.
"""

from __future__ import annotations

import logging
import re
import traceback

ADDRESS_MARK = "[address]"
# Anything shaped like local@domain.tld, also percent-encoded (%40) as in query strings.
_ADDRESS = re.compile(
    r"[\w.!#$%&'*+/=?^`{|}~-]+(?:@|%40)[\w-]+(?:\.[\w-]+)+",
    re.IGNORECASE | re.UNICODE,
)
# The secret part of links: /confirm/<token>, /unsubscribe/<token>, /manage/<token>.
_TOKEN_PATH = re.compile(r"/(confirm|unsubscribe|manage)/[A-Za-z0-9_.\-]+")


def redact(text: str) -> str:
    """Replace addresses and link tokens in ``text``."""
    text = _TOKEN_PATH.sub(lambda m: f"/{m.group(1)}/…", text)
    return _ADDRESS.sub(ADDRESS_MARK, text)


def _redacted_record(record: logging.LogRecord) -> logging.LogRecord:
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string; keep the raw template
        message = str(record.msg)
    record.msg, record.args = redact(message), None
    if record.exc_info and record.exc_info[0] is not None:
        # Formatters reuse exc_text when it is set, so the traceback is written redacted.
        record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip())
        record.exc_info = None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    return record


_installed = False


def install() -> None:
    """Redact every log record this process creates, from now on (idempotent)."""
    global _installed
    if _installed:
        return
    make_record = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        return _redacted_record(make_record(*args, **kwargs))

    logging.setLogRecordFactory(factory)
    _installed = True
