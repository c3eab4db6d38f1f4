"""The one way out: Flask-Mail's connection with a timeout and a verified TLS context.

Everything SMTP stays in here. Callers get domain answers instead of smtplib's
exceptions (whose texts quote the recipient): a batch's ``Session`` sorts each reply into
an ``Outcome``; a single transactional ``send`` raises ``MailNotSent``.
"""

from __future__ import annotations

import enum
import re
import smtplib
import ssl
import time

from flask import current_app
from flask_mail import Connection

from newsletter.mail import dkim
from newsletter.mail.builders import OutgoingMail

_LEADING_DOT = re.compile(rb"(?m)^\.")
IDLE_PROBE_SECONDS = 10.0  # a connection idle this long gets a NOOP before the next message


class Outcome(enum.Enum):
    SENT = "sent"
    DEFERRED = "deferred"  # 4xx: try again later
    NO_MAILBOX = "no_mailbox"  # 5.1.1/5.1.10 for the recipient: it does not exist; erase it
    BLOCKED = "blocked"  # 5.7.x: policy or reputation block; a human must look
    SENDER = "sender"  # our sender address was refused (MAIL FROM, 5.1.7/5.1.8); a human must look
    FAILED = "failed"  # any other permanent refusal
    UNKNOWN = "unknown"  # the connection dropped after DATA: maybe delivered, never resend


_ENHANCED_STATUS = re.compile(rb"^\s*([245])\.(\d{1,3})\.(\d{1,3})\b")


def classify(code: int, message: bytes | str, stage: str = "rcpt") -> Outcome:
    """Sort an SMTP refusal by its reply code, enhanced status code (RFC 3463) and stage.

    ``stage`` is "mail" (MAIL FROM: about our sender), "rcpt" or "data". Only 5.1.1 and
    5.1.10 about the recipient mean the address does not exist; 5.1.7/5.1.8 and any
    permanent refusal of MAIL FROM are about our own address and must not erase anybody.
    """
    if 400 <= code < 500:
        return Outcome.DEFERRED
    text = message.encode("utf-8", "replace") if isinstance(message, str) else message
    match = _ENHANCED_STATUS.match(text or b"")
    detail = (match.group(2), match.group(3)) if match and match.group(1) == b"5" else None
    if detail is not None and detail[0] == b"7":
        return Outcome.BLOCKED
    if stage == "mail" or detail in ((b"1", b"7"), (b"1", b"8")):
        return Outcome.SENDER
    if detail in ((b"1", b"1"), (b"1", b"10")):
        return Outcome.NO_MAILBOX
    return Outcome.FAILED


_BRACKETED_ADDRESS = re.compile(r"<[^<>\s]*@[^<>\s]*>?")
_BARE_ADDRESS = re.compile(r"[^\s<>()\[\],;:]*@[^\s<>()\[\],;:]*")


def redact(reply: str) -> str:
    """Replace what looks like an address in an SMTP reply: it goes to status_reason."""
    return _BARE_ADDRESS.sub("[address]", _BRACKETED_ADDRESS.sub("<address>", reply))


class Unreachable(Exception):
    """The server could not be reached, or asked us to come back later; try again later."""


class SetupFailed(Exception):
    """TLS or the login failed: the settings are wrong, and trying again will not help."""


class MailNotSent(Exception):
    """The server did not take a mail. The text names ids only (RQ stores and logs it).

    ``code`` is the server's reply code, None when it could not be reached (``detail``
    then names the error).
    """

    def __init__(self, what: str, detail: str, code: int | None = None) -> None:
        super().__init__(f"{what}: {detail}")
        self.detail = detail
        self.code = code


class MailRefused(MailNotSent):
    """The server refused this recipient (``stage`` "rcpt") or this message ("data")."""

    code: int

    def __init__(self, what: str, code: int, stage: str) -> None:
        super().__init__(what, f"SMTP refused the message ({code})", code)
        self.stage = stage

    @property
    def permanent(self) -> bool:
        return self.code >= 500


class OutcomeUnknown(smtplib.SMTPServerDisconnected):
    """The connection dropped after the message's final dot: it may have been delivered."""


class SmtpConnection(Connection):
    """Flask-Mail's Connection, hardened.

    Flask-Mail 0.10 opens ``smtplib.SMTP(host, port)`` without a timeout (a dead server
    hangs the worker forever) and starts TLS without a context (no certificate check).
    """

    def configure_host(self) -> smtplib.SMTP:
        timeout = current_app.config["SMTP_TIMEOUT"]
        context = ssl.create_default_context()
        host: smtplib.SMTP
        if self.mail.use_ssl:
            host = smtplib.SMTP_SSL(
                self.mail.server, self.mail.port, timeout=timeout, context=context
            )
        else:
            host = smtplib.SMTP(self.mail.server, self.mail.port, timeout=timeout)
        host.set_debuglevel(int(self.mail.debug))
        try:
            if self.mail.use_tls:
                host.starttls(context=context)
            if self.mail.username and self.mail.password:
                host.login(self.mail.username, self.mail.password)
        except BaseException:
            host.close()  # no socket left behind for the garbage collector to find
            raise
        return host

    def __exit__(self, exc_type, exc_value, tb) -> None:
        if self.host is not None:
            try:
                self.host.quit()
            except (smtplib.SMTPException, OSError):
                self.host.close()  # the server went away; nothing left to say goodbye to
            self.host = None

    def deliver(self, mail: OutgoingMail) -> None:
        """Send one message step by step; SMTP errors propagate for the caller to classify.

        ``sendmail()`` raises the same SMTPServerDisconnected for a drop at any step, so a
        drop before the message was complete could not be told from one after it. Here only
        a drop while waiting for the answer to the final dot raises ``OutcomeUnknown``.
        Refusals raise what ``sendmail()`` raises: SMTPSenderRefused (MAIL FROM),
        SMTPRecipientsRefused (RCPT TO), SMTPDataError (DATA).
        """
        if self.host is None:
            self.host = self.configure_host()
        host = self.host
        host.ehlo_or_helo_if_needed()
        data = dkim.sign(mail.data)  # every mail goes out here, so every mail is signed
        options = [f"SIZE={len(data)}"] if host.does_esmtp and host.has_extn("size") else []
        code, reply = host.mail(mail.sender, options)
        if code != 250:
            self._refused(code)
            raise smtplib.SMTPSenderRefused(code, reply, mail.sender)
        code, reply = host.rcpt(mail.recipient)
        if code not in (250, 251):
            self._refused(code)
            raise smtplib.SMTPRecipientsRefused({mail.recipient: (code, reply)})
        host.putcmd("data")
        code, reply = host.getreply()
        if code != 354:
            self._refused(code)
            raise smtplib.SMTPDataError(code, reply)
        body = _LEADING_DOT.sub(b"..", data)
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        host.send(body + b".\r\n")
        try:
            code, reply = host.getreply()
        except smtplib.SMTPServerDisconnected as exc:
            raise OutcomeUnknown(str(exc)) from None
        if code != 250:
            self._refused(code)
            raise smtplib.SMTPDataError(code, reply)

    def _refused(self, code: int) -> None:
        """End the refused transaction (RSET), or the connection after a 421."""
        if code == 421:
            self.host.close()
            return
        try:
            self.host.rset()
        except smtplib.SMTPServerDisconnected:
            pass  # gone already; the next message reconnects


def connect() -> SmtpConnection:
    return SmtpConnection(current_app.extensions["mail"])


def send(mail: OutgoingMail, what: str = "mail") -> None:
    """Send one mail on a connection of its own; raise MailNotSent naming ``what``, no address.

    A refusal at RCPT TO or DATA is MailRefused: about this mail. One at MAIL FROM or the
    login is about our side, as are connection failures: plain MailNotSent.
    """
    try:
        with connect() as conn:
            conn.deliver(mail)
    except smtplib.SMTPDataError as exc:
        raise MailRefused(what, exc.smtp_code, "data") from None
    except smtplib.SMTPResponseException as exc:
        raise MailNotSent(what, f"SMTP answered {exc.smtp_code}", exc.smtp_code) from None
    except smtplib.SMTPRecipientsRefused as exc:
        code = min(code for code, _ in exc.recipients.values())  # one recipient, in fact
        raise MailRefused(what, code, "rcpt") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise MailNotSent(what, type(exc).__name__) from None


# TLS that failed or was not offered, a login refused or not offered: the setup is wrong.
_SETUP_ERRORS = (ssl.SSLError, smtplib.SMTPAuthenticationError, smtplib.SMTPNotSupportedError)


class Session:
    """One SMTP connection for many messages (a batch), opened again whenever it must be."""

    def __init__(self) -> None:
        self.conn: SmtpConnection | None = None
        self.last_used = time.monotonic()

    def open(self) -> None:
        """Connect and log in; raise Unreachable (may pass by itself) or SetupFailed."""
        try:
            self.conn = connect()
            self.conn.host = self.conn.configure_host()
        except _SETUP_ERRORS as exc:
            self.conn = None
            # Cut off mid-handshake, or "454 try again later": that may pass by itself.
            if isinstance(exc, ssl.SSLEOFError) or getattr(exc, "smtp_code", 500) < 500:
                raise Unreachable(type(exc).__name__) from None
            raise SetupFailed(type(exc).__name__) from None
        except (OSError, smtplib.SMTPException) as exc:
            self.conn = None
            raise Unreachable(type(exc).__name__) from None
        self.last_used = time.monotonic()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.__exit__(None, None, None)
            self.conn = None

    def _ready(self) -> None:
        """Reconnect when the server closed the connection (421) or it sat idle too long."""
        host = self.conn.host if self.conn is not None else None
        healthy = host is not None and host.sock is not None
        if healthy and time.monotonic() - self.last_used > IDLE_PROBE_SECONDS:
            try:
                healthy = host.noop()[0] == 250
            except (OSError, smtplib.SMTPException):
                healthy = False
        if not healthy:
            self.close()
            self.open()

    def deliver(self, mail: OutgoingMail) -> tuple[Outcome, str]:
        """Hand one message to the server; return its Outcome and the redacted reply.

        A connection that drops before the message is complete delivered nothing: reconnect
        and try once more, then defer. Only a drop after the final dot is UNKNOWN. Raises
        Unreachable or SetupFailed when a reconnect fails.
        """
        for _ in range(2):
            self._ready()
            try:
                self.conn.deliver(mail)
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
                # smtplib could not encode the envelope (non-ASCII): mid-transaction, so
                # the connection goes; the address fails the same way every time.
                self.close()
                return Outcome.FAILED, "address cannot be sent to"
            finally:
                self.last_used = time.monotonic()
            text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
            return classify(code, message, stage), redact(f"{code} {text}")[:200]
        return Outcome.DEFERRED, "connection dropped before the message was complete"
