"""An in-process SMTP server (aiosmtpd) that captures what it receives.

Replies can be programmed per recipient (at RCPT TO or after DATA) and for MAIL FROM, to
test how sending handles 4xx, 5xx and a connection dropped at RCPT TO or after DATA. Every
RCPT TO is logged with its time, so tests can count attempts that were refused.
"""

from __future__ import annotations

import email
import email.policy
import socket
import threading
import time
from dataclasses import dataclass, field

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes  # exactly the bytes on the wire, after the DATA command
    mail_options: list[str] = field(default_factory=list)  # MAIL FROM parameters, e.g. SIZE=

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)

    def part(self, subtype: str) -> str:
        for part in self.message.walk():
            if part.get_content_type() == f"text/{subtype}":
                return part.get_content()
        raise AssertionError(f"no text/{subtype} part")

    @property
    def text(self) -> str:
        return self.part("plain")

    @property
    def html(self) -> str:
        return self.part("html")


def _received(envelope) -> Received:
    return Received(
        envelope.mail_from,
        list(envelope.rcpt_tos),
        envelope.content,
        list(envelope.mail_options),
    )


class CaptureHandler:
    def __init__(self) -> None:
        self.messages: list[Received] = []
        self.lock = threading.Lock()
        self.replies: dict[str, str] = {}  # recipient -> SMTP reply at DATA, e.g. "450 4.2.0 busy"
        self.drop_after_data: set[str] = set()
        self.rcpt_replies: dict[str, str] = {}  # recipient -> reply to RCPT TO
        self.mail_reply: str | None = None  # reply to every MAIL FROM, e.g. "553 5.1.8 ..."
        self.drop_at_rcpt: set[str] = set()  # close the connection at RCPT TO, once each
        self.delay = 0.0
        self.receiving = threading.Event()  # set when a DATA arrives, before ``delay``
        self.accept_login = True  # AUTH is offered without TLS; False refuses it (535)
        self.rcpt_log: list[tuple[str, float]] = []  # every RCPT TO, refused or not, timed
        self.in_data = 0  # DATA commands being answered right now (all connections)
        self.peak_in_data = 0  # the most at once: how many connections sent side by side

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        return AuthResult(success=self.accept_login, handled=False)

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.mail_reply:
            return self.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        recipient = address.lower()
        with self.lock:
            self.rcpt_log.append((recipient, time.monotonic()))
        if recipient in self.drop_at_rcpt:
            self.drop_at_rcpt.discard(recipient)
            server.transport.close()  # before DATA: certainly not delivered
            return "421 closing"
        reply = self.rcpt_replies.get(recipient)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        recipient = envelope.rcpt_tos[0].lower()
        self.receiving.set()
        self.in_data += 1  # one event loop thread: no lock needed
        self.peak_in_data = max(self.peak_in_data, self.in_data)
        try:
            if self.delay:
                import asyncio

                await asyncio.sleep(self.delay)
        finally:
            self.in_data -= 1
        if recipient in self.drop_after_data:
            self.drop_after_data.discard(recipient)
            with self.lock:
                self.messages.append(_received(envelope))
            server.transport.close()  # outcome unknown to the client
            return "421 closing"
        reply = self.replies.get(recipient)
        if reply and not reply.startswith("2"):
            return reply
        with self.lock:
            self.messages.append(_received(envelope))
        return "250 OK"


class SmtpServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        with socket.socket() as probe:  # aiosmtpd 1.4 cannot bind port 0 itself
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self.host = host
        self.handler = CaptureHandler()
        self.controller = Controller(
            self.handler,
            hostname=host,
            port=self.port,
            auth_require_tls=False,
            authenticator=self.handler.authenticate,
        )

    def start(self) -> None:
        self.controller.start()

    def stop(self) -> None:
        self.controller.stop()

    def reset(self) -> None:
        with self.handler.lock:
            self.handler.messages.clear()
            self.handler.rcpt_log.clear()
        self.handler.replies.clear()
        self.handler.drop_after_data.clear()
        self.handler.rcpt_replies.clear()
        self.handler.mail_reply = None
        self.handler.drop_at_rcpt.clear()
        self.handler.delay = 0.0
        self.handler.receiving.clear()
        self.handler.accept_login = True
        self.handler.peak_in_data = 0

    @property
    def messages(self) -> list[Received]:
        with self.handler.lock:
            return list(self.handler.messages)

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address.lower() in [r.lower() for r in m.rcpt_tos]]

    def attempts(self, address: str) -> list[float]:
        """When each delivery to ``address`` was tried (its RCPT TO), accepted or refused."""
        with self.handler.lock:
            return [at for rcpt, at in self.handler.rcpt_log if rcpt == address.lower()]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} messages, got {len(self.messages)}")
            time.sleep(0.02)
        return self.messages
