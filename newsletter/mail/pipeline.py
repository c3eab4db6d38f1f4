"""One SMTP connection that pipelines MAIL, RCPT and DATA (RFC 2920) when the server allows.

A relay is 5-30 ms away, and smtplib waits for every reply: MAIL, RCPT, DATA and the final
dot cost four round trips per message. When the server's EHLO lists PIPELINING,
``PipeliningConnection.deliver`` writes MAIL FROM, RCPT TO and DATA at once and reads the
three replies in order (DATA may only end a group, RFC 2920 §3.1), then sends the body:
two round trips. Without PIPELINING it falls back to the step-by-step dialogue. smtplib
does the rest (connect, EHLO, STARTTLS, AUTH, reading replies).

Outcomes are those the sending path already sorts (``sending.classify``):
SMTPSenderRefused (MAIL), SMTPRecipientsRefused (RCPT), SMTPDataError (DATA or the final
dot), a plain SMTPServerDisconnected for a drop before the final dot (certainly not
delivered), and ``OutcomeUnknown`` for a drop while waiting for the final dot's answer
(maybe delivered: never resend); that is mail.smtp's ``OutcomeUnknown``, the one class
the sending path catches.
Reconnecting and retrying are the caller's business.

Several connections at once are ``mail.connections``' business: it runs one of these per
thread, one message at a time each. We deliberately do not put the next MAIL FROM into
the same write as the previous message's final dot (RFC 2920 allows it; one round trip
per message): it would put two messages in flight on one connection, and a killed worker
could then have sent more than one message per connection that nobody recorded.
"""

from __future__ import annotations

import re
import smtplib
import ssl

from newsletter.mail.smtp import OutcomeUnknown  # the one class: never resend

_ACCEPTED = ((250,), (250, 251), (354,))  # MAIL FROM, RCPT TO, DATA


def dot_stuffed(data: bytes) -> bytes:
    """The message as it goes after DATA, up to the final dot (RFC 5321 §4.5.2).

    ``data`` must already use CRLF line ends, as the rendered editions do.
    """
    # bytes.replace is the regex (?m)^\. in C: the regex costs about 0.1 ms per 25 KB.
    body = (b"." if data.startswith(b".") else b"") + data.replace(b"\n.", b"\n..")
    return body if body.endswith(b"\r\n") else body + b"\r\n"


class PipeliningConnection:
    """An SMTP client connection that delivers one message (one recipient) at a time.

    ``with PipeliningConnection("relay", 587, use_tls=True, login=(user, pw)) as conn:
    conn.deliver(sender, recipient, data)``. ``open()`` raises what smtplib raises when the
    server cannot be reached or refuses STARTTLS/AUTH. After a drop or a 421 the
    connection is closed (``is_open`` is False); ``deliver`` then raises a plain
    SMTPServerDisconnected and the caller calls ``open()`` again.
    """

    def __init__(
        self,
        hostname: str,
        port: int,
        *,
        timeout: float = 30.0,
        use_tls: bool = False,
        use_ssl: bool = False,
        login: tuple[str, str] | None = None,
        context: ssl.SSLContext | None = None,
        pipelining: bool = True,
        local_hostname: str | None = None,
    ) -> None:
        self.hostname, self.port, self.timeout = hostname, port, timeout
        self.use_tls, self.use_ssl, self.login = use_tls, use_ssl, login
        self.context = context
        self.allow_pipelining = pipelining
        self.local_hostname = local_hostname
        self.host: smtplib.SMTP | None = None

    # -- the connection

    def open(self) -> None:
        """Connect, EHLO, STARTTLS (and EHLO again), AUTH: smtplib does all of it."""
        self.close()
        # A verifying context reads the CA store (30-80 ms): build one only for TLS.
        context = self.context
        if context is None and (self.use_ssl or self.use_tls):
            context = ssl.create_default_context()
        if self.use_ssl:
            host: smtplib.SMTP = smtplib.SMTP_SSL(
                self.hostname, self.port, self.local_hostname, timeout=self.timeout,
                context=context,
            )  # fmt: skip
        else:
            host = smtplib.SMTP(self.hostname, self.port, self.local_hostname, self.timeout)
        try:
            host.ehlo_or_helo_if_needed()
            if self.use_tls:
                host.starttls(context=context)
                host.ehlo()  # the extensions offered before TLS no longer count
            if self.login:
                host.login(*self.login)
        except BaseException:
            host.close()  # no socket left behind for the garbage collector to find
            raise
        self.host = host

    @property
    def is_open(self) -> bool:
        return self.host is not None and self.host.sock is not None

    @property
    def pipelining(self) -> bool:
        """Whether MAIL/RCPT/DATA go in one write on this connection."""
        host = self.host
        if not self.allow_pipelining or host is None or host.sock is None:
            return False
        return host.has_extn("pipelining")

    def close(self) -> None:
        if self.host is not None:
            self.host.close()
            self.host = None

    def quit(self) -> None:
        """Say goodbye if the server is still there, and close."""
        if self.host is not None and self.is_open:
            try:
                self.host.quit()
            except (smtplib.SMTPException, OSError):
                pass  # gone already; nothing left to say goodbye to
        self.close()

    def __enter__(self) -> PipeliningConnection:
        if not self.is_open:
            self.open()
        return self

    def __exit__(self, *exc_info) -> None:
        self.quit()

    # -- one message

    def deliver(self, sender: str, recipient: str, data: bytes) -> tuple[int, bytes]:
        """Send one message; return the server's reply to the final dot, e.g. (250, b"Ok").

        Raises ValueError, before anything is sent, for an address that is not ASCII (no
        SMTPUTF8 here) or holds a line break; SMTP refusals and drops raise as the module
        docstring says.
        """
        host = self.host
        if host is None or host.sock is None:
            raise smtplib.SMTPServerDisconnected("not connected")
        # RFC 1870: the size counts the CRLFs, not the dot-stuffing nor the final dot.
        size = len(data) + (0 if data.endswith(b"\r\n") else 2)
        size_option = f" SIZE={size}" if host.has_extn("size") else ""
        commands = [
            _command("MAIL FROM", sender, size_option),
            _command("RCPT TO", recipient),
            b"DATA\r\n",
        ]
        replies = _group(host, commands) if self.pipelining else _steps(host, commands)
        refusal = _refusal(replies, sender, recipient)
        if refusal is not None:
            if not _abandon(host, replies):
                self.close()
            raise refusal
        # A drop while sending: the final dot never went, so nothing was delivered.
        host.send(dot_stuffed(data) + b".\r\n")
        try:
            code, reply = host.getreply()
        except smtplib.SMTPServerDisconnected as exc:
            raise OutcomeUnknown(str(exc)) from None
        if code != 250:
            if code == 421:
                self.close()
            raise smtplib.SMTPDataError(code, reply)  # the dot ended the transaction anyway
        return code, reply


def _steps(host: smtplib.SMTP, commands: list[bytes]) -> list[tuple[int, bytes]]:
    """The classic dialogue: each command waits for its reply; stop at a refusal."""
    replies = []
    for command, accepted in zip(commands, _ACCEPTED, strict=True):
        host.send(command)
        replies.append(host.getreply())
        if replies[-1][0] not in accepted:
            break
    return replies


def _group(host: smtplib.SMTP, commands: list[bytes]) -> list[tuple[int, bytes]]:
    """RFC 2920: one write, then one reply per command, counted in order.

    The group is a few hundred bytes, far below any TCP window, so a blocking write
    cannot deadlock (§3.1). Every reply is read, even after a refusal, so the next
    transaction reads its own replies. A drop after a refusal (say 421 at RCPT) reports
    the refusal; a drop with nothing refused yet is a plain disconnect.
    """
    host.send(b"".join(commands))
    replies = []
    for _ in commands:
        try:
            replies.append(host.getreply())
        except smtplib.SMTPServerDisconnected:
            if any(code not in ok for (code, _), ok in zip(replies, _ACCEPTED, strict=False)):
                return replies
            raise
    return replies


def _abandon(host: smtplib.SMTP, replies: list[tuple[int, bytes]]) -> bool:
    """End a refused transaction; False when the connection cannot carry another message.

    RFC 2920 §3.1: a DATA that was rejected is followed by RSET; a DATA answered 354
    although MAIL or RCPT was refused (some servers do) gets a lone dot, never the
    message. After a 421 or a drop the connection is done.
    """
    if host.sock is None or any(code == 421 for code, _ in replies):
        return False
    try:
        if len(replies) == 3 and replies[2][0] == 354:
            host.send(b".\r\n")
            host.getreply()
        else:
            host.rset()
    except smtplib.SMTPServerDisconnected:
        return False  # gone already; the caller reconnects
    return True


# A bare address smtplib.quoteaddr would return as "<address>" unchanged: no need to
# parse it (email.utils' parser costs about 20 us an address).
_PLAIN_ADDRESS = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+\Z")


def _command(verb: str, address: str, options: str = "") -> bytes:
    """``MAIL FROM:<a>`` or ``RCPT TO:<a>``, refused like smtplib's putcmd refuses it."""
    if "\r" in address or "\n" in address:
        raise ValueError("a line break in an SMTP address")  # command injection
    quoted = f"<{address}>" if _PLAIN_ADDRESS.match(address) else smtplib.quoteaddr(address)
    return f"{verb}:{quoted}{options}\r\n".encode("ascii")


def _refusal(
    replies: list[tuple[int, bytes]], sender: str, recipient: str
) -> smtplib.SMTPException | None:
    """The exception for the first refused command, as ``smtplib.sendmail`` raises it."""
    for stage, ((code, reply), accepted) in enumerate(zip(replies, _ACCEPTED, strict=False)):
        if code in accepted:
            continue
        if stage == 0:
            return smtplib.SMTPSenderRefused(code, reply, sender)
        if stage == 1:
            return smtplib.SMTPRecipientsRefused({recipient: (code, reply)})
        return smtplib.SMTPDataError(code, reply)
    return None
