"""Our pipeline as the queue comparison drives it (bench/ours.py, scaling.py, costs.py): one stack, many drains.

bench/send_pipeline.py's ``Bench`` provides the stack: a fresh migrated database and a Redis key prefix
(``Services``), the Telnyx sandbox in its own process, and the send function under functions-framework as
template.yaml deploys it (gunicorn gthread, ``WORKERS=1``, ``THREADS=4``). This module adds what the
comparison needs and send_pipeline.py does not do:

- ``fill``: N messages accepted through ``POST /messages`` as 1,000-recipient broadcasts, posted by several
  client threads at once, from a fresh church each time (so every run starts alike: an empty church-day for the
  analytics recompute and the quota query), while the send function's worker RSS is sampled;
- ``drain``: one or more ``koinonia consume`` processes started together on the filled queue, optionally with
  the retry-scheduler function invoked back to back as its cloud schedule does, sampling the peak RSS of every
  process of ours (consumers, the scheduler's worker) and the CPU of everything else (sandbox, PostgreSQL,
  Redis, other work: send_pipeline's ``CpuWatch``);
- the check of every drain: each message ``sent`` with one attempt, the sandbox ledger holding each exactly
  once (0 duplicates), the queue empty afterwards; and its figures: drain rate over the ledger span, and per
  message the time from its broadcast's 202 to the carrier's ``received_at``.

This driver stays flat in memory too: above ``LEDGER_ENTRIES_MAX`` messages the ledger's entries are not fetched
(its summary still counts accepted, unique and duplicates); the timings then come from PostgreSQL, aggregated
there: ``messages.sent_at`` (our outcome write, a few milliseconds after the carrier answered) instead of the
ledger's ``received_at``. ``Drain.timing`` says which.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import psutil  # noqa: E402
import send_pipeline as sp  # noqa: E402

from tests.factories import Tenant, make_church  # noqa: E402

say = sp.say

BROADCAST = 1000  # recipients per POST (the issue: broadcasts of 1,000)
# Client threads posting broadcasts at once. The send function runs as deployed: one gunicorn worker with four
# gthreads, so four requests in flight keep every server thread busy, and while one request waits on PostgreSQL
# or Redis another uses the worker's CPU. A fifth client would only wait in gunicorn's queue (more latency per
# POST, no more throughput); fewer would leave the worker idle during each request's database round trips.
CLIENTS = sp.SERVER_THREADS
LEDGER_ENTRIES_MAX = 200_000  # above this many messages the ledger's entries are not fetched (see the docstring)
SCHEDULER_BUDGET_S = 5.0  # each retry-scheduler invocation's budget_s (the cloud's is 50 s a minute)
SAMPLE_S = 0.02  # RSS sampling period while processes run
TIMELINE_POINTS = 24  # RSS-over-time points kept per process (memory flat across one drain)
PROGRESS_S = 10.0  # a progress line this often during a long drain


# Processes --------------------------------------------------------------------------------------


def worker_process(proc: subprocess.Popen[Any]) -> psutil.Process:
    """The process that serves requests: gunicorn's worker (the functions-framework process's child), or the
    process itself when it has no child."""
    parent = psutil.Process(proc.pid)
    children = parent.children(recursive=True)
    return children[0] if children else parent


class Peak:
    """Peak RSS of one process: psutil samples, and the kernel's VmHWM (the peak between samples too); and a
    coarse RSS timeline, to show memory staying flat through a run."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.rss = 0
        self.hwm = 0
        self.timeline: list[tuple[float, float]] = []
        self._started = time.monotonic()
        self._next_point = 0.0

    def sample(self) -> None:
        with contextlib.suppress(psutil.Error):
            rss = self.proc.memory_info().rss
            self.rss = max(self.rss, rss)
            elapsed = time.monotonic() - self._started
            if elapsed >= self._next_point:
                self.timeline.append((round(elapsed, 1), round(rss / 2**20, 1)))
                self._next_point = elapsed + 1.0
        self.hwm = max(self.hwm, sp._vm_hwm(self.proc.pid))

    @property
    def peak_rss_mb(self) -> float:
        return self.rss / 2**20

    @property
    def hwm_mb(self) -> float:
        return self.hwm / 2**20

    def points(self) -> list[tuple[float, float]]:
        """At most ``TIMELINE_POINTS`` (seconds since start, RSS MB), evenly picked."""
        step = max(1, -(-len(self.timeline) // TIMELINE_POINTS))
        picked = self.timeline[::step]
        if self.timeline and picked[-1] != self.timeline[-1]:
            picked.append(self.timeline[-1])
        return picked


@dataclass
class ConsumerProcess:
    cpu_s: float  # user + system over its whole life (wait4)
    peak_rss_mb: float
    hwm_mb: float
    report: dict[str, Any]
    timeline: list[tuple[float, float]]


@dataclass
class ConsumersRun:
    consumers: list[ConsumerProcess]
    wall_s: float
    started_at: float  # wall clock when the processes were started
    cpu: dict[str, float]  # CPU seconds of every other component over the run ("other processes" included)
    machine_busy: float  # fraction of all cores busy over the run
    extras: dict[str, Peak]  # peak RSS of the other processes of ours sampled meanwhile (the scheduler's worker)

    @property
    def cpu_s(self) -> float:
        return sum(c.cpu_s for c in self.consumers)

    @property
    def sent(self) -> int:
        return sum(int(c.report.get("sent", 0)) for c in self.consumers)

    @property
    def other_share(self) -> float:
        return self.cpu.get("other processes", 0.0) / (self.wall_s * (os.cpu_count() or 1)) if self.wall_s else 0.0


def run_consumers(
    env: dict[str, str], count: int, watch: sp.CpuWatch, logs: Path, tag: str, *, deadline_s: float,
    extras: dict[str, psutil.Process] | None = None, on_start: Callable[[list[int]], None] | None = None,
    progress: Callable[[], None] | None = None,
) -> ConsumersRun:  # fmt: skip
    """``count`` x ``python -m common.cli consume`` started together, each until it finds nothing left to do.

    send_pipeline.run_consumer's measurement for several processes at once: CPU from wait4 per process, peak
    RSS per process, the other components' CPU from ``watch``. ``on_start`` gets the pids (a profiler attaches);
    ``progress`` is called every ``PROGRESS_S`` while they run.
    """
    budget_s = max(60.0, deadline_s - 30)
    cmd = [sys.executable, "-m", "common.cli", "consume", "--max-seconds", f"{budget_s:g}", "--max-messages", "100000000"]
    logs_of = [logs / f"consumer-{tag}-{i + 1}.log" for i in range(count)]
    outs = [log.open("wb") for log in logs_of]
    watch.start()
    cpu0 = psutil.cpu_times()
    started_at = time.time()
    started = time.perf_counter()
    procs: list[subprocess.Popen[bytes]] = []
    usage: dict[int, Any] = {}
    try:
        for out in outs:
            procs.append(
                subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            )
        peaks = [Peak(psutil.Process(p.pid)) for p in procs]
        others = {name: Peak(proc) for name, proc in (extras or {}).items()}
        if on_start is not None:
            on_start([p.pid for p in procs])
        deadline = time.monotonic() + deadline_s
        next_progress = time.monotonic() + PROGRESS_S
        while len(usage) < len(procs) and time.monotonic() < deadline:
            for p, peak in zip(procs, peaks, strict=True):
                if p.pid in usage:
                    continue
                pid, status, rusage = os.wait4(p.pid, os.WNOHANG)
                if pid:
                    usage[p.pid] = rusage
                    p.returncode = os.waitstatus_to_exitcode(status)
                else:
                    peak.sample()
            for peak in others.values():
                peak.sample()
            watch.sample()
            if progress is not None and time.monotonic() >= next_progress:
                next_progress = time.monotonic() + PROGRESS_S
                progress()
            time.sleep(SAMPLE_S)
    finally:
        for p in procs:
            if p.pid not in usage:
                sp.stop_child(p, "consumer", signal.SIGKILL)
        for out in outs:
            out.close()
    wall = time.perf_counter() - started
    cpu1 = psutil.cpu_times()
    cpu = watch.stop()
    consumers = []
    for p, peak, log in zip(procs, peaks, logs_of, strict=True):
        text = log.read_text(errors="replace")
        if p.pid not in usage:
            raise SystemExit(f"consumer {tag} did not finish within {deadline_s:g}s; log: {text[-1500:]}")
        if p.returncode != 0:
            raise SystemExit(f"consumer {tag} exited with {p.returncode}; log: {text[-1500:]}")
        match = re.search(r"^consume: (\{.*\})$", text, re.M)
        if not match:
            raise SystemExit(f"consumer {tag} printed no report; log: {text[-1500:]}")
        ru = usage[p.pid]
        report = ast.literal_eval(match.group(1))
        consumers.append(ConsumerProcess(ru.ru_utime + ru.ru_stime, peak.peak_rss_mb, peak.hwm_mb, report, peak.points()))
    busy = sp._busy(cpu1) - sp._busy(cpu0)
    total = busy + (cpu1.idle + getattr(cpu1, "iowait", 0.0)) - (cpu0.idle + getattr(cpu0, "iowait", 0.0))
    cpu["other processes"] = max(0.0, busy - sum(c.cpu_s for c in consumers) - sum(cpu.values()))
    return ConsumersRun(consumers, wall, started_at, cpu, busy / total if total > 0 else 0.0, others)


class SchedulerLoop:
    """The retry-scheduler function invoked back to back while a drain runs, as its cloud schedule does (every
    minute with a 50 s budget there; ``SCHEDULER_BUDGET_S`` here, so the last invocation ends soon after the
    drain). Each invocation promotes, reclaims, reconciles PostgreSQL against Redis and runs the analytics
    processor over what the consumers emitted (common/scheduler.py)."""

    def __init__(self, port: int, budget_s: float = SCHEDULER_BUDGET_S) -> None:
        self.client = sp.Client(port)
        self.budget_s = budget_s
        self.reports: list[dict[str, Any]] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="scheduler-loop", daemon=True)

    def _loop(self) -> None:
        body = json.dumps({"budget_s": self.budget_s}).encode()
        headers = {"Content-Type": "application/json"}
        try:
            while not self._stop.is_set():
                status, data, _ms = self.client.post("/", body, headers)
                if status != 200:
                    raise RuntimeError(f"retry-scheduler answered {status}: {data[:300]!r}")
                self.reports.append(json.loads(data)["report"])
        except BaseException as exc:  # reported by stop()
            self.errors.append(exc)
        finally:
            self.client.close()

    def start(self) -> SchedulerLoop:
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Let the running invocation end; the invocations' reports added up."""
        self._stop.set()
        self._thread.join(timeout=self.budget_s + sp.HTTP_TIMEOUT_S)
        if self.errors:
            raise SystemExit(f"retry-scheduler invocation failed: {self.errors[0]!r}")
        total: dict[str, Any] = {"invocations": len(self.reports)}
        for report in self.reports:
            for key, value in report.items():
                if isinstance(value, int | float) and key != "seconds":
                    total[key] = total.get(key, 0) + value
        return total


# Fill and drain ---------------------------------------------------------------------------------


@dataclass
class Fill:
    church: Tenant
    n: int
    broadcasts: list[str]  # broadcast ids
    starts: list[int]  # per broadcast (sorted): index of its first recipient number (Numbers.take order)
    answered: list[float]  # per broadcast, same order: wall-clock time its 202 had been read
    post_ms: list[float]  # every POST's time from sending the request to having read the answer
    wall_s: float  # first POST sent to last answer read
    clients: int
    send_peak: Peak

    @property
    def per_s(self) -> float:
        return self.n / self.wall_s

    def answered_at(self, number_index: int) -> float:
        return self.answered[bisect.bisect_right(self.starts, number_index) - 1]


@dataclass
class Drain:
    kind: str
    n: int
    latency_ms: float
    processes: int
    span_s: float  # first to last carrier receipt (ledger received_at, or sent_at: see ``timing``)
    timing: str  # "ledger" or "postgres"
    run: ConsumersRun
    first_s: float  # consumers started -> first message at the carrier
    to_carrier_p50_s: float  # a message's broadcast 202 -> the carrier received it
    to_carrier_p99_s: float
    ledger_duplicates: int
    scheduler: dict[str, Any] = field(default_factory=dict)

    @property
    def msgs_per_s(self) -> float:
        return self.n / self.span_s if self.span_s > 0 else 0.0

    @property
    def cpu_ms_per_msg(self) -> float:
        return self.run.cpu_s / self.n * 1000

    @property
    def consumer_peak_rss_mb(self) -> float:
        return max(c.peak_rss_mb for c in self.run.consumers)


STATUS_SQL = """
SELECT status, count(*), count(*) FILTER (WHERE attempts <> 1) FROM messages
WHERE broadcast_id = ANY(CAST(:ids AS uuid[])) GROUP BY status
"""

# Timings in PostgreSQL when the ledger's entries are not fetched: sent_at against each broadcast's 202.
PG_TIMING_SQL = """
WITH b AS (SELECT * FROM unnest(CAST(:ids AS uuid[]), CAST(:answered AS float8[])) AS b(id, answered))
SELECT extract(epoch FROM min(m.sent_at)), extract(epoch FROM max(m.sent_at)),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM m.sent_at) - b.answered),
       percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM m.sent_at) - b.answered)
FROM messages m JOIN b ON m.broadcast_id = b.id
"""


class Stack:
    """send_pipeline's stack (``Bench``) plus fills from several clients, multi-process drains and the scheduler."""

    def __init__(self, logs: Path, *, concurrency: int = sp.CONSUMER_CONCURRENCY, quiet: bool = True) -> None:
        self.logs = logs
        self.concurrency = concurrency
        self.quiet = quiet  # wait for the machine to be nearly idle before each measured phase
        self.services = sp.Services()
        self.bench: sp.Bench | None = None  # made by start(): its environment names the started services
        self.numbers = sp.Numbers("312")
        self.numbers_lock = threading.Lock()
        self.churches = 0
        self.scheduler_server: sp.FunctionServer | None = None

    def start(self) -> Stack:
        say("services:")
        self.services.start()
        say(f"  {self.services.pg_where}, database {self.services.db_name} (migrated)")
        say(f"  {self.services.redis_where}, key prefix {self.services.prefix}")
        self.bench = sp.Bench(argparse.Namespace(warmup=20), self.services, self.logs)
        self.bench.start()
        assert self.bench.server is not None and self.bench.sandbox is not None
        self.server = self.bench.server
        self.sandbox = self.bench.sandbox
        self.env = {**self.bench.consumer_env, "CONSUMER_CONCURRENCY": str(self.concurrency)}
        self.send_worker = worker_process(self.server.proc)
        return self

    @property
    def started(self) -> sp.Bench:
        assert self.bench is not None, "Stack.start() first"
        return self.bench

    def warm_up(self, clients: int = CLIENTS) -> None:
        """One broadcast per client thread at once, then a drain of them: every server thread has its PostgreSQL
        connection open and every code path has run before anything is measured."""
        say("warm-up")
        self.fill(BROADCAST * clients, clients)
        self.started.settle()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.scheduler_server is not None:
                self.scheduler_server.stop()
        if self.bench is not None:
            with contextlib.suppress(Exception):
                self.bench.stop()
        self.services.stop()

    def wait_quiet(self) -> None:
        if self.quiet:
            sp.wait_quiet()

    def new_church(self) -> Tenant:
        self.churches += 1
        sender = f"+1312555{1000 + self.churches:04d}"
        return make_church(self.services.pool, f"bench church {self.churches}", sender=sender, sms_per_second=sp.SENDER_RATE)

    def _take(self, count: int) -> tuple[int, list[str]]:
        with self.numbers_lock:
            start = self.numbers.next
            return start, self.numbers.take(count)

    # accept

    def fill(self, n: int, clients: int = CLIENTS, *, progress: bool = False) -> Fill:
        """``n`` messages through ``POST /messages`` in broadcasts of 1,000, ``clients`` threads posting at once."""
        if n < 1:
            raise SystemExit("n must be at least 1")
        church = self.new_church()
        sizes = [BROADCAST] * (n // BROADCAST) + ([n % BROADCAST] if n % BROADCAST else [])
        lock = threading.Lock()
        state = {"next": 0}
        records: list[tuple[int, float, float, str, float, float]] = []
        errors: list[BaseException] = []
        done = threading.Event()
        peak = Peak(self.send_worker)
        report_every = max(1, len(sizes) // 10)

        def post() -> None:
            sender = sp.Sender(self.server.port, church)
            try:
                while not errors:
                    with lock:
                        i = state["next"]
                        if i >= len(sizes):
                            return
                        state["next"] = i + 1
                    start, to = self._take(sizes[i])
                    t0 = time.perf_counter()
                    sent = sender.send(to)
                    t1 = time.perf_counter()
                    with lock:
                        records.append((start, sent.at, sent.ms, sent.body["broadcast_id"], t0, t1))
                        if progress and len(records) % report_every == 0:
                            say(f"      accepted {len(records) * BROADCAST:>10,} / {n:,}")
            except BaseException as exc:  # SystemExit from Sender.send included: raised again below
                errors.append(exc)
            finally:
                sender.close()

        def sample() -> None:
            while not done.is_set():
                peak.sample()
                done.wait(0.05)

        sampler = threading.Thread(target=sample, name="send-rss", daemon=True)
        sampler.start()
        threads = [threading.Thread(target=post, name=f"client-{i}", daemon=True) for i in range(clients)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            done.set()
            sampler.join()
        peak.sample()
        if errors:
            raise SystemExit(f"a broadcast failed: {errors[0]!r}")
        records.sort()
        wall = max(r[5] for r in records) - min(r[4] for r in records)
        return Fill(
            church=church, n=n, broadcasts=[r[3] for r in records], starts=[r[0] for r in records],
            answered=[r[1] for r in records], post_ms=[r[2] for r in records], wall_s=wall, clients=clients, send_peak=peak,
        )  # fmt: skip

    # drain

    def scheduler_port(self) -> int:
        if self.scheduler_server is None:
            env = {**self.env, "WORKERS": str(sp.SERVER_WORKERS), "THREADS": str(sp.SERVER_THREADS)}
            self.scheduler_server = sp.FunctionServer(env, self.logs, name="retry-scheduler")
            say(f"  retry-scheduler function at http://127.0.0.1:{self.scheduler_server.port}")
        return self.scheduler_server.port

    def drain(
        self, fill: Fill, latency_ms: float, *, kind: str, processes: int = 1, scheduler: bool = False,
        scheduler_budget_s: float = SCHEDULER_BUDGET_S, on_start: Callable[[list[int]], None] | None = None,
    ) -> Drain:  # fmt: skip
        """Drain the filled queue with ``processes`` consumers at ``latency_ms`` (``scheduler``: with the
        retry-scheduler invoked back to back meanwhile); checked (see the module docstring)."""
        depths = self.started.depths()
        if depths.ready_bulk + depths.ready_conv != fill.n or depths.delayed or depths.inflight:
            raise SystemExit(f"expected exactly {fill.n:,} ready messages before the drain, found {depths}")
        self.sandbox.reset(latency_ms)
        singles = {"sandbox": (self.sandbox.proc.pid, False), "send function": (self.server.proc.pid, True)}
        if self.services.redis_pid:
            singles["redis"] = (self.services.redis_pid, False)
        extras: dict[str, psutil.Process] = {}
        loop: SchedulerLoop | None = None
        if scheduler:
            port = self.scheduler_port()
            assert self.scheduler_server is not None
            singles["retry-scheduler"] = (self.scheduler_server.proc.pid, True)
            extras["retry-scheduler"] = worker_process(self.scheduler_server.proc)
            loop = SchedulerLoop(port, scheduler_budget_s).start()
        watch = sp.CpuWatch(self.services.pg_postmaster, self.services.db_name, singles)
        deadline_s = max(180.0, fill.n / 100 + 120)  # a generous bound (>= 100 msg/s), not a target
        try:
            run = run_consumers(self.env, processes, watch, self.logs, f"{kind}-{processes}p-{latency_ms:g}ms",
                                deadline_s=deadline_s, extras=extras, on_start=on_start,
                                progress=lambda: self._progress(fill.n))  # fmt: skip
        finally:
            sched = loop.stop() if loop is not None else {}
        return self._check(fill, run, latency_ms, kind, processes, sched)

    def redis_mb(self) -> float:
        """Redis memory of the queue's keys (``{prefix}:q:*``; ``MEMORY USAGE``, Redis's sampled estimate for big
        hashes and lists): what the backlog costs Redis when called right after a fill."""
        client = self.services.redis
        assert client is not None
        total = 0
        for name in client.scan_iter(match=f"{{{self.services.prefix}}}:q:*", count=1000):
            total += int(client.memory_usage(name) or 0)
        return total / 2**20

    def _progress(self, n: int) -> None:
        """What is left in Redis (the depths script walks the rings only: cheap at any N)."""
        d = self.started.depths()
        left = d.ready_conv + d.ready_bulk + d.delayed + d.inflight
        say(f"      drained ~{n - left:>10,} / {n:,} (ready {d.ready_conv + d.ready_bulk:,}, in flight {d.inflight:,})")

    def _check(
        self, fill: Fill, run: ConsumersRun, latency_ms: float, kind: str, processes: int, sched: dict[str, Any]
    ) -> Drain:
        n = fill.n
        with_entries = n <= LEDGER_ENTRIES_MAX
        ledger = self.sandbox.control("GET", "/_sandbox/ledger" + ("?entries=1" if with_entries else ""))
        rows = self.services.pool.run(STATUS_SQL, ids=fill.broadcasts)
        statuses = {r[0]: int(r[1]) for r in rows}
        not_one_attempt = sum(int(r[2]) for r in rows)
        problems = []
        if statuses != {"sent": n} or not_one_attempt:
            problems.append(f"messages by status {statuses}, {not_one_attempt} with attempts != 1")
        if ledger["accepted"] != n or ledger["unique"] != n or ledger["duplicates"] != 0:
            problems.append(f"ledger accepted {ledger['accepted']}, unique {ledger['unique']} (expected {n}), "
                            f"duplicates {ledger['duplicates']}")  # fmt: skip
        if run.sent != n:
            problems.append(f"consumers reported {run.sent} sent (expected {n}): {[c.report for c in run.consumers]}")
        depths = self.started.depths()
        if depths.ready_conv or depths.ready_bulk or depths.delayed or depths.inflight:
            problems.append(f"queue not empty after the drain: {depths}")
        if with_entries and not problems:
            entries = ledger["entries"]
            mids = {parse_qs(urlsplit(e["webhook_url"] or "").query).get("mid", [""])[0] for e in entries}
            if mids != set(self.started.message_ids(fill.broadcasts)):
                problems.append("the ledger's message ids are not exactly this fill's")
            received = [sp.parse_ts(e["received_at"]) for e in entries]
            lat = [r - fill.answered_at(int(e["to"][-7:]) - 2_000_000) for r, e in zip(received, entries, strict=True)]
            first, last = min(received), max(received)
            p50, p99 = sp.percentile(lat, 0.5), sp.percentile(lat, 0.99)
            del entries, ledger, received, lat
        elif not problems:
            first, last, p50, p99 = (float(v) for v in self.services.pool.run(
                PG_TIMING_SQL, ids=fill.broadcasts, answered=fill.answered)[0])  # fmt: skip
        if problems:
            raise SystemExit(f"{kind} drain ({processes} consumer(s), {latency_ms:g} ms) was not clean: " + "; ".join(problems))
        return Drain(
            kind=kind, n=n, latency_ms=latency_ms, processes=processes, span_s=last - first,
            timing="ledger" if with_entries else "postgres", run=run, first_s=first - run.started_at,
            to_carrier_p50_s=p50, to_carrier_p99_s=p99, ledger_duplicates=0, scheduler=sched,
        )  # fmt: skip


def drain_line(d: Drain) -> str:
    """One progress line for a checked drain."""
    rss = ", ".join(f"{c.peak_rss_mb:.0f}" for c in d.run.consumers)
    extra = "".join(f", {name} peak RSS {p.peak_rss_mb:.0f} MB" for name, p in d.run.extras.items())
    return (
        f"    -> {d.msgs_per_s:,.0f} msg/s over the {d.timing} span {d.span_s:.2f} s ({d.processes} consumer(s), "
        f"{d.latency_ms:g} ms); accept->carrier p50 {d.to_carrier_p50_s:.2f} s, p99 {d.to_carrier_p99_s:.2f} s; "
        f"consumer CPU {d.cpu_ms_per_msg:.3f} ms/msg, peak RSS {rss} MB{extra}; machine busy {d.run.machine_busy:.0%}; "
        f"all {d.n:,} sent once, 0 duplicates"
    )


def fill_line(f: Fill) -> str:
    return (
        f"    accepted {f.n:,} in {f.wall_s:.2f} s = {f.per_s:,.0f} msg/s ({len(f.post_ms)} POSTs of up to {BROADCAST:,}, "
        f"{f.clients} clients; POST p50 {sp.percentile(f.post_ms, 0.5):.0f} ms, p99 {sp.percentile(f.post_ms, 0.99):.0f} ms; "
        f"send worker peak RSS {f.send_peak.peak_rss_mb:.0f} MB)"
    )


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "cpu": sp.cpu_model(), "line": sp.machine_line()}


def run_and_show(
    run: Callable[[Any], dict[str, Any]], render: Callable[[dict[str, Any]], str], config: Any, json_path: Path | None
) -> int:
    """A part's ``main``, after its arguments: run it, print its markdown, save its result if asked."""
    sp.say(f"machine: {sp.machine_line()}")
    result = run(config)
    sp.say()
    sp.say(render(result))
    if json_path:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
        sp.say(f"wrote {json_path}")
    return 0


@contextlib.contextmanager
def running_stack(name: str, *, concurrency: int, quick: bool, clients: int) -> Iterator[Stack]:
    """A started and warmed-up ``Stack`` for one part (ours, scaling, costs): its logs in a temporary folder,
    the send function's log tail shown if the part fails, and everything stopped and removed at the end."""
    logs = Path(tempfile.mkdtemp(prefix=f"koinonia-{name}-"))
    stack = Stack(logs, concurrency=concurrency, quiet=not quick)
    with sp.terminate_as_interrupt():
        try:
            stack.start()
            stack.warm_up(clients)
            yield stack
        except BaseException:
            sp.say(f"send function log tail:\n{stack.server.tail() if getattr(stack, 'server', None) else ''}")
            raise
        finally:
            sp.say(f"stopping; dropping database {stack.services.db_name}, deleting Redis prefix {stack.services.prefix}")
            stack.stop()
            shutil.rmtree(logs, ignore_errors=True)
