"""The one sending path: Flask-Mail's connection with a timeout and a verified TLS context."""

from __future__ import annotations

import smtplib
import ssl

from flask import current_app
from flask_mail import Connection

from newsletter.mailing import OutgoingMail


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
        if self.mail.use_tls:
            host.starttls(context=context)
        if self.mail.username and self.mail.password:
            host.login(self.mail.username, self.mail.password)
        return host

    def __exit__(self, exc_type, exc_value, tb) -> None:
        if self.host is not None:
            try:
                self.host.quit()
            except (smtplib.SMTPException, OSError):
                self.host.close()  # the server went away; nothing left to say goodbye to
            self.host = None

    def deliver(self, mail: OutgoingMail) -> None:
        """Send one message; SMTP errors propagate for the caller to classify."""
        if self.host is None:
            self.host = self.configure_host()
        self.host.sendmail(mail.sender, [mail.recipient], mail.data)

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
