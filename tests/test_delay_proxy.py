"""bench/delay_proxy.py: every round trip through it costs the RTT; bytes pass unchanged."""

from __future__ import annotations

import smtplib
import threading
import time

import pytest

from bench.delay_proxy import DelayProxy

RTT_MS = 20


@pytest.fixture
def proxy(smtp):
    smtp.reset()
    with DelayProxy(("127.0.0.1", smtp.port), rtt_ms=RTT_MS) as running:
        yield running
    smtp.reset()


def test_a_noop_round_trip_through_the_proxy_takes_at_least_the_rtt(proxy):
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=10) as connection:
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            assert connection.noop()[0] == 250
            timings.append(time.perf_counter() - started)

    assert min(timings) >= RTT_MS / 1000


def test_bytes_pass_unchanged_both_ways(proxy, smtp):
    line = bytes(range(32, 127)) + b"\t\x80\xff"  # printable, tab and 8-bit octets
    data = b"Subject: proxied\r\n\r\n" + (line + b"\r\n") * 12000  # about 1.2 MB: many chunks
    with smtplib.SMTP("127.0.0.1", smtp.port, timeout=10) as direct:
        direct_ehlo = direct.ehlo()
    with smtplib.SMTP("127.0.0.1", proxy.port, timeout=10) as proxied:
        proxied_ehlo = proxied.ehlo()  # server to client: the multi-line EHLO reply
        proxied.sendmail("sender@example.com", ["reader@example.org"], data)  # client to server

    assert proxied_ehlo == direct_ehlo
    assert [m.data for m in smtp.to("reader@example.org")] == [data]


def test_the_proxy_serves_many_connections_at_once(proxy):
    """Four clients each hold a greeted connection before any of them goes on."""
    everyone_greeted = threading.Barrier(4, timeout=10)
    replies: list[int] = []

    def client() -> None:
        with smtplib.SMTP("127.0.0.1", proxy.port, timeout=10) as connection:
            everyone_greeted.wait()  # breaks (and the test fails) if one waits for another
            replies.extend(connection.noop()[0] for _ in range(5))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not everyone_greeted.broken
    assert replies == [250] * 20
