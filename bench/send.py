"""Sending benchmark: real workers against a fast local SMTP sink, next to a bare smtplib loop.

    .venv/bin/python bench/send.py 10000 --connections 4 16       # 0 and 10 ms RTT, both DBs
    .venv/bin/python bench/send.py 10000 --workers 1 --db sqlite --rtt-ms 10 --repeat 3

For each database and N it creates N subscribers and an edition of about 20 KB HTML and
5 KB text, then, for each round-trip time (``--rtt-ms``; above 0 the sink sits behind
``bench/delay_proxy.py``, which delays every chunk by half of it each way):
  * sends the rendered message as pre-built bytes with a bare smtplib loop on one
    connection to the same sink at the same RTT ("bare": what a serial client does; at
    RTT > 0 for a few seconds only, it is slow);
  * fans the campaign out (timed) and lets 1, then 2 ``python worker.py`` processes send it
    with each ``--connections`` value as SMTP_CONNECTIONS (timed from the end of the
    fan-out to the campaign being marked sent);
  * samples the peak memory (VmHWM) of every worker process and work horse.
With ``--bilingual`` every second reader is German and the edition has a German version,
so each run renders two languages' copies (once each) and picks one per reader.
The sink is Postfix's ``smtp-sink`` (Debian package ``postfix``); it must run as
``-u nobody`` when we are root. This is a benchmark, not a test: it prints a table.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import create_engine, insert, select, text  # noqa: E402

from bench.delay_proxy import DelayProxy  # noqa: E402
from newsletter import create_app, embedded_redis, sending  # noqa: E402
from newsletter.extensions import db  # noqa: E402
from newsletter.models import (  # noqa: E402
    Campaign,
    CampaignStatus,
    CampaignTranslation,
    ConsentText,
    Subscriber,
    utcnow,
)

SINK = "/usr/sbin/smtp-sink"
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://127.0.0.1:5432/sending_bench")

PARAGRAPH = (
    "<p>This month we released version 4.2 of the viewer. It opens multi-frame studies "
    "faster, adds hanging protocols for mammography and fixes the window/level bug that "
    "some of you reported in the user forum. Read the full release notes on our site.</p>\n"
)


def edition() -> tuple[str, str]:
    """About 20 KB of HTML and 5 KB of text, like a real monthly edition."""
    html = "<h1>Product news, November</h1>\n" + PARAGRAPH * 72
    body = (
        "Product news, November\n\nThis month we released version 4.2 of the viewer. "
        "It opens multi-frame studies faster and fixes the window/level bug.\n\n"
    )
    return html, body * 33


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_sink(port: int) -> subprocess.Popen:
    if not os.path.exists(SINK):
        sys.exit(f"{SINK} is missing: apt-get install postfix (it needs no running daemon)")
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    process = subprocess.Popen(
        [SINK, *user, f"127.0.0.1:{port}", "1024"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    sys.exit("smtp-sink did not start")


def postgres_reachable() -> bool:
    admin = create_engine(
        PG_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/postgres",
        isolation_level="AUTOCOMMIT",
    )
    name = PG_URL.rsplit("/", 1)[1]
    try:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        return True
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        print(f"PostgreSQL not used: {type(exc).__name__}: {exc}".splitlines()[0])
        return False
    finally:
        admin.dispose()


class Setup:
    """One database with N subscribers, a Redis and the environment workers share."""

    def __init__(
        self, database: str, work_dir: Path, redis_url: str, sink_port: int, bilingual: bool
    ) -> None:
        self.bilingual = bilingual
        url = f"sqlite:///{work_dir / 'bench.db'}" if database == "sqlite" else PG_URL
        self.environ = {
            "NEWSLETTER_ENV": "development",
            "NEWSLETTER_INSTANCE": str(work_dir / "instance"),
            "SECRET_KEY": "bench-secret-key-0123456789abcdef",
            "DATABASE_URL": url,
            "REDIS_URL": redis_url,
            "MAIL_SERVER": "127.0.0.1",
            "MAIL_PORT": str(sink_port),
            "MAIL_DEFAULT_SENDER": "Example News <news@example.com>",
            "PUBLIC_URL": "https://news.example.com",
            "EMAIL_CHECK_DELIVERABILITY": "false",
            "TICK_INTERVAL": "3600",  # the benchmark starts the campaign itself
            "PATH": os.environ.get("PATH", ""),
        }
        self.app = create_app(environ=self.environ)
        self.app.app_context().push()
        from flask_migrate import upgrade

        upgrade(directory=str(ROOT / "migrations"))
        self.count = 0

    def grow_to(self, n: int) -> None:
        """Add subscribers until there are ``n``."""
        consent = db.session.scalar(select(ConsentText))
        if consent is None:
            consent = ConsentText(version=1, text="I agree.", sha256="0" * 64)
            db.session.add(consent)
            db.session.commit()
        now = utcnow()
        for start in range(self.count, n, 10_000):
            rows = [
                {
                    "email": f"reader{i}@example.com",
                    "token_key": secrets.token_urlsafe(12),
                    "requested_at": now,
                    "confirmed_at": now,
                    "consent_text_id": consent.id,
                    "language": "de" if self.bilingual and i % 2 else "en",
                }
                for i in range(start, min(n, start + 10_000))
            ]
            db.session.execute(insert(Subscriber.__table__), rows)
            db.session.commit()
        self.count = n

    def new_campaign(self) -> int:
        html, body = edition()
        campaign = Campaign(subject="Product news, November", html=html, text=body)
        if self.bilingual:
            campaign.translations.append(
                CampaignTranslation(
                    language="de", subject="Neues im November", html=html, text=body
                )
            )
        db.session.add(campaign)
        db.session.commit()
        return campaign.id

    def sample_mail(self) -> bytes:
        from newsletter import tokens
        from newsletter.mail import builders

        campaign = db.session.get(Campaign, self.new_campaign())
        template = builders.edition_template(campaign.subject, campaign.html, campaign.text)
        subscriber = db.session.scalar(select(Subscriber).limit(1))
        url = tokens.unsubscribe_url(subscriber)
        return template.render(subscriber.email, {"unsubscribe_url": url})


def bare_loop(port: int, mail, count: int, seconds: float = 5.0) -> float:
    """Pre-built bytes over one connection: what smtplib itself can do, serially.

    Stops after ``count`` messages or ``seconds``, whichever comes first (at least 20).
    """
    host = smtplib.SMTP("127.0.0.1", port, timeout=30)
    started = time.perf_counter()
    sent = 0
    while sent < count and (sent < 20 or time.perf_counter() - started < seconds):
        host.sendmail(mail.sender, [mail.recipient], mail.data)
        sent += 1
    elapsed = time.perf_counter() - started
    host.quit()
    return sent / elapsed


class MemoryWatch(threading.Thread):
    """Poll VmHWM of the worker processes and every process below them (the horses)."""

    def __init__(self, roots: list[int]) -> None:
        super().__init__(daemon=True)
        self.roots = roots
        self.peaks: dict[int, int] = {}  # pid -> peak kB
        self.parent_of: dict[int, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for root in self.roots:
                for pid in [root, *self._children(root)]:
                    peak = self._hwm(pid)
                    if peak:
                        self.peaks[pid] = max(peak, self.peaks.get(pid, 0))
                        if pid != root:
                            self.parent_of[pid] = root
            time.sleep(0.02)

    @staticmethod
    def _children(pid: int) -> list[int]:
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as handle:
                return [int(p) for p in handle.read().split()]
        except OSError:
            return []

    @staticmethod
    def _hwm(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/status") as handle:
                for line in handle:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            pass
        return 0

    def report(self) -> tuple[float, float]:
        """Return (largest worker process, largest work horse) in MB."""
        parents = [self.peaks.get(root, 0) for root in self.roots]
        horses = [kb for pid, kb in self.peaks.items() if pid not in self.roots]
        return max(parents) / 1024, (max(horses) / 1024 if horses else 0.0)


def run_workers(setup: Setup, worker_count: int) -> dict:
    """Start the workers, fan a new campaign out, wait until it is sent."""
    environ = {**os.environ, **setup.environ, "PYTHONPATH": str(ROOT)}
    logs = [tempfile.TemporaryFile() for _ in range(worker_count)]  # shown if one hangs
    processes = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "worker.py")],
            env=environ,
            cwd=str(ROOT),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for log in logs
    ]
    from rq import Worker

    from newsletter.extensions import get_redis

    deadline = time.monotonic() + 30
    while len(Worker.all(connection=get_redis())) < worker_count:
        if time.monotonic() > deadline:
            sys.exit("the workers did not start")
        time.sleep(0.1)
    watch = MemoryWatch([p.pid for p in processes])
    watch.start()
    try:
        campaign_id = setup.new_campaign()
        campaign = db.session.get(Campaign, campaign_id)
        campaign.status, campaign.send_at = (
            CampaignStatus.SCHEDULED,
            utcnow() - timedelta(seconds=1),
        )
        db.session.commit()
        started = time.perf_counter()
        assert sending.start(campaign_id)
        fanned_out = time.perf_counter()
        while True:
            db.session.expire_all()
            campaign = db.session.get(Campaign, campaign_id)
            if campaign.status == CampaignStatus.SENT:
                break
            db.session.rollback()
            time.sleep(0.05)
        finished = time.perf_counter()
        assert campaign.sent == setup.count, (campaign.sent, setup.count)
    finally:
        watch.stop.set()
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process, log in zip(processes, logs, strict=True):
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                log.seek(0)
                tail = log.read().decode(errors="replace")[-3000:]
                print(f"a worker did not stop within 60 s of SIGTERM; its log ends:\n{tail}")
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
            log.close()
    parent_mb, horse_mb = watch.report()
    return {
        "fan_out": fanned_out - started,
        "rate": setup.count / (finished - fanned_out),
        "parent_mb": parent_mb,
        "horse_mb": horse_mb,
    }


def best_of(runs: list[tuple[float, dict]]) -> tuple[float, dict]:
    """Best rates (the machine may be busy with other work), worst fan-out and memory."""
    bare = max(b for b, _ in runs)
    results = [r for _, r in runs]
    return bare, {
        "rate": max(r["rate"] for r in results),
        "fan_out": max(r["fan_out"] for r in results),
        "parent_mb": max(r["parent_mb"] for r in results),
        "horse_mb": max(r["horse_mb"] for r in results),
    }


def dkim_settings(kind: str, work_dir: Path) -> dict[str, str]:
    """The DKIM_* settings for signing with a fresh key of ``kind`` ("none": unsigned)."""
    if kind == "none":
        return {}
    key = work_dir / f"dkim-{kind}.key"
    command = (
        ["openssl", "genrsa", "-out", str(key), "2048"]
        if kind == "rsa"
        else ["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key)]
    )
    subprocess.run(command, check=True, capture_output=True)
    return {
        "DKIM_DOMAIN": "news.example.com",
        "DKIM_SELECTOR": "bench",
        "DKIM_PRIVATE_KEY_FILE": str(key),
    }


def bench(
    database: str,
    sizes: list[int],
    worker_counts: list[int],
    sink_port: int,
    repeat: int,
    signing: list[str],
    rtts: list[float],
    connection_counts: list[int],
    bilingual: bool = False,
    batch_size: int | None = None,
) -> list:
    work_dir = Path(tempfile.mkdtemp(prefix="nl-bench-"))
    redis_dir = Path("/tmp") / f"nl-bench-redis-{os.getpid()}"
    redis_url = embedded_redis.ensure_running(redis_dir)
    rows = []
    try:
        setup = Setup(database, work_dir, redis_url, sink_port, bilingual)
        if batch_size:  # the fan-out (here) and the workers split alike
            setup.environ["BATCH_SIZE"] = str(batch_size)
            setup.app.config["BATCH_SIZE"] = batch_size
        base = dict(setup.environ)
        for n in sizes:
            setup.grow_to(n)
            mail = setup.sample_mail()
            for rtt in rtts:
                proxy = DelayProxy(("127.0.0.1", sink_port), rtt) if rtt else None
                port = proxy.start() if proxy else sink_port
                try:
                    combos = [
                        (w, c, k) for w in worker_counts for c in connection_counts for k in signing
                    ]
                    for workers, connections, kind in combos:
                        setup.environ = {
                            **base,
                            "MAIL_PORT": str(port),
                            "SMTP_CONNECTIONS": str(connections),
                            **dkim_settings(kind, work_dir),
                        }
                        runs = []
                        for _ in range(repeat):
                            # Right before each run: other load on the machine hits both alike.
                            bare = bare_loop(port, mail, min(n, 10_000))
                            runs.append((bare, run_workers(setup, workers)))
                        bare, result = best_of(runs)
                        result.update(dkim=kind, rtt=rtt, connections=connections)
                        rows.append((database, n, len(mail.data), bare, workers, result))
                        print(
                            f"{database:10} N={n:>7} rtt={rtt:g}ms workers={workers} "
                            f"connections={connections} dkim={kind:7} bare={bare:7.0f}/s "
                            f"pipeline={result['rate']:7.0f}/s "
                            f"ratio={result['rate'] / bare:5.2f} "
                            f"fan-out={result['fan_out']:5.2f}s "
                            f"worker={result['parent_mb']:5.1f} MB "
                            f"horse={result['horse_mb']:5.1f} MB",
                            flush=True,
                        )
                finally:
                    if proxy:
                        proxy.stop()
        db.session.remove()
        db.engine.dispose()
    finally:
        embedded_redis.stop(redis_dir)
        shutil.rmtree(work_dir, ignore_errors=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[10_000, 100_000])
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--db", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per row; best rate wins")
    parser.add_argument(
        "--dkim",
        nargs="+",
        default=["none"],
        choices=["none", "rsa", "ed25519"],
        help="sign every message with a fresh key of this kind (rsa: 2048 bits)",
    )
    parser.add_argument(
        "--bilingual", action="store_true", help="half the readers German, with a German version"
    )
    parser.add_argument(
        "--rtt-ms",
        nargs="+",
        type=float,
        default=[0.0, 10.0],
        help="round-trip times to the relay (0: the sink directly; else through a delay proxy)",
    )
    parser.add_argument(
        "--connections",
        nargs="+",
        type=int,
        default=[4],
        help="SMTP_CONNECTIONS values for the workers",
    )
    parser.add_argument(
        "--batch-size", type=int, help="BATCH_SIZE for the fan-out and the workers (default 500)"
    )
    args = parser.parse_args()

    port = free_port()
    sink = start_sink(port)
    all_rows = []
    try:
        for database in args.db:
            if database == "postgresql" and not postgres_reachable():
                continue
            all_rows += bench(
                database,
                args.sizes,
                args.workers,
                port,
                args.repeat,
                args.dkim,
                args.rtt_ms,
                args.connections,
                args.bilingual,
                args.batch_size,
            )
    finally:
        sink.terminate()
        sink.wait()

    print()
    print(
        "| database | N | message | RTT ms | bare loop msgs/s | workers | connections | DKIM "
        "| pipeline msgs/s | ratio to bare | vs 1 worker | fan-out s | worker peak MB "
        "| horse peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    one = {}
    for database, n, size, bare, workers, result in all_rows:
        key = (database, n, result["rtt"], result["connections"], result["dkim"])
        if workers == 1:
            one[key] = result["rate"]
        first = one.get(key)
        speedup = result["rate"] / first if first else float("nan")
        print(
            f"| {database} | {n:,} | {size / 1024:.1f} KB | {result['rtt']:g} | {bare:,.0f} "
            f"| {workers} | {result['connections']} | {result['dkim']} "
            f"| {result['rate']:,.0f} | {result['rate'] / bare:.2f} | {speedup:.2f}x "
            f"| {result['fan_out']:.2f} | {result['parent_mb']:.1f} | {result['horse_mb']:.1f} |"
        )


if __name__ == "__main__":
    main()
