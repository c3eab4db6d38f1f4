"""A loopback TCP proxy that makes every round trip cost ``rtt_ms``, like a real relay.

This kernel has no netem, so the delay is added in user space: each chunk read from one
side is written to the other side ``rtt_ms / 2`` later, in both directions, in order. An
asyncio loop in one thread serves any number of connections.

    .venv/bin/python bench/delay_proxy.py --rtt-ms 20 --target 127.0.0.1:2525 [--port 2526]

In process (benchmarks, tests)::

    with DelayProxy(("127.0.0.1", sink_port), rtt_ms=20) as proxy:
        smtplib.SMTP("127.0.0.1", proxy.port)
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import threading

CHUNK = 65536


class DelayProxy:
    """Listens on ``listen`` (port 0: a free one) and forwards to ``target``."""

    def __init__(
        self,
        target: tuple[str, int],
        rtt_ms: float,
        listen: tuple[str, int] = ("127.0.0.1", 0),
    ) -> None:
        self.target, self.listen = target, listen
        self.delay = rtt_ms / 2000.0  # one way, in seconds
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    def start(self) -> int:
        """Start serving in a background thread; return the listening port."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            try:
                asyncio.run(self._serve(ready))
            except BaseException as exc:  # noqa: BLE001 - reported to start()'s caller
                failure.append(exc)
                ready.set()

        self._thread = threading.Thread(target=run, name="delay-proxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self.port

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(10)
        self._loop = self._thread = self._stopped = None

    def __enter__(self) -> DelayProxy:
        self.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    async def _serve(self, ready: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        tasks: set[asyncio.Task] = set()

        async def accepted(reader, writer) -> None:
            task = asyncio.current_task()
            tasks.add(task)
            try:
                await self._connection(reader, writer)
            except asyncio.CancelledError:
                pass  # stop(): the connection ends with the proxy (and asyncio logs no error)
            finally:
                tasks.discard(task)

        server = await asyncio.start_server(accepted, *self.listen)
        self.port = server.sockets[0].getsockname()[1]
        ready.set()
        async with server:
            await self._stopped.wait()
            server.close()
            for task in list(tasks):
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _connection(self, client_reader, client_writer) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        try:
            await asyncio.gather(
                self._pump(client_reader, upstream_writer),
                self._pump(upstream_reader, client_writer),
            )
        finally:
            for writer in (client_writer, upstream_writer):
                writer.close()

    async def _pump(self, reader, writer) -> None:
        """Copy one direction: read as it comes, write each chunk ``delay`` after it came."""
        loop = asyncio.get_running_loop()
        chunks: asyncio.Queue = asyncio.Queue()

        async def read() -> None:
            try:
                while chunk := await reader.read(CHUNK):
                    chunks.put_nowait((loop.time() + self.delay, chunk))
            except OSError:
                pass  # reset by the peer: end this direction as if it had closed
            chunks.put_nowait((loop.time() + self.delay, b""))  # end of this direction

        reading = asyncio.create_task(read())
        try:
            while True:
                due, chunk = await chunks.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not chunk:
                    break
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()  # half-close, as the sender did
        except OSError:
            pass  # the receiving side is gone; the other direction ends by itself
        finally:
            reading.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rtt-ms", type=float, required=True, help="added round-trip time")
    parser.add_argument("--target", required=True, help="HOST:PORT to forward to")
    parser.add_argument("--host", default="127.0.0.1", help="listen address (loopback)")
    parser.add_argument("--port", type=int, default=0, help="listen port (0: a free one)")
    args = parser.parse_args()
    host, _, port = args.target.rpartition(":")
    proxy = DelayProxy((host, int(port)), args.rtt_ms, (args.host, args.port))

    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stopping.set())
    proxy.start()
    print(f"listening on {args.host}:{proxy.port}, forwarding to {args.target}", flush=True)
    stopping.wait()
    proxy.stop()


if __name__ == "__main__":
    main()
