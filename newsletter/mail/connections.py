"""The sending path's SMTP connections: several of them busy at once, each pipelining.

A relay is milliseconds away and each message costs round trips, so a run keeps
``SMTP_CONNECTIONS`` connections (``PipeliningConnection``, RFC 2920 where offered) and
hands out a group of messages at a time, one per connection, each on a thread of its own
(socket waits release the GIL). A connection never has more than one message in flight,
so a killed worker can have sent at most one message per connection without the caller
having recorded it. Every message is DKIM-signed here, on its connection's thread.

The threads do no database work: the caller reads, checkpoints and decides on its own
thread; here only "deliver these, tell me each outcome".
"""

from __future__ import annotations

import logging
import queue
import smtplib
import ssl
import threading
import time
from collections.abc import Callable

from flask import current_app

from newsletter.mail import dkim
from newsletter.mail.builders import OutgoingMail
from newsletter.mail.pipeline import PipeliningConnection
from newsletter.mail.smtp import (
    IDLE_PROBE_SECONDS,
    Outcome,
    OutcomeUnknown,
    SetupFailed,
    Unreachable,
    classify,
    redact,
)

log = logging.getLogger(__name__)

# TLS that failed or was not offered, a login refused or not offered: the setup is wrong.
_SETUP_ERRORS = (ssl.SSLError, smtplib.SMTPAuthenticationError, smtplib.SMTPNotSupportedError)

Result = tuple[Outcome, str]


def _connection() -> PipeliningConnection:
    """A connection to the configured relay (Flask-Mail's settings; read at each open)."""
    mail = current_app.extensions["mail"]
    login = (mail.username, mail.password) if mail.username and mail.password else None
    secure = mail.use_tls or mail.use_ssl
    return PipeliningConnection(
        mail.server,
        mail.port,
        timeout=current_app.config["SMTP_TIMEOUT"],
        use_tls=mail.use_tls,
        use_ssl=mail.use_ssl,
        login=login,
        # Building a verifying context reads the CA store (about 30 ms): only when needed.
        context=ssl.create_default_context() if secure else None,
    )


class Session:
    """One SMTP connection for many messages, opened again whenever it must be."""

    def __init__(self) -> None:
        self.conn: PipeliningConnection | None = None
        self.last_used = time.monotonic()

    def open(self) -> None:
        """Connect and log in; raise Unreachable (may pass by itself) or SetupFailed."""
        self.close()
        conn = _connection()
        try:
            conn.open()
        except _SETUP_ERRORS as exc:
            # Cut off mid-handshake, or "454 try again later": that may pass by itself.
            if isinstance(exc, ssl.SSLEOFError) or getattr(exc, "smtp_code", 500) < 500:
                raise Unreachable(type(exc).__name__) from None
            raise SetupFailed(type(exc).__name__) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise Unreachable(type(exc).__name__) from None
        self.conn = conn
        self.last_used = time.monotonic()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.quit()
            self.conn = None

    def _ready(self) -> None:
        """Reconnect when the server closed the connection (421) or it sat idle too long."""
        conn = self.conn
        healthy = conn is not None and conn.is_open
        if healthy and time.monotonic() - self.last_used > IDLE_PROBE_SECONDS:
            try:
                healthy = conn.host.noop()[0] == 250
            except (OSError, smtplib.SMTPException):
                healthy = False
        if not healthy:
            self.open()

    def deliver(self, mail: OutgoingMail) -> Result:
        """Hand one message to the server; return its Outcome and the redacted reply.

        A connection that drops before the message is complete delivered nothing: reconnect
        and try once more, then defer. Only a drop after the final dot is UNKNOWN. Raises
        Unreachable or SetupFailed when a reconnect fails.
        """
        data = dkim.sign(mail.data)  # every edition goes out here, so every one is signed
        for _ in range(2):
            self._ready()
            try:
                self.conn.deliver(mail.sender, mail.recipient, data)
                return Outcome.SENT, ""
            except OutcomeUnknown:
                self.close()  # it may have been delivered: never resend
                return Outcome.UNKNOWN, "connection dropped after the message"
            except smtplib.SMTPServerDisconnected:
                self.close()
                continue
            except smtplib.SMTPSenderRefused as exc:
                code, message, stage = exc.smtp_code, exc.smtp_error, "mail"
            except smtplib.SMTPRecipientsRefused as exc:
                (code, message), stage = next(iter(exc.recipients.values())), "rcpt"
            except smtplib.SMTPResponseException as exc:
                code, message, stage = exc.smtp_code, exc.smtp_error, "data"
            except ValueError:
                # The envelope cannot be written in ASCII; nothing was sent, and the
                # address fails the same way every time.
                return Outcome.FAILED, "address cannot be sent to"
            finally:
                self.last_used = time.monotonic()
            text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
            return classify(code, message, stage), redact(f"{code} {text}")[:200]
        return Outcome.DEFERRED, "connection dropped before the message was complete"


class Connections:
    """``count`` Sessions, each on a thread of its own; ``deliver`` runs one group at once.

    With one connection there is no thread: the caller's thread delivers.
    """

    def __init__(self, count: int) -> None:
        self.app = current_app._get_current_object()
        self.sessions = [Session() for _ in range(count)]
        self._inboxes: list[queue.SimpleQueue] = []
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._pending: Callable[[], list] | None = None  # what ``start`` handed out

    @property
    def count(self) -> int:
        return len(self.sessions)

    def open(self) -> None:
        """Open every connection at once; go on with those that opened.

        A relay that allows fewer connections than SMTP_CONNECTIONS refuses the rest
        (421 or a reset): they are dropped, with a warning. SetupFailed (wrong settings)
        raises; Unreachable raises only when no connection opened.
        """
        if len(self.sessions) > 1 and not self._threads:
            for number, session in enumerate(self.sessions):
                inbox: queue.SimpleQueue = queue.SimpleQueue()
                thread = threading.Thread(
                    target=self._serve, args=(session, inbox), name=f"smtp-{number}", daemon=True
                )
                thread.start()
                self._inboxes.append(inbox)
                self._threads.append(thread)
        results = self._run([session.open for session in self.sessions])
        errors = [result for result in results if isinstance(result, BaseException)]
        setup = [error for error in errors if isinstance(error, SetupFailed)]
        if setup:
            raise setup[0]
        if len(errors) == len(results):
            raise errors[0]
        if errors:
            log.warning(
                "%d of %d SMTP connections could not be opened (%s); sending on %d",
                len(errors),
                len(results),
                type(errors[0]).__name__,
                len(results) - len(errors),
            )
            kept = [i for i, result in enumerate(results) if not isinstance(result, BaseException)]
            for i in sorted(set(range(len(results))) - set(kept), reverse=True):
                self._stop_thread(i)
                del self.sessions[i]

    def deliver(self, mails: list[OutgoingMail]) -> list[Result | Exception]:
        """Deliver up to ``count`` messages at once, one per connection; results in order.

        An exception (Unreachable, SetupFailed) stands in the list in place of its result,
        so the caller can still record what the other connections delivered.
        """
        self.start(mails)
        return self.wait()

    def start(self, mails: list[OutgoingMail]) -> None:
        """Hand the messages to the connections and return at once (``wait`` collects)."""
        assert len(mails) <= len(self.sessions) and self._pending is None
        self._pending = self._begin(
            [
                (lambda session=session, mail=mail: session.deliver(mail))
                for session, mail in zip(self.sessions, mails, strict=False)
            ]
        )

    def wait(self) -> list[Result | Exception]:
        """The results of what ``start`` handed out, in order, once every one is in."""
        pending, self._pending = self._pending, None
        return pending() if pending is not None else []

    def close(self) -> None:
        """Say goodbye on every connection and end the threads."""
        self.wait()  # a group still under way (the run stopped) ends first
        self._run([session.close for session in self.sessions])
        for i in reversed(range(len(self._threads))):
            self._stop_thread(i)

    # -- the threads

    def _run(self, calls: list[Callable[[], object]]) -> list:
        """Run ``calls[i]`` on connection i's thread, all at once; wait for every one."""
        return self._begin(calls)()

    def _begin(self, calls: list[Callable[[], object]]) -> Callable[[], list]:
        """Start ``calls[i]`` on connection i's thread; return what waits for the results."""
        if not self._threads:
            results = [_outcome(call) for call in calls]
            return lambda: results
        for inbox, (index, call) in zip(self._inboxes, enumerate(calls), strict=False):
            inbox.put((index, call))

        def collect() -> list:
            results: list = [None] * len(calls)
            for _ in calls:
                index, result = self._results.get()
                results[index] = result
            return results

        return collect

    def _serve(self, session: Session, inbox: queue.SimpleQueue) -> None:
        with self.app.app_context():  # for the settings and the DKIM key
            while (item := inbox.get()) is not None:
                index, call = item
                self._results.put((index, _outcome(call)))
        session.close()

    def _stop_thread(self, index: int) -> None:
        self._inboxes.pop(index).put(None)
        self._threads.pop(index).join(timeout=30)


def _outcome(call: Callable[[], object]) -> object:
    """The call's result, or the exception it raised (handed to the caller's thread)."""
    try:
        return call()
    except Exception as exc:  # noqa: BLE001 - re-raised or recorded on the caller's thread
        return exc
