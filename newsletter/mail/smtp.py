"""The one way out: Flask-Mail's connection with a timeout and a verified TLS context.

Everything SMTP stays in the mail package. Callers get domain answers instead of
smtplib's exceptions (whose texts quote the recipient): a single transactional ``send``
raises ``MailNotSent``; the sending path's connections (``mail.connections``) sort each
reply into an ``Outcome`` with ``classify``.
"""

from __future__ import annotations

import enum
import re
import smtplib
import ssl

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
