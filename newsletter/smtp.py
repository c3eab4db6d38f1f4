"""The one sending path: Flask-Mail's connection with a timeout and a verified TLS context."""

from __future__ import annotations

import re
import smtplib
import ssl

from flask import current_app
from flask_mail import Connection

from newsletter.mailing import OutgoingMail

_LEADING_DOT = re.compile(rb"(?m)^\.")


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
        options = [f"SIZE={len(mail.data)}"] if host.does_esmtp and host.has_extn("size") else []
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
        body = _LEADING_DOT.sub(b"..", mail.data)
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

    def reconnect(self) -> None:
        if self.host is not None:
            try:
                self.host.close()
            finally:
                self.host = None
        self.host = self.configure_host()


def connect() -> SmtpConnection:
    """Open a connection for a batch: ``with connect() as conn: conn.deliver(mail)``."""
    return SmtpConnection(current_app.extensions["mail"])


def send(mail: OutgoingMail) -> None:
    with connect() as conn:
        conn.deliver(mail)
