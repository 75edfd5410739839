"""The send pipeline end to end: ``python bench/send_pipeline.py [--quick]``.

Measures, on this machine, over loopback only:

1. Accept latency of ``POST /messages`` through functions-framework as deployed (a subprocess:
   ``functions-framework --target=send``, gunicorn gthread, WORKERS/THREADS as in template.yaml),
   with no consumer running: one recipient (sequential requests, p50/p99 per run) and 1,000-recipient
   broadcasts (median per run). The broadcasts are the ones that fill the queue before every drain
   run below (20 x 1,000 = the 20,000 queued messages), so each drain run is also an accept run.
2. Drain throughput of ONE consumer process (``python -m common.cli consume``, stop-when-idle) with
   20,000 messages already queued, CONSUMER_CONCURRENCY=200, the Telnyx sandbox in its own process at
   50 ms and at 0 ms latency: messages/s over the span of the sandbox ledger's ``received_at`` (first to
   last accepted request), the consumer's peak RSS (psutil samples, and the kernel's VmHWM; not wait4's
   ru_maxrss, which also counts the forked copy of this driver before exec) and its CPU seconds (wait4),
   with the CPU of the sandbox, PostgreSQL (our database's backends), Redis and of other work on the
   machine over the same window. Every message must end ``sent`` with one attempt, and the ledger must
   hold each message exactly once (0 duplicates).
3. Fairness: while church A's 20,000 drain at 50 ms, church B sends one message every 0.5 s; its
   latency is B's ledger ``received_at`` minus the wall-clock time B's 202 arrived.

Services: a fresh database on the machine's PostgreSQL (127.0.0.1:5432), or on an embedded one when
that is unreachable, migrated with ``common.db.migrate``; Redis on 127.0.0.1:6379 (or an embedded one)
under a unique key prefix. Everything started or created here is stopped or dropped at the end (also on
Ctrl-C). Sender and account rate limits are set far above what one consumer can reach, so they are not
what is measured. Each measured run first waits (bounded) for the machine to be nearly idle, since other
work on a 2-core machine moves every figure. Every loop is bounded by a count and a wall-clock deadline.

Figures (medians of the runs; ratios against the targets) go to the ``## Send pipeline`` section of
bench/RESULTS.md and to bench/results.json. ``--quick`` is a smoke run (one round, smaller sizes) that
writes nothing unless ``--write`` is given.
"""

from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import redis  # noqa: E402
from _results import RESULTS, RESULTS_JSON, update_json, write_section  # noqa: E402  (bench/ is the script's folder)

from common.config import Settings, parse_database_url  # noqa: E402
from common.db.migrate import migrate  # noqa: E402
from common.db.pool import DatabaseUnavailable, Pool  # noqa: E402
from common.queue import MessageQueue  # noqa: E402
from infra.embedded import PostgresProcess, RedisProcess, free_port  # noqa: E402
from tests.factories import Tenant, make_church, numbers  # noqa: E402

SECTION = "## Send pipeline"
COMMAND = "python bench/send_pipeline.py"

MACHINE_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
MACHINE_REDIS = "redis://127.0.0.1:6379/0"
SANDBOX_KEY = "KEY_sandbox"
WEBHOOK_URL = "http://127.0.0.1:9/webhooks/telnyx"  # sent with every message (mid=<id>); never called

# Settings under test (stated in the report).
SERVER_WORKERS = 1  # template.yaml: WORKERS "1"
SERVER_THREADS = 4  # template.yaml: THREADS "4"
SERVER_CONNECTIONS = 4  # one PostgreSQL connection per gthread: a request holds at most one at a time
CONSUMER_CONCURRENCY = 200
CONSUMER_CONNECTIONS = 10  # claim/record run in asyncio.to_thread (default executor: 6 threads here)
SENDER_RATE = 100_000  # per sending number (sender_numbers.sms_per_second)
ACCOUNT_RATE = 1_000_000  # ACCOUNT_SMS_PER_SECOND

TARGET_ACCEPT_P50_MS_1 = 5.0
TARGET_ACCEPT_MS_1000 = 150.0
TARGET_DRAIN_MSGS_PER_S = 1_150.0

TEXT = "Sunday service moves to 10am this week. Bring a friend! Reply STOP to opt out."
HTTP_TIMEOUT_S = 60.0
CONSUMER_DEADLINE_S = 180.0  # the consumer's own budget is --max-seconds 120
START_DEADLINE_S = 30.0
QUIET_BUSY = 0.15  # fraction of all cores busy (other work) under which a run may start ...
QUIET_FOR_S = 3  # ... for this many consecutive seconds
QUIET_WAIT_S = 180.0
DISTURBED = 0.10  # a run during which other work used more than this share of the machine is marked


def say(line: str = "") -> None:
    print(line, flush=True)


# Machine ----------------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    return (
        f"nproc {os.cpu_count()}, {cpu_model()}, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def code_state() -> tuple[str, str]:
    """(description, fingerprint) of the product code measured: HEAD, and uncommitted changes to it."""

    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        return ""

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    paths = ["common", "functions", "infra", "pyproject.toml"]
    status = [line for line in git("status", "--porcelain", "--", *paths).splitlines() if line.strip()]
    changed = [line[3:] for line in status if not line.startswith("??")]
    untracked = [line[3:] for line in status if line.startswith("??")]
    diff = git("diff", "HEAD", "--", *paths)
    text = f"git {head}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else " (tracked files clean)")
    if untracked:
        text += (
            f"; {len(untracked)} untracked path(s) present ({', '.join(untracked[:4])}{', ...' if len(untracked) > 4 else ''})"
        )
    return text, str(hash((head, diff)))  # new untracked files alone change nothing the measured code imports


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f} / {five:.1f}"


# Statistics -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest rank on the sorted values (as bench/sandbox_throughput.py)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def parse_ts(value: str) -> float:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# Services ---------------------------------------------------------------------------------------


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    query.update(params)
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))


def _local_pid(pid: int) -> int | None:
    """``pid`` if it is a process on this machine we may read (the services are on loopback)."""
    with contextlib.suppress(psutil.Error, ValueError):
        psutil.Process(pid).cpu_times()
        return pid
    return None


class Services:
    """PostgreSQL (machine's or embedded) with a fresh migrated database; Redis with a unique prefix."""

    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="koinonia-bench-"))
        self.embedded_pg: PostgresProcess | None = None
        self.embedded_redis: RedisProcess | None = None
        self.admin: Pool | None = None
        self.db_name = f"kbench_{uuid.uuid4().hex[:12]}"
        self.db_created = False
        self.prefix = f"kb{uuid.uuid4().hex[:12]}"
        self.redis: redis.Redis | None = None
        self.pg_where = ""
        self.redis_where = ""

    def start(self) -> Services:
        server_url = MACHINE_PG
        try:
            admin = Pool(parse_database_url(server_url))
            admin.run("SELECT 1")
            self.pg_where = "machine PostgreSQL 127.0.0.1:5432"
        except DatabaseUnavailable:
            say("  PostgreSQL at 127.0.0.1:5432 unreachable: starting an embedded one")
            self.embedded_pg = PostgresProcess(self.tmp / "pg").start()
            server_url = self.embedded_pg.url
            admin = Pool(parse_database_url(server_url))
            self.pg_where = "embedded PostgreSQL (pgserver, unix socket)"
        self.admin = admin
        self.server_version = str(admin.run("SHOW server_version")[0][0])
        admin.run(f'CREATE DATABASE "{self.db_name}"')
        self.db_created = True
        self.db_url = with_database(server_url, self.db_name)
        self.pool = Pool(parse_database_url(with_query(self.db_url, connection_limit="4")))
        migrate(self.pool, progress=lambda _line: None)

        redis_url = MACHINE_REDIS
        try:
            client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
            client.ping()
            self.redis_where = "machine Redis 127.0.0.1:6379"
        except redis.RedisError:
            say("  Redis at 127.0.0.1:6379 unreachable: starting an embedded one")
            self.embedded_redis = RedisProcess(self.tmp / "redis", persist=False).start()
            redis_url = self.embedded_redis.url
            client = redis.Redis.from_url(redis_url, socket_timeout=2, socket_connect_timeout=1)
            client.ping()
            self.redis_where = "embedded redis-server"
        self.redis = client
        self.redis_url = redis_url
        info = client.info("server")
        self.redis_version = str(info.get("redis_version", "?"))
        self.redis_pid = _local_pid(int(info.get("process_id", 0)))
        self.pg_postmaster = self.embedded_pg.pid if self.embedded_pg else None
        if self.pg_postmaster is None:
            backend = _local_pid(int(admin.run("SELECT pg_backend_pid()")[0][0]))
            with contextlib.suppress(psutil.Error):
                self.pg_postmaster = psutil.Process(backend).ppid() if backend else None
        self.queue = MessageQueue(client, self.prefix)
        return self

    def database_url(self, connection_limit: int) -> str:
        return with_query(self.db_url, connection_limit=str(connection_limit), pool_timeout="30")

    def stop(self) -> None:
        if self.redis is not None:
            with contextlib.suppress(redis.RedisError):
                keys = list(self.redis.scan_iter(match=f"{{{self.prefix}}}*", count=1000))
                for start in range(0, len(keys), 1000):
                    self.redis.delete(*keys[start : start + 1000])
            self.redis.close()
        if getattr(self, "pool", None) is not None:
            self.pool.close()
        if self.admin is not None:
            if self.db_created:
                with contextlib.suppress(DatabaseUnavailable):
                    self.admin.run(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            self.admin.close()
        if self.embedded_redis is not None:
            self.embedded_redis.stop()
        if self.embedded_pg is not None:
            self.embedded_pg.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


# Child processes --------------------------------------------------------------------------------


def stop_child(proc: subprocess.Popen[Any], name: str, sig: int = signal.SIGTERM) -> None:
    """Stop a child we started in its own session: signal its process group (the child's id), wait, kill."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        say(f"  {name} did not exit on signal {sig}; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


class Sandbox:
    """The Telnyx sandbox CLI in its own process."""

    def __init__(self, latency_ms: float) -> None:
        cmd = [sys.executable, "-m", "infra.telnyx_sandbox", "--host", "127.0.0.1", "--port", "0", "--no-webhooks"]
        cmd += ["--latency-ms", f"{latency_ms:g}"]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        match = re.fullmatch(r"telnyx-sandbox listening on (http://([\d.]+):(\d+))", line)
        if not match:
            stop_child(self.proc, "sandbox")
            raise SystemExit(f"sandbox did not start: {line!r}")
        self.url, self.host, self.port = match.group(1), match.group(2), int(match.group(3))

    def control(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=HTTP_TIMEOUT_S)
        try:
            payload = json.dumps(body).encode() if body is not None else None
            conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            data = json.loads(resp.read())
            if resp.status != 200:
                raise SystemExit(f"sandbox {method} {path} -> {resp.status}: {data}")
            return data  # type: ignore[no-any-return]
        finally:
            conn.close()

    def reset(self, latency_ms: float) -> None:
        self.control("POST", "/_sandbox/reset")
        self.control("POST", "/_sandbox/config", {"latency_ms": latency_ms})

    def stop(self) -> None:
        stop_child(self.proc, "sandbox", signal.SIGINT)


class FunctionServer:
    """``functions-framework --target=<name>`` as deployed (gunicorn, gthread)."""

    def __init__(self, env: dict[str, str], logs: Path, name: str = "send") -> None:
        self.name = f"{name} function"
        self.port = free_port()
        binary = Path(sys.executable).parent / "functions-framework"
        cmd = [str(binary) if binary.exists() else (shutil.which("functions-framework") or "functions-framework")]
        target = name.replace("-", "_")  # functions/retry-scheduler/main.py defines retry_scheduler
        cmd += [f"--target={target}", f"--source=functions/{name}/main.py", "--port", str(self.port)]
        self.log = logs / f"{name}-function.log"
        self.log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + START_DEADLINE_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited at start ({self.proc.returncode}): {self.tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/alive")
                conn.getresponse().read()
                conn.close()
                return
            time.sleep(0.1)  # polling a port that is not open yet
        stop_child(self.proc, self.name)
        raise SystemExit(f"{self.name} did not answer within {START_DEADLINE_S:g}s: {self.tail()}")

    def tail(self) -> str:
        self.log_file.flush()
        return self.log.read_text(errors="replace")[-1500:] if self.log.exists() else ""

    def stop(self) -> None:
        stop_child(self.proc, self.name)
        self.log_file.close()


class Client:
    """One keep-alive HTTP/1.1 connection to the send function; reconnects if the server closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.conn: http.client.HTTPConnection | None = None

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, float]:
        """(status, body, milliseconds from sending the request to having read the whole answer)."""
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)
                self.conn.connect()
            try:
                started = time.perf_counter()
                self.conn.request("POST", path, body=body, headers=headers)
                resp = self.conn.getresponse()
                data = resp.read()
                elapsed_ms = (time.perf_counter() - started) * 1000
                if resp.will_close:
                    self.close()
                return resp.status, data, elapsed_ms
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()  # the server closed an idle keep-alive connection: one fresh try
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# Sending ----------------------------------------------------------------------------------------


@dataclass
class Sent:
    status: int
    ms: float
    body: dict[str, Any]
    at: float  # wall clock (time.time()) when the answer had been read


class Sender:
    def __init__(self, port: int, tenant: Tenant) -> None:
        self.client = Client(port)
        self.tenant = tenant
        self.headers = {**tenant.auth, "Content-Type": "application/json", "Accept": "application/json"}

    def send(self, to: str | list[str]) -> Sent:
        payload = json.dumps({"channel": "sms", "to": to, "text": TEXT}, separators=(",", ":")).encode()
        status, data, ms = self.client.post("/messages", payload, self.headers)
        at = time.time()
        body = json.loads(data)
        expected = 1 if isinstance(to, str) else len(to)
        if status != 202 or body.get("mode") != "queued" or body.get("counts", {}).get("accepted") != expected:
            raise SystemExit(f"POST /messages -> {status}: {str(body)[:400]}")
        return Sent(status, ms, body, at)

    def close(self) -> None:
        self.client.close()


class Numbers:
    """Distinct recipients for the whole benchmark (the ledger's fingerprint includes ``to``)."""

    def __init__(self, area: str) -> None:
        self.area = area
        self.next = 0

    def take(self, n: int) -> list[str]:
        out = numbers(n, area=self.area, start=self.next)
        self.next += n
        return out


# Consumer ---------------------------------------------------------------------------------------


@dataclass
class ConsumerRun:
    wall_s: float
    cpu_s: float  # the consumer process, whole life (wait4: user + system)
    peak_rss_mb: float  # max of psutil RSS samples (every 20 ms)
    hwm_mb: float  # max of the kernel's VmHWM (/proc/<pid>/status): the peak between samples too
    report: dict[str, Any]
    cpu: dict[str, float]  # CPU seconds of each other process over the consumer's life
    machine_busy: float  # fraction of all cores busy over the consumer's life
    started_at: float


def _cpu(proc: psutil.Process, children: bool = False) -> float:
    procs = [proc, *proc.children(recursive=True)] if children else [proc]
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system
    return total


class CpuWatch:
    """CPU seconds per component over a window. PostgreSQL backends come and go (the consumer's
    connections end with it), so the postmaster's children are sampled every 0.25 s and each pid's
    last reading counts: at most the last 0.25 s of a backend that exits is missed. Only backends of our
    database, and the server's own processes (writers, autovacuum), are counted: the machine's
    PostgreSQL may serve others meanwhile."""

    _CLIENT_BACKEND = re.compile(r"\d+\.\d+\.\d+\.\d+\(\d+\)|\[local\]")

    def __init__(self, pg_postmaster: int | None, db_name: str, singles: dict[str, tuple[int, bool]]) -> None:
        self.pg = psutil.Process(pg_postmaster) if pg_postmaster else None
        self.db_name = db_name
        self.singles = {name: (psutil.Process(pid), children) for name, (pid, children) in singles.items()}
        self.last_sample = 0.0
        self._ours: dict[int, bool] = {}

    def _is_ours(self, p: psutil.Process) -> bool:
        if p.pid not in self._ours:
            title = " ".join(p.cmdline())
            self._ours[p.pid] = f" {self.db_name} " in f" {title} " or not self._CLIENT_BACKEND.search(title)
        return self._ours[p.pid]

    def _pg(self) -> dict[int, float]:
        out: dict[int, float] = {}
        if self.pg is None:
            return out
        with contextlib.suppress(psutil.Error):
            for p in [self.pg, *self.pg.children()]:
                with contextlib.suppress(psutil.Error):
                    if not self._is_ours(p):
                        continue
                    t = p.cpu_times()
                    out[p.pid] = t.user + t.system
        return out

    def start(self) -> None:
        self.base_pg = self._pg()
        self.seen_pg = dict(self.base_pg)
        self.base = {name: _cpu(p, ch) for name, (p, ch) in self.singles.items()}
        self.driver0 = time.process_time()
        self.last_sample = time.monotonic()

    def sample(self) -> None:
        if time.monotonic() - self.last_sample < 0.25:
            return
        self.last_sample = time.monotonic()
        for pid, c in self._pg().items():
            self.seen_pg[pid] = max(self.seen_pg.get(pid, 0.0), c)

    def stop(self) -> dict[str, float]:
        self.last_sample = 0.0
        self.sample()
        out = {name: _cpu(p, ch) - self.base[name] for name, (p, ch) in self.singles.items()}
        if self.pg is not None:
            out["postgresql"] = sum(c - self.base_pg.get(pid, 0.0) for pid, c in self.seen_pg.items())
        out["driver"] = time.process_time() - self.driver0
        return out


def _busy(t: Any) -> float:
    """Busy CPU seconds of all cores (guest time is already inside user time)."""
    return float(sum(getattr(t, f, 0.0) for f in ("user", "nice", "system", "irq", "softirq", "steal")))


def wait_quiet(limit_s: float = QUIET_WAIT_S) -> float:
    """Wait (bounded) until the machine is nearly idle before a measured run: this benchmark's own
    processes are idle between runs, so CPU in use now is someone else's work. Returns the busy
    fraction last seen (reported when the wait ran out)."""
    deadline = time.monotonic() + limit_s
    said = False
    quiet = 0
    while True:
        before = _busy(psutil.cpu_times())
        time.sleep(1.0)
        busy = (_busy(psutil.cpu_times()) - before) / (os.cpu_count() or 1)
        quiet = quiet + 1 if busy <= QUIET_BUSY else 0
        if quiet >= QUIET_FOR_S:
            return busy
        if time.monotonic() >= deadline:
            say(f"    machine still {busy:.0%} busy with other work after {limit_s:g}s; measuring anyway")
            return busy
        if not said and busy > QUIET_BUSY:
            say(f"    machine {busy:.0%} busy with other work; waiting up to {limit_s:g}s for it to settle")
            said = True


def _vm_hwm(pid: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def run_consumer(env: dict[str, str], watch: CpuWatch, logs: Path, tag: str, during: Any = None) -> ConsumerRun:
    """``python -m common.cli consume --max-seconds 120`` until it stops (stop-when-idle)."""
    log = logs / f"consumer-{tag}.log"
    cmd = [sys.executable, "-m", "common.cli", "consume", "--max-seconds", "120"]
    watch.start()
    cpu0 = psutil.cpu_times()
    with log.open("wb") as out:
        started_at = time.time()
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        ps = psutil.Process(proc.pid)
        peak = hwm = 0
        rusage = None
        try:
            deadline = time.monotonic() + CONSUMER_DEADLINE_S
            while time.monotonic() < deadline:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    rusage = usage
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                with contextlib.suppress(psutil.Error):
                    peak = max(peak, ps.memory_info().rss)
                hwm = max(hwm, _vm_hwm(proc.pid))
                watch.sample()
                if during is not None:
                    during()
                time.sleep(0.02)
        finally:
            if rusage is None:
                stop_child(proc, "consumer", signal.SIGKILL)
    wall = time.perf_counter() - started
    cpu1 = psutil.cpu_times()
    cpu = watch.stop()
    text = log.read_text(errors="replace")
    if rusage is None:
        raise SystemExit(f"consumer did not finish within {CONSUMER_DEADLINE_S:g}s; log: {text[-1500:]}")
    if proc.returncode != 0:
        raise SystemExit(f"consumer exited with {proc.returncode}; log: {text[-1500:]}")
    match = re.search(r"^consume: (\{.*\})$", text, re.M)
    if not match:
        raise SystemExit(f"consumer printed no report; log: {text[-1500:]}")
    busy = _busy(cpu1) - _busy(cpu0)
    total = busy + (cpu1.idle + getattr(cpu1, "iowait", 0.0)) - (cpu0.idle + getattr(cpu0, "iowait", 0.0))
    consumer_cpu = rusage.ru_utime + rusage.ru_stime
    cpu["other processes"] = max(0.0, busy - consumer_cpu - sum(cpu.values()))
    return ConsumerRun(
        wall_s=wall,
        cpu_s=consumer_cpu,
        peak_rss_mb=peak / 2**20,
        hwm_mb=hwm / 2**20,
        report=ast.literal_eval(match.group(1)),
        cpu=cpu,
        machine_busy=busy / total if total > 0 else 0.0,
        started_at=started_at,
    )


# Runs -------------------------------------------------------------------------------------------


@dataclass
class AcceptRun:
    p50_ms: float
    p99_ms: float
    n: int
    wall_s: float = 0.0
    other_cpu_s: float = 0.0  # CPU of processes not this benchmark's over the run

    @property
    def other_share(self) -> float:
        return self.other_cpu_s / (self.wall_s * (os.cpu_count() or 1)) if self.wall_s else 0.0


@dataclass
class DrainRun:
    kind: str  # "50ms", "0ms", "fairness"
    latency_ms: float
    messages: int
    fill_ms: list[float]  # each 1,000-recipient POST
    span_s: float  # first to last ledger received_at of A's messages
    consumer: ConsumerRun
    ledger_accepted: int
    ledger_duplicates: int
    b_latency_s: list[float] = field(default_factory=list)  # fairness: received_at - 202
    b_from_post_s: list[float] = field(default_factory=list)  # fairness: received_at - POST sent
    b_during: int = 0  # B's messages received while A was still draining

    @property
    def other_share(self) -> float:
        """Share of the machine's CPU that other work used during the drain."""
        return self.consumer.cpu.get("other processes", 0.0) / (self.consumer.wall_s * (os.cpu_count() or 1))

    @property
    def msgs_per_s(self) -> float:
        return self.messages / self.span_s

    @property
    def msgs_per_s_wall(self) -> float:
        return self.messages / self.consumer.wall_s

    @property
    def fill_median_ms(self) -> float:
        return median(self.fill_ms)


def function_env(services: Services, **overrides: str) -> dict[str, str]:
    """The environment our processes run with in a benchmark. Settings come from here only: the caller's
    Koinonia variables are dropped, and everything that shapes the measurement is set (values a .env file could
    otherwise supply); ``overrides`` adds or replaces variables."""
    ours = {name.upper() for name in Settings.model_fields} | {"WORKERS", "THREADS"}
    return {
        **{k: v for k, v in os.environ.items() if k not in ours},
        "PYTHONUNBUFFERED": "1",
        "REDIS_URL": services.redis_url,
        "REDIS_KEY_PREFIX": services.prefix,
        "ENABLE_QUEUES": "true",
        "ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
        "LOOKUP_KEY": base64.b64encode(os.urandom(32)).decode(),
        "TELNYX_API_KEY": SANDBOX_KEY,
        "TELNYX_WEBHOOK_URL": WEBHOOK_URL,
        "LOG_LEVEL": "WARNING",
        "APP_ENV": "staging",
        "ACCOUNT_SMS_PER_SECOND": str(ACCOUNT_RATE),
        "ACCOUNT_MMS_PER_SECOND": str(ACCOUNT_RATE),
        "WAKE_QUEUE_URL": "",
        **overrides,
    }


class Bench:
    def __init__(self, args: argparse.Namespace, services: Services, logs: Path) -> None:
        self.args = args
        self.svc = services
        self.logs = logs
        self.sandbox: Sandbox | None = None
        self.server: FunctionServer | None = None
        self.base_env = function_env(
            services,
            CONSUMER_CONCURRENCY=str(CONSUMER_CONCURRENCY),
            CONSUMER_BATCH="100",
            LEASE_S="30",
            REDIS_TIMEOUT_MS="100",
            # Per-church limits (issue #6) stay on the measured path but far above what the bench sends
            # (thousands of requests a minute, 180,000+ bulk recipients a run); the churches' plans come
            # from tests/factories.make_church (an active subscription with a large allowance).
            CHURCH_SEND_LIMIT="100000000",
            CHURCH_BULK_RECIPIENTS_LIMIT="1000000000",
        )
        self.a_numbers = Numbers("312")
        self.b_numbers = Numbers("646")
        self.c_numbers = Numbers("415")

    # setup / teardown

    def start(self) -> None:
        pool = self.svc.pool
        self.church_a = make_church(pool, "A: Sunday broadcast", sender="+13125550100", sms_per_second=SENDER_RATE)
        self.church_b = make_church(pool, "B: pastor's replies", sender="+13125550200", sms_per_second=SENDER_RATE)
        self.church_c = make_church(pool, "C: accept latency", sender="+13125550300", sms_per_second=SENDER_RATE)
        self.sandbox = Sandbox(0)
        say(f"  sandbox at {self.sandbox.url} (own process)")
        env = {
            **self.base_env,
            "DATABASE_URL": self.svc.database_url(SERVER_CONNECTIONS),
            "TELNYX_BASE_URL": f"{self.sandbox.url}/v2",
            "WORKERS": str(SERVER_WORKERS),
            "THREADS": str(SERVER_THREADS),
        }
        self.server = FunctionServer(env, self.logs)
        say(f"  send function at http://127.0.0.1:{self.server.port} (WORKERS={SERVER_WORKERS}, THREADS={SERVER_THREADS})")
        singles = {"sandbox": (self.sandbox.proc.pid, False), "send function": (self.server.proc.pid, True)}
        if self.svc.redis_pid:
            singles["redis"] = (self.svc.redis_pid, False)
        self.watch = CpuWatch(self.svc.pg_postmaster, self.svc.db_name, singles)
        self.consumer_env = {
            **self.base_env,
            "DATABASE_URL": self.svc.database_url(CONSUMER_CONNECTIONS),
            "TELNYX_BASE_URL": f"{self.sandbox.url}/v2",
        }

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
        if self.sandbox is not None:
            self.sandbox.stop()

    # helpers

    def depths(self) -> Any:
        return self.svc.queue.depths()

    def ledger(self) -> dict[str, Any]:
        assert self.sandbox is not None
        return self.sandbox.control("GET", "/_sandbox/ledger?entries=1")

    def statuses(self, broadcast_ids: list[str]) -> tuple[dict[str, int], int]:
        rows = self.svc.pool.run(
            "SELECT status, count(*), count(*) FILTER (WHERE attempts <> 1) FROM messages"
            " WHERE broadcast_id = ANY(CAST(:ids AS uuid[])) GROUP BY status",
            ids=broadcast_ids,
        )
        return {r[0]: int(r[1]) for r in rows}, sum(int(r[2]) for r in rows)

    def message_ids(self, broadcast_ids: list[str]) -> set[str]:
        rows = self.svc.pool.run(
            "SELECT id::text FROM messages WHERE broadcast_id = ANY(CAST(:ids AS uuid[]))", ids=broadcast_ids
        )
        return {r[0] for r in rows}

    # phases

    def warm_up(self) -> None:
        assert self.server is not None
        sender = Sender(self.server.port, self.church_c)
        try:
            for _ in range(self.args.warmup):
                sender.send(self.c_numbers.take(1)[0])
            for _ in range(3):
                sender.send(self.c_numbers.take(1000))
        finally:
            sender.close()

    def accept_single(self, run: int) -> AcceptRun:
        assert self.server is not None
        sender = Sender(self.server.port, self.church_c)
        n = self.args.single
        ms: list[float] = []
        self.watch.start()
        busy0 = _busy(psutil.cpu_times())
        started = time.perf_counter()
        try:
            for i in range(n):
                ms.append(sender.send(self.c_numbers.take(1)[0]).ms)
                self.watch.sample()
                if (i + 1) % max(1, n // 5) == 0:
                    say(f"    {i + 1:>5} / {n}")
        finally:
            sender.close()
        wall = time.perf_counter() - started
        other = max(0.0, _busy(psutil.cpu_times()) - busy0 - sum(self.watch.stop().values()))
        result = AcceptRun(percentile(ms, 0.50), percentile(ms, 0.99), n, wall, other)
        say(
            f"  accept 1 recipient #{run + 1}: p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms ({n} sequential; "
            f"other work on the machine meanwhile: {other:.1f} CPU s in {wall:.1f} s)"
        )
        return result

    def settle(self) -> None:
        """Drain whatever earlier phases queued (sandbox at 0 ms), so each drain run starts from empty."""
        assert self.sandbox is not None
        self.sandbox.reset(0)
        run = run_consumer(self.consumer_env, self.watch, self.logs, "settle")
        d = self.depths()
        if d.ready_conv or d.ready_bulk or d.delayed or d.inflight:
            raise SystemExit(f"queue not empty after settling: {d}")
        say(f"  settled: consumer sent {run.report.get('sent')} leftover messages; queue empty")

    def fill(self, count: int) -> tuple[list[str], list[float]]:
        """``count`` 1,000-recipient broadcasts from church A, sequential, no consumer running."""
        assert self.server is not None
        sender = Sender(self.server.port, self.church_a)
        broadcasts: list[str] = []
        ms: list[float] = []
        try:
            for _ in range(count):
                sent = sender.send(self.a_numbers.take(1000))
                broadcasts.append(sent.body["broadcast_id"])
                ms.append(sent.ms)
        finally:
            sender.close()
        return broadcasts, ms

    def drain(self, kind: str, latency_ms: float, run: int) -> DrainRun:
        assert self.sandbox is not None and self.server is not None
        n = self.args.broadcasts * 1000
        d = self.depths()
        if d.ready_conv or d.ready_bulk or d.delayed or d.inflight:
            raise SystemExit(f"queue not empty before a drain run: {d}")
        broadcasts, fill_ms = self.fill(self.args.broadcasts)
        d = self.depths()
        if d.ready_bulk != n:
            raise SystemExit(f"expected {n} ready bulk messages after the fill, found {d}")
        say(
            f"  {kind} #{run + 1}: queued {n:,} via {len(broadcasts)} POSTs "
            f"(median {median(fill_ms):.1f} ms each); draining at {latency_ms:g} ms latency"
        )
        self.sandbox.reset(latency_ms)

        b_sent: list[tuple[float, float, str, str]] = []  # (post started, 202 at, message id, to)
        b_thread: threading.Thread | None = None
        b_error: list[BaseException] = []
        fairness = kind == "fairness"

        def b_sends() -> None:
            sender = Sender(self.server.port, self.church_b)  # type: ignore[union-attr]
            try:
                for _ in range(self.args.b_samples):
                    time.sleep(0.5)
                    to = self.b_numbers.take(1)[0]
                    posted = time.time()
                    sent = sender.send(to)
                    b_sent.append((posted, sent.at, sent.body["recipients"][0]["message_id"], to))
            except BaseException as exc:  # reported by the main thread
                b_error.append(exc)
            finally:
                sender.close()

        def during() -> None:
            nonlocal b_thread
            if not fairness or b_thread is not None:
                return
            # B starts once the consumer has taken A's first batch off the queue.
            if self.depths().ready_bulk < n:
                b_thread = threading.Thread(target=b_sends, name="church-b", daemon=True)
                b_thread.start()

        consumer = run_consumer(self.consumer_env, self.watch, self.logs, f"{kind}-{run + 1}", during)
        if b_thread is not None:
            b_thread.join(timeout=30)
        if b_error:
            raise SystemExit(f"church B's sends failed: {b_error[0]!r}")
        if fairness and len(b_sent) != self.args.b_samples:
            raise SystemExit(f"church B sent {len(b_sent)} of {self.args.b_samples} messages during the drain")

        # Verify: every message sent once, ledger holds each exactly once.
        ledger = self.ledger()
        entries = ledger.get("entries", [])
        expected = n + (len(b_sent) if fairness else 0)
        a_ids = self.message_ids(broadcasts)
        statuses, not_one_attempt = self.statuses(broadcasts)
        mids = [parse_qs(urlsplit(e["webhook_url"] or "").query).get("mid", [""])[0] for e in entries]
        a_entries = [e for e, mid in zip(entries, mids, strict=True) if mid in a_ids]
        problems = []
        if statuses != {"sent": n} or not_one_attempt:
            problems.append(f"A's messages by status {statuses}, {not_one_attempt} with attempts != 1")
        if ledger["accepted"] != expected or ledger["duplicates"] != 0 or len(set(mids)) != len(mids):
            problems.append(f"ledger accepted {ledger['accepted']} (expected {expected}), duplicates {ledger['duplicates']}")
        if len(a_entries) != n or {m for m in mids if m in a_ids} != a_ids:
            problems.append(f"ledger holds {len(a_entries)} of A's {n} messages")
        if consumer.report.get("sent") != expected:
            problems.append(f"consumer report {consumer.report}")
        result_b: list[float] = []
        result_b_post: list[float] = []
        during_count = 0
        a_times = sorted(parse_ts(e["received_at"]) for e in a_entries)
        if fairness:
            by_mid = {mid: e for e, mid in zip(entries, mids, strict=True)}
            b_statuses = self.svc.pool.run(
                "SELECT status, count(*) FROM messages WHERE id = ANY(CAST(:ids AS uuid[])) GROUP BY status",
                ids=[m for _, _, m, _ in b_sent],
            )
            if {r[0]: int(r[1]) for r in b_statuses} != {"sent": len(b_sent)}:
                problems.append(f"B's messages by status {b_statuses}")
            for posted, answered, mid, _to in b_sent:
                entry = by_mid.get(mid)
                if entry is None:
                    problems.append(f"B's message {mid} is not in the ledger")
                    continue
                received = parse_ts(entry["received_at"])
                result_b.append(received - answered)
                result_b_post.append(received - posted)
                during_count += received < a_times[-1]
        if problems:
            if fairness and b_sent and b_sent[-1][1] > consumer.started_at + consumer.wall_s:
                problems.insert(0, "A's drain ended before church B's last send (more --broadcasts, or fewer --b-samples)")
            raise SystemExit(f"{kind} run #{run + 1} was not clean: " + "; ".join(problems))

        span = a_times[-1] - a_times[0]
        result = DrainRun(
            kind=kind, latency_ms=latency_ms, messages=n, fill_ms=fill_ms, span_s=span, consumer=consumer,
            ledger_accepted=ledger["accepted"], ledger_duplicates=ledger["duplicates"],
            b_latency_s=result_b, b_from_post_s=result_b_post, b_during=during_count,
        )  # fmt: skip
        line = (
            f"    -> {result.msgs_per_s:,.0f} msg/s over the ledger span {span:.2f} s "
            f"({result.msgs_per_s_wall:,.0f} msg/s over the consumer's {consumer.wall_s:.2f} s wall), "
            f"consumer CPU {consumer.cpu_s:.1f} s, peak RSS {consumer.peak_rss_mb:.0f} MB, "
            f"machine busy {consumer.machine_busy:.0%} (CPU s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in consumer.cpu.items())
            + f"); "
            f"all {n:,} sent once, ledger duplicates {ledger['duplicates']}"
        )
        say(line)
        if fairness:
            say(
                f"    -> church B: p50 {percentile(result_b, 0.5) * 1000:.0f} ms, "
                f"max {max(result_b) * 1000:.0f} ms after its 202 ({during_count}/{len(result_b)} "
                "received while A was still draining)"
            )
        return result


# Report -----------------------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarise(accept: list[AcceptRun], drains: list[DrainRun], svc: Services, args: argparse.Namespace) -> dict[str, Any]:
    d50 = [r for r in drains if r.kind == "50ms"]
    d0 = [r for r in drains if r.kind == "0ms"]
    fair = [r for r in drains if r.kind == "fairness"]
    all_b = [x for r in fair for x in r.b_latency_s]
    out: dict[str, Any] = {
        "accept_p50_ms_1": round(median([r.p50_ms for r in accept]), 3),
        "accept_p99_ms_1": round(median([r.p99_ms for r in accept]), 3),
        "accept_ms_1000": round(median([r.fill_median_ms for r in drains]), 2),
        "accept_ms_1000_p99": round(percentile([x for r in drains for x in r.fill_ms], 0.99), 2),
        "drain_msgs_per_s_50ms": round(median([r.msgs_per_s for r in d50]), 1),
        "drain_msgs_per_s_50ms_wall": round(median([r.msgs_per_s_wall for r in d50]), 1),
        "drain_msgs_per_s_0ms": round(median([r.msgs_per_s for r in d0]), 1),
        "drain_msgs_per_s_0ms_wall": round(median([r.msgs_per_s_wall for r in d0]), 1),
        "consumer_peak_rss_mb": round(median([r.consumer.peak_rss_mb for r in d50]), 1),
        "consumer_vm_hwm_mb": round(median([r.consumer.hwm_mb for r in d50]), 1),
        "consumer_cpu_s_50ms": round(median([r.consumer.cpu_s for r in d50]), 2),
        "consumer_cpu_s_0ms": round(median([r.consumer.cpu_s for r in d0]), 2),
        "consumer_cpu_ms_per_msg_50ms": round(median([r.consumer.cpu_s / r.messages * 1000 for r in d50]), 3),
        "consumer_cpu_ms_per_msg_0ms": round(median([r.consumer.cpu_s / r.messages * 1000 for r in d0]), 3),
        "cpu_s_50ms": {k: round(median([r.consumer.cpu.get(k, 0.0) for r in d50]), 2) for k in d50[0].consumer.cpu},
        "cpu_s_0ms": {k: round(median([r.consumer.cpu.get(k, 0.0) for r in d0]), 2) for k in d0[0].consumer.cpu},
        "consumer_wall_s_50ms": round(median([r.consumer.wall_s for r in d50]), 2),
        "consumer_wall_s_0ms": round(median([r.consumer.wall_s for r in d0]), 2),
        "machine_busy_50ms": round(median([r.consumer.machine_busy for r in d50]), 3),
        "machine_busy_0ms": round(median([r.consumer.machine_busy for r in d0]), 3),
        "fairness_p50_s": round(median([percentile(r.b_latency_s, 0.5) for r in fair]), 4),
        "fairness_p99_s": round(median([percentile(r.b_latency_s, 0.99) for r in fair]), 4),
        "fairness_max_s": round(max(all_b), 4),
        "fairness_p50_from_post_s": round(median([percentile(r.b_from_post_s, 0.5) for r in fair]), 4),
        "fairness_p99_from_post_s": round(median([percentile(r.b_from_post_s, 0.99) for r in fair]), 4),
        "drain_messages": drains[0].messages,
        "runs_disturbed_by_other_work": sum(1 for r in [*accept, *drains] if r.other_share > DISTURBED),
        "per_run": {
            "accept_p50_ms_1": [round(r.p50_ms, 3) for r in accept],
            "drain_msgs_per_s_50ms": [round(r.msgs_per_s, 1) for r in d50],
            "drain_msgs_per_s_0ms": [round(r.msgs_per_s, 1) for r in d0],
            "fairness_p99_s": [round(percentile(r.b_latency_s, 0.99), 4) for r in fair],
            "other_work_share_accept": [round(r.other_share, 3) for r in accept],
            "other_work_share_50ms": [round(r.other_share, 3) for r in d50],
            "other_work_share_0ms": [round(r.other_share, 3) for r in d0],
            "other_work_share_fairness": [round(r.other_share, 3) for r in fair],
        },
        "accept_single_requests_per_run": accept[0].n,
        "runs": len(accept),
        "settings": {
            "workers": SERVER_WORKERS,
            "threads": SERVER_THREADS,
            "server_connection_limit": SERVER_CONNECTIONS,
            "consumer_concurrency": CONSUMER_CONCURRENCY,
            "consumer_connection_limit": CONSUMER_CONNECTIONS,
            "sender_sms_per_second": SENDER_RATE,
            "account_sms_per_second": ACCOUNT_RATE,
        },
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "cpu": cpu_model(),
            "os": f"{platform.system()} {platform.release()}",
            "postgresql": f"{svc.server_version} ({svc.pg_where})",
            "redis": f"{svc.redis_version} ({svc.redis_where})",
        },
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": COMMAND + (" --quick" if args.quick else ""),
    }
    return out


def render(s: dict[str, Any], accept: list[AcceptRun], drains: list[DrainRun], loads: tuple[str, str]) -> str:
    m = s["machine"]
    n = s["drain_messages"]
    fair = [r for r in drains if r.kind == "fairness"]
    b_samples = len(fair[0].b_latency_s) if fair else 0

    def mark(r: AcceptRun | DrainRun) -> str:
        return "*" if r.other_share > DISTURBED else ""

    def runs_of(kind: str, fmt: str, attr: str) -> str:
        return " / ".join(format(getattr(r, attr), fmt) + mark(r) for r in drains if r.kind == kind)

    disturbed = sum(1 for r in [*accept, *drains] if mark(r))

    rows = [
        ("Accept, 1 recipient, p50", f"**{s['accept_p50_ms_1']:.2f} ms**", f"< {TARGET_ACCEPT_P50_MS_1:g} ms",
         verdict(s["accept_p50_ms_1"] < TARGET_ACCEPT_P50_MS_1),
         " / ".join(f"{r.p50_ms:.2f}{mark(r)}" for r in accept) + " ms"),
        ("Accept, 1 recipient, p99", f"{s['accept_p99_ms_1']:.2f} ms", "", "",
         " / ".join(f"{r.p99_ms:.2f}{mark(r)}" for r in accept) + " ms"),
        ("Accept, 1,000 recipients, median", f"**{s['accept_ms_1000']:.1f} ms**", f"< {TARGET_ACCEPT_MS_1000:g} ms",
         verdict(s["accept_ms_1000"] < TARGET_ACCEPT_MS_1000),
         " / ".join(f"{r.fill_median_ms:.0f}" for r in drains) + " ms, one per drain run (p99 of all "
         f"{sum(len(r.fill_ms) for r in drains)}: {s['accept_ms_1000_p99']:.0f} ms)"),
        ("Drain, 1 consumer, 50 ms carrier latency", f"**{s['drain_msgs_per_s_50ms']:,.0f} msg/s**",
         f">= {TARGET_DRAIN_MSGS_PER_S:,.0f} msg/s", verdict(s["drain_msgs_per_s_50ms"] >= TARGET_DRAIN_MSGS_PER_S),
         runs_of("50ms", ",.0f", "msgs_per_s") + f" (consumer wall: {s['drain_msgs_per_s_50ms_wall']:,.0f})"),
        ("Drain, 1 consumer, 0 ms carrier latency", f"{s['drain_msgs_per_s_0ms']:,.0f} msg/s", "", "",
         runs_of("0ms", ",.0f", "msgs_per_s") + f" (consumer wall: {s['drain_msgs_per_s_0ms_wall']:,.0f})"),
        ("Consumer peak RSS (50 ms runs)", f"{s['consumer_peak_rss_mb']:.0f} MB", "", "",
         f"kernel VmHWM {s['consumer_vm_hwm_mb']:.0f} MB"),
        ("Consumer CPU per drain (50 ms / 0 ms)", f"{s['consumer_cpu_s_50ms']:.1f} s / {s['consumer_cpu_s_0ms']:.1f} s",
         "", "", f"{s['consumer_cpu_ms_per_msg_50ms']:.3f} / {s['consumer_cpu_ms_per_msg_0ms']:.3f} ms CPU per message"),
        ("Machine busy during drain (50 ms / 0 ms)",
         f"{s['machine_busy_50ms']:.0%} / {s['machine_busy_0ms']:.0%} of 2 cores", "", "",
         "CPU s over a 50 ms drain (wall " + f"{s['consumer_wall_s_50ms']:.1f} s): consumer "
         f"{s['consumer_cpu_s_50ms']:.1f}, " + ", ".join(f"{k} {v:.1f}" for k, v in s["cpu_s_50ms"].items())),
        ("Fairness: church B during A's drain, p50", f"{s['fairness_p50_s'] * 1000:.0f} ms", "", "",
         " / ".join(f"{percentile(r.b_latency_s, 0.5) * 1000:.0f}{mark(r)}" for r in fair) + " ms"),
        ("Fairness: church B during A's drain, p99", f"**{s['fairness_p99_s'] * 1000:.0f} ms**", "", "",
         " / ".join(f"{percentile(r.b_latency_s, 0.99) * 1000:.0f}{mark(r)}" for r in fair)
         + f" ms (max of all: {s['fairness_max_s'] * 1000:.0f} ms;"
         f" from POST: p99 {s['fairness_p99_from_post_s'] * 1000:.0f} ms)"),
    ]  # fmt: skip
    lines = [
        SECTION,
        "",
        f"Date: {s['date']}  ",
        f"Command: `{s['command']}`  ",
        f"Machine: {machine_line()}; PostgreSQL {m['postgresql']}; Redis {m['redis']}  ",
        f"Load average (1 min / 5 min): {loads[0]} at start, {loads[1]} at end  ",
        f"Code measured: {s['code']}",
        "",
        f"Method: every process on loopback on this 2-core machine (send function under functions-framework, "
        f"one `koinonia consume` process, the sandbox, PostgreSQL, Redis, and this driver); each figure is the "
        f"median of {s['runs']} runs; drain rate = {n:,} / (last - first sandbox-ledger `received_at`) with "
        f"{n:,} queued ({n // 1000} x 1,000-recipient POSTs, which are also the 1,000-recipient accept samples) before "
        f"the consumer starts; every run checked: all messages `sent` with 1 attempt, each in the ledger once, "
        f"0 duplicates; fairness = B's ledger `received_at` - the moment B's 202 was read, {b_samples} sends "
        f"0.5 s apart per run (so p99 is the slowest of {b_samples}); each run waits (at most "
        f"{QUIET_WAIT_S:g} s) until other work keeps the machine <= {QUIET_BUSY:.0%} busy for {QUIET_FOR_S} s, "
        "and the CPU other work took during the runs is measured ('other processes').",
        "",
        "| figure | median | target | verdict | runs |",
        "|---|---:|---:|---|---|",
    ]
    for name, value, target, ok, runs in rows:
        lines.append(f"| {name} | {value} | {target} | {ok} | {runs} |")
    lines += [
        "",
        f"\\* other work on this shared machine took more than {DISTURBED:.0%} of its CPU during that run "
        f"({disturbed} of {len(accept) + len(drains)} runs); such runs understate what the code can do.",
        "",
        f"Settings: send function `WORKERS={SERVER_WORKERS}`, `THREADS={SERVER_THREADS}`, "
        f"`connection_limit={SERVER_CONNECTIONS}` (as template.yaml deploys it: one gthread worker; one "
        f"PostgreSQL connection per thread, since a request holds at most one). Consumer "
        f"`CONSUMER_CONCURRENCY={CONSUMER_CONCURRENCY}` (the default; 200 in flight at 50 ms allows "
        f"{CONSUMER_CONCURRENCY / 0.05:,.0f} msg/s, above the target, so latency is not the ceiling), "
        f"`CONSUMER_BATCH=100`, `connection_limit={CONSUMER_CONNECTIONS}`. Sender {SENDER_RATE:,} SMS/s and "
        f"`ACCOUNT_SMS_PER_SECOND={ACCOUNT_RATE:,}` so rate limits are not what is measured; "
        f"`TELNYX_WEBHOOK_URL` set (each request carries `mid=<message id>`), `LOG_LEVEL=WARNING`.",
        "",
    ]
    return "\n".join(lines)


# Main -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` below stops what it started."""

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, smaller sizes; writes nothing unless --write")
    parser.add_argument("--runs", type=int, default=None, help="rounds (default 3; --quick: 1)")
    parser.add_argument("--single", type=int, default=None, help="1-recipient POSTs per accept run (default 500)")
    parser.add_argument("--broadcasts", type=int, default=None, help="1,000-recipient POSTs per drain (default 20)")
    parser.add_argument("--b-samples", type=int, default=None, help="church B's sends per fairness run (default 10; --quick: 5)")
    parser.add_argument("--warmup", type=int, default=50, help="1-recipient POSTs before measuring")
    parser.add_argument("--write", action="store_true", help="write results even with --quick")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md and results.json")
    parser.add_argument("--json", type=Path, help="also write the summary to this file (bench/compare.py reads it)")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.single = args.single or (100 if args.quick else 500)
    args.broadcasts = args.broadcasts or (8 if args.quick else 20)
    args.b_samples = args.b_samples or (5 if args.quick else 10)
    write = (not args.quick or args.write) and not args.no_write

    say(f"machine: {machine_line()}")
    say(f"load average (1 / 5 min): {load()}")
    code, code_print = code_state()
    say(f"code: {code}")
    loads_start = load()
    logs = Path(tempfile.mkdtemp(prefix="koinonia-bench-logs-"))
    accept: list[AcceptRun] = []
    drains: list[DrainRun] = []
    with terminate_as_interrupt():
        services = Services()
        try:
            say("services:")
            services.start()
            say(f"  {services.pg_where}, database {services.db_name} (migrated)")
            say(f"  {services.redis_where}, key prefix {services.prefix}")
            bench = Bench(args, services, logs)
            try:
                bench.start()
                say("warm-up")
                bench.warm_up()
                say(f"accept latency, 1 recipient: {args.runs} x {args.single} sequential POSTs, no consumer running")
                for run in range(args.runs):
                    wait_quiet()
                    accept.append(bench.accept_single(run))
                say("settle: drain what the accept runs queued")
                bench.settle()
                say(
                    f"drain runs: {args.runs} rounds of (50 ms, 0 ms, fairness at 50 ms), "
                    f"{args.broadcasts * 1000:,} queued each, one consumer, concurrency {CONSUMER_CONCURRENCY}"
                )
                for run in range(args.runs):
                    for kind, latency in (("50ms", 50.0), ("0ms", 0.0), ("fairness", 50.0)):
                        wait_quiet()
                        drains.append(bench.drain(kind, latency, run))
            except BaseException:
                if bench.server is not None:
                    say(f"send function log tail:\n{bench.server.tail()}")
                raise
            finally:
                say("stopping the send function and the sandbox")
                bench.stop()
        finally:
            say(f"dropping database {services.db_name}, deleting Redis prefix {services.prefix}")
            services.stop()
            shutil.rmtree(logs, ignore_errors=True)

    code_after, code_print_after = code_state()
    if code_print_after != code_print:
        code += f"; CHANGED DURING THE RUN (now {code_after}): figures mix both versions"
        say(f"warning: the product code changed during the run (now {code_after})")
    summary = summarise(accept, drains, services, args)
    summary["code"] = code
    section = render(summary, accept, drains, (loads_start, load()))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    say()
    say(section)
    if write:
        write_section(SECTION, section)
        update_json(summary)
        say(f"wrote {RESULTS.relative_to(ROOT)} ({SECTION}) and {RESULTS_JSON.relative_to(ROOT)}")
    else:
        say("(not written: --quick or --no-write; run without them to record the figures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
