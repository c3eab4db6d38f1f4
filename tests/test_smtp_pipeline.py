"""newsletter/mail/pipeline.py against real servers: aiosmtpd, smtp-sink, Postfix's smtpd.

* aiosmtpd 1.4.6 does not offer PIPELINING: it checks the step-by-step fallback.
* smtp-sink offers PIPELINING, except with -f/-r (refuse a command), which imply -p: its
  421 at RCPT (-Q), drop at DATA (-q DATA) and drop after the dot (-q .) are pipelined
  cases; its refused RCPT/DATA are fallback cases.
* A throwaway Postfix smtpd (PIPELINING, smtpd_forbid_unauth_pipelining = yes) refuses an
  unknown user (5.1.1), relaying (5.7.1), a sender, a DATA and an oversized SIZE= inside
  pipelined groups, also over STARTTLS.
* A tiny scripted server answers DATA with 354 although RCPT was refused, which no real
  server here does.
* Through bench/delay_proxy.py (20 ms RTT), pipelining halves the round trips.
"""

from __future__ import annotations

import os
import re
import shutil
import smtplib
import socket
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from bench.delay_proxy import DelayProxy
from newsletter.mail.pipeline import OutcomeUnknown, PipeliningConnection
from tests.postfix import free_port, throwaway_postfix, wait_for_port
from tests.tls import self_signed, trusting

SINK = "/usr/sbin/smtp-sink"
SENDER = "news@news.example.com"
MESSAGE = b"Subject: Our news\r\nTo: reader\r\n\r\nHello\r\n.a line that starts with a dot\r\n.\r\n"


# -- aiosmtpd: no PIPELINING, the step-by-step fallback


@pytest.fixture
def aiosmtpd(smtp_server):
    smtp_server.reset()
    yield smtp_server
    smtp_server.reset()


def _connection(port: int, **options) -> PipeliningConnection:
    connection = PipeliningConnection("127.0.0.1", port, timeout=10, **options)
    connection.open()
    return connection


def test_aiosmtpd_gets_the_message_step_by_step_with_size_and_dots_intact(aiosmtpd):
    with _connection(aiosmtpd.port) as connection:
        assert not connection.pipelining  # aiosmtpd 1.4.6 offers no PIPELINING
        code, _ = connection.deliver(SENDER, "reader@example.org", MESSAGE)

    assert code == 250
    (received,) = aiosmtpd.to("reader@example.org")
    assert received.data == MESSAGE
    assert received.mail_options == [f"SIZE={len(MESSAGE)}"]  # RFC 1870: before dot-stuffing


@pytest.mark.parametrize(
    "program, error, code",
    [
        ("mail", smtplib.SMTPSenderRefused, 553),
        ("rcpt", smtplib.SMTPRecipientsRefused, 550),
        ("dot", smtplib.SMTPDataError, 554),
    ],
)
def test_a_step_by_step_refusal_raises_what_sendmail_raises_and_the_next_message_goes(
    aiosmtpd, program, error, code
):
    refused = "refused@example.org"
    if program == "mail":
        aiosmtpd.handler.mail_reply = "553 5.1.8 sender refused"
    elif program == "rcpt":
        aiosmtpd.handler.rcpt_replies[refused] = "550 5.1.1 no such user"
    else:
        aiosmtpd.handler.replies[refused] = "554 5.7.1 content refused"
    with _connection(aiosmtpd.port) as connection:
        with pytest.raises(error) as raised:
            connection.deliver(SENDER, refused, MESSAGE)
        aiosmtpd.handler.mail_reply = None
        connection.deliver(SENDER, "next@example.org", MESSAGE)

    reply = raised.value.recipients[refused] if program == "rcpt" else raised.value.args
    assert reply[0] == code
    assert aiosmtpd.to(refused) == [] and len(aiosmtpd.to("next@example.org")) == 1


def test_step_by_step_a_drop_at_rcpt_is_a_plain_disconnect_and_after_the_dot_unknown(aiosmtpd):
    aiosmtpd.handler.drop_at_rcpt.add("gone@example.org")
    aiosmtpd.handler.drop_after_data.add("maybe@example.org")
    with _connection(aiosmtpd.port) as connection:
        with pytest.raises(smtplib.SMTPServerDisconnected) as before:
            connection.deliver(SENDER, "gone@example.org", MESSAGE)
        assert not connection.is_open
        connection.open()
        with pytest.raises(OutcomeUnknown):
            connection.deliver(SENDER, "maybe@example.org", MESSAGE)

    assert not isinstance(before.value, OutcomeUnknown)


@pytest.mark.parametrize(
    "recipient", ["jörg@example.org", "x@example.org>\r\nRCPT TO:<other@example.org"]
)
def test_a_non_ascii_or_multi_line_address_raises_value_error_before_anything_is_sent(
    aiosmtpd, recipient
):
    with _connection(aiosmtpd.port) as connection:
        with pytest.raises(ValueError):
            connection.deliver(SENDER, recipient, MESSAGE)
        connection.deliver(SENDER, "reader@example.org", MESSAGE)

    assert aiosmtpd.handler.rcpt_log[0][0] == "reader@example.org"


def test_login_goes_through_smtplib_and_a_refused_one_raises_at_open(aiosmtpd):
    with _connection(aiosmtpd.port, login=("user", "secret")) as connection:
        connection.deliver(SENDER, "reader@example.org", MESSAGE)
    aiosmtpd.handler.accept_login = False

    with pytest.raises(smtplib.SMTPAuthenticationError):
        _connection(aiosmtpd.port, login=("user", "wrong"))
    assert len(aiosmtpd.to("reader@example.org")) == 1


# -- smtp-sink: PIPELINING unless told to refuse a command


@pytest.fixture
def sink():
    """start(*options) runs smtp-sink on a free port and returns the port."""
    if not os.path.exists(SINK):
        pytest.skip(f"{SINK} is missing (apt-get install postfix; no daemon needed)")
    processes = []

    def start(*options: str) -> int:
        port = free_port()
        user = ["-u", "nobody"] if os.geteuid() == 0 else []
        processes.append(
            subprocess.Popen(
                [SINK, *user, *options, f"127.0.0.1:{port}", "64"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        wait_for_port(port)
        return port

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


@pytest.fixture
def dumps():
    """A folder smtp-sink (user nobody) can write its message dumps into."""
    folder = Path(tempfile.mkdtemp(prefix="nl-sink-"))
    folder.chmod(0o777)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_smtp_sink_gets_pipelined_messages_intact(sink, dumps):
    port = sink("-d", f"{dumps}/%M.")
    with _connection(port) as connection:
        assert connection.pipelining
        replies = [connection.deliver(SENDER, f"r{n}@example.org", MESSAGE) for n in range(3)]

    assert replies == [(250, b"2.0.0 Ok")] * 3
    deadline = time.monotonic() + 10
    while len(list(dumps.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    dumped = [path.read_bytes() for path in dumps.iterdir()]
    for n in range(3):
        (dump,) = [dump for dump in dumped if b"X-Rcpt-Args: <r%d@example.org>\n" % n in dump]
        assert dump.endswith(b"\n" + MESSAGE.replace(b"\r\n", b"\n") + b"\n")  # unstuffed


def test_a_421_at_rcpt_in_a_pipelined_group_refuses_the_recipient_and_closes(sink):
    with _connection(sink("-Q", "RCPT")) as connection:
        assert connection.pipelining
        with pytest.raises(smtplib.SMTPRecipientsRefused) as raised:
            connection.deliver(SENDER, "reader@example.org", MESSAGE)
        assert not connection.is_open

    assert raised.value.recipients["reader@example.org"][0] == 421


@pytest.mark.parametrize("command, unknown", [("DATA", False), (".", True)])
def test_a_pipelined_drop_before_the_dot_is_plain_and_after_it_unknown(sink, command, unknown):
    with _connection(sink("-q", command)) as connection:
        assert connection.pipelining
        with pytest.raises(smtplib.SMTPServerDisconnected) as raised:
            connection.deliver(SENDER, "reader@example.org", MESSAGE)

    assert isinstance(raised.value, OutcomeUnknown) is unknown


@pytest.mark.parametrize(
    "command, error", [("RCPT", smtplib.SMTPRecipientsRefused), ("DATA", smtplib.SMTPDataError)]
)
def test_smtp_sink_refusing_a_command_stops_offering_pipelining_and_the_steps_refuse(
    sink, command, error
):
    port = sink("-f", command, "-B", "550 5.1.1 refused by smtp-sink")
    with _connection(port) as connection:
        assert not connection.pipelining  # -f implies -p
        with pytest.raises(error):
            connection.deliver(SENDER, "reader@example.org", MESSAGE)
        assert connection.host.noop()[0] == 250  # RSET went; the body did not


# -- a scripted server: 354 for DATA although the RCPT was refused


class ScriptedServer:
    """One connection at a time; offers PIPELINING; answers DATA with 354 whatever came before.

    RCPT replies come from ``rcpt_replies`` in order. Every line and every recv() chunk is
    kept, so a test can see what the client sent and how it was grouped.
    """

    def __init__(self, rcpt_replies: list[bytes]) -> None:
        self.rcpt_replies = rcpt_replies
        self.lines: list[bytes] = []
        self.chunks: list[bytes] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        connection, _ = self.listener.accept()
        with connection:
            connection.sendall(b"220 scripted ESMTP\r\n")
            buffer, in_data = b"", False
            while chunk := connection.recv(65536):
                self.chunks.append(chunk)
                buffer += chunk
                while b"\r\n" in buffer:
                    line, buffer = buffer.split(b"\r\n", 1)
                    self.lines.append(line)
                    reply, in_data = self._answer(line, in_data)
                    if reply:
                        connection.sendall(reply + b"\r\n")
                    if line.upper() == b"QUIT":
                        return

    def _answer(self, line: bytes, in_data: bool) -> tuple[bytes | None, bool]:
        if in_data:
            return (b"250 2.0.0 queued", False) if line == b"." else (None, True)
        verb = line[:4].upper()
        if verb == b"EHLO":
            return b"250-scripted\r\n250-PIPELINING\r\n250 SIZE 1000000", False
        if verb == b"RCPT":
            return self.rcpt_replies.pop(0), False
        if verb == b"DATA":
            return b"354 go ahead", True
        if verb == b"QUIT":
            return b"221 bye", False
        return b"250 2.0.0 Ok", False  # MAIL, RSET, NOOP

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


def test_a_354_after_a_refused_rcpt_gets_a_lone_dot_never_the_message():
    server = ScriptedServer([b"550 5.1.1 no such user", b"250 2.1.5 Ok"])
    try:
        with _connection(server.port) as connection:
            with pytest.raises(smtplib.SMTPRecipientsRefused) as raised:
                connection.deliver(SENDER, "nobody@example.org", b"Subject: first\r\n\r\nx\r\n")
            reply = connection.deliver(SENDER, "reader@example.org", b"Subject: second\r\n\r\n")
    finally:
        server.close()

    assert raised.value.recipients["nobody@example.org"][0] == 550
    assert reply == (250, b"2.0.0 queued")
    commands = [line.split(b":")[0].upper() for line in server.lines[1:]]
    assert commands == [
        *(b"MAIL FROM", b"RCPT TO", b"DATA", b"."),  # the first message: a lone dot
        *(b"MAIL FROM", b"RCPT TO", b"DATA", b"SUBJECT", b"", b"."),  # the second: its body
        b"QUIT",
    ]
    assert b"Subject: first" not in b"".join(server.chunks)


def test_mail_rcpt_and_data_go_in_one_write():
    server = ScriptedServer([b"250 2.1.5 Ok"])
    try:
        with _connection(server.port) as connection:
            connection.deliver(SENDER, "reader@example.org", b"Subject: x\r\n\r\n")
    finally:
        server.close()

    group = [chunk for chunk in server.chunks if chunk.startswith(b"MAIL FROM")]
    assert group == [
        b"MAIL FROM:<news@news.example.com> SIZE=14\r\nRCPT TO:<reader@example.org>\r\nDATA\r\n"
    ]


# -- a real Postfix smtpd


POSTFIX = """\
# 127.0.0.1 is no trusted network here, so relaying for it is refused (5.7.1).
mynetworks = 192.0.2.1/32
local_recipient_maps = inline:{{reader@mx.example.net=ok}}
local_transport = discard:
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_delay_reject = no
smtpd_sender_restrictions = check_sender_access inline:{{refused@news.example.com=REJECT}}
smtpd_data_restrictions = check_sender_access inline:{{nodata@news.example.com=REJECT}}
# Disconnect a client that pipelines where RFC 2920 does not allow it.
smtpd_forbid_unauth_pipelining = yes
message_size_limit = 204800
smtpd_tls_security_level = may
smtpd_tls_chain_files = {key}, {cert}
"""


@pytest.fixture(scope="module")
def postfix():
    folder = Path(tempfile.mkdtemp(prefix="nl-postfix-tls-"))
    try:
        key, cert = self_signed(folder)
        with throwaway_postfix(POSTFIX.format(key=key, cert=cert)) as server:
            server.cert = cert
            yield server
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _session_summary(postfix, helo: str) -> str:
    """Postfix's "disconnect from" line of the session that said EHLO ``helo``.

    An smtpd process serves sessions one after another: the session's last line is the
    first disconnect of that process after a line that names the EHLO.
    """
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        log = postfix.maillog()
        named = re.search(rf"smtpd\[(\d+)\]: .*helo=<{re.escape(helo)}>", log)
        if named:
            after = log[named.end() :]
            end = re.search(rf"smtpd\[{named.group(1)}\]: disconnect from .*", after)
            if end:
                return end.group(0)
        time.sleep(0.1)
    raise AssertionError(f"postfix logged no end of the session {helo}")


def test_postfix_queues_a_pipelined_message_for_a_known_reader(postfix):
    with _connection(postfix.port) as connection:
        assert connection.pipelining
        code, reply = connection.deliver(SENDER, "reader@mx.example.net", MESSAGE)

    assert code == 250 and b"queued as" in reply


def test_postfix_refuses_an_unknown_user_in_a_pipelined_group_and_takes_the_next(postfix):
    helo = "unknown-user.test.example"
    with _connection(postfix.port, local_hostname=helo) as connection:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as raised:
            connection.deliver(SENDER, "nosuchuser@mx.example.net", MESSAGE)
        code, _ = connection.deliver(SENDER, "reader@mx.example.net", MESSAGE)

    refusal = raised.value.recipients["nosuchuser@mx.example.net"]
    assert refusal[0] == 550 and refusal[1].startswith(b"5.1.1 ")
    assert code == 250
    summary = _session_summary(postfix, helo)
    # Postfix counts every command: the body never reached it as commands, RSET did.
    assert " mail=2 rcpt=1/2 data=1/2 rset=1 quit=1 commands=" in summary, summary
    assert "improper command pipelining" not in postfix.maillog()


@pytest.mark.parametrize(
    "sender, recipient, size, error, code, status",
    [
        (SENDER, "someone@elsewhere.example", 0, smtplib.SMTPRecipientsRefused, 554, b"5.7.1"),
        ("refused@news.example.com", "reader@mx.example.net", 0, smtplib.SMTPSenderRefused,
         554, b"5.7.1"),
        ("nodata@news.example.com", "reader@mx.example.net", 0, smtplib.SMTPDataError,
         554, b"5.7.1"),
        (SENDER, "reader@mx.example.net", 300_000, smtplib.SMTPSenderRefused, 552, b"5.3.4"),
    ],
    ids=["relay-denied", "sender-refused", "data-refused", "size-too-big"],
)  # fmt: skip
def test_postfix_refusals_in_a_pipelined_group(
    postfix, sender, recipient, size, error, code, status
):
    message = MESSAGE + b"x" * size + b"\r\n" if size else MESSAGE
    with _connection(postfix.port) as connection:
        assert connection.pipelining
        with pytest.raises(error) as raised:
            connection.deliver(sender, recipient, message)
        after = connection.deliver(SENDER, "reader@mx.example.net", MESSAGE)

    if error is smtplib.SMTPRecipientsRefused:
        got_code, reply = raised.value.recipients[recipient]
    else:
        got_code, reply = raised.value.smtp_code, raised.value.smtp_error
    assert (got_code, reply[:5]) == (code, status)
    assert after[0] == 250


def test_postfix_pipelines_after_starttls(postfix):
    options = {"use_tls": True, "context": trusting(postfix.cert)}
    with _connection(postfix.port, **options) as connection:
        assert isinstance(connection.host.sock, ssl.SSLSocket)
        assert connection.pipelining
        code, _ = connection.deliver(SENDER, "reader@mx.example.net", MESSAGE)

    assert code == 250


# -- round trips through a relay 20 ms away


def test_pipelining_halves_the_round_trips_to_a_relay_20_ms_away(sink):
    """Messages alternate between the two paths, so that load on the machine hits both."""
    rtt, count = 0.020, 20
    timings: dict[bool, list[float]] = {True: [], False: []}
    with DelayProxy(("127.0.0.1", sink()), rtt_ms=rtt * 1000) as proxy:
        with (
            _connection(proxy.port) as pipelined,
            _connection(proxy.port, pipelining=False) as stepwise,
        ):
            assert pipelined.pipelining and not stepwise.pipelining
            for n in range(count):
                for connection in (pipelined, stepwise):
                    started = time.perf_counter()
                    connection.deliver(SENDER, f"r{n}@example.org", MESSAGE)
                    timings[connection.pipelining].append(time.perf_counter() - started)

    assert min(timings[True]) >= 2 * rtt  # MAIL+RCPT+DATA, then the body and dot
    assert min(timings[False]) >= 4 * rtt  # MAIL, RCPT, DATA, dot
    ratio = statistics.median(timings[False]) / statistics.median(timings[True])
    assert ratio >= 1.5, timings
