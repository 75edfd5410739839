"""The measuring loop shared by every peer and the no-queue ceiling.

One Telnyx sandbox process (bench/send_pipeline.py's ``Sandbox``, webhooks off) for the whole
benchmark; before each run its ledger is reset and its latency set. One run of one contender at one
latency:

1. the driver (this process) enqueues N jobs, each carrying one distinct recipient, with no worker
   running: enqueue rate = N / the enqueue calls' time (bulk API where the peer has one);
2. one worker process starts (its own session, so the whole group is stopped after); while the
   ledger fills, the worker's process tree is sampled: CPU (user + system, reaped children included)
   and the sums of the kernel's VmHWM and of PSS over its live processes;
3. once every recipient is in the ledger the CPU is read, a short grace catches late duplicates, the
   worker is stopped (SIGTERM) and the ledger's entries are joined to the recipients: drain rate =
   N / (last - first ``received_at``); enqueue-to-carrier = ``received_at`` - the moment the job's
   enqueue call returned. A run is clean when every recipient is there exactly once; duplicates,
   missing and unexpected entries are counted and reported.

The no-queue ceiling runs the same way with nothing enqueued: its process posts the N itself, twice
over (``CEILINGS``: C single-connection clients, the ceiling proper; one shared C-connection client,
the async peers' idiomatic setup). The peers' jobs use ``config.http`` (bench/peers/job.py).

Rounds interleave contenders (round r: each latency, each contender in turn), so drift on this
shared machine hits all alike; each figure is the median of its runs. Every Redis key a run makes
holds the run token and is deleted after it (a Redis db index of this benchmark's own, db 9 by
default, on the machine's server; an embedded redis-server if that is unreachable).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
for _path in (ROOT, ROOT / "bench"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import psutil  # noqa: E402
import redis  # noqa: E402
import send_pipeline as sp  # noqa: E402  (bench/ is on the path, as for the other bench scripts)

from infra.embedded import RedisProcess  # noqa: E402

from . import PEER_NAMES, PeersConfig, job  # noqa: E402
from .base import PYTHON, Peer, Setup  # noqa: E402

say = sp.say

MODULES = {
    "arq": ("arq_peer", "PEER"),
    "saq": ("saq_peer", "PEER"),
    "celery": ("celery_peer", "PEER"),
    "dramatiq": ("dramatiq_peer", "PEER"),
    "rq": ("rq_peer", "PEER"),
    "rq-pool": ("rq_peer", "POOL"),
    "bullmq": ("bullmq_peer", "PEER"),
}
# The no-queue ceiling, twice: the fastest httpx goes from asyncio (C single-connection clients: the
# ceiling the targets use) and what one shared C-connection AsyncClient allows (the async peers' setup).
CEILINGS = {"ceiling": "per-connection", "ceiling-shared": "shared"}
MACHINE_REDIS = "redis://127.0.0.1:6379"
STOP_S = 3.0  # a stopped worker has this long to exit before its group is killed
GRACE_S = 0.3  # after the last recipient arrived: time for a late duplicate to show before the worker stops
POLL_FIRST_S = 0.05  # ledger polls until the first delivery (start-up is measured to this)
POLL_S = 0.2  # then (each poll serialises the ledger's counts in the sandbox: not too often)
QUIET_WAIT_S = 60.0  # at most this long waiting for an idle machine before a run


# Runs -------------------------------------------------------------------------------------------


@dataclass
class Run:
    contender: str
    latency_ms: float
    round: int
    messages: int
    enqueue_s: float | None  # None: the ceiling has no queue
    span_s: float  # first to last ledger received_at
    startup_s: float  # worker spawned -> first delivery
    wall_s: float  # worker spawned -> every recipient delivered
    cpu_s: float  # worker tree, spawned -> every recipient delivered
    cpu_startup_s: float  # worker tree, spawned -> first delivery seen
    rss_mb: float  # max over samples of the sum of VmHWM of the tree's live processes
    pss_mb: float  # max over samples of the sum of PSS (shared pages split): the forking peers' real footprint
    processes: int  # most processes seen in the worker's tree at once
    latency_p50_ms: float | None  # enqueue -> carrier (None for the ceiling)
    latency_p99_ms: float | None
    post_p50_ms: float | None = None  # ceiling: POST round trip
    post_p99_ms: float | None = None
    delivered: int = 0  # distinct recipients in the ledger
    duplicates: int = 0
    missing: int = 0
    unexpected: int = 0
    cpu_other: dict[str, float] = field(default_factory=dict)  # sandbox, redis, driver, other processes
    other_share: float = 0.0  # share of the machine other work used during the drain
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def drain_per_s(self) -> float:
        return self.messages / self.span_s if self.span_s > 0 else 0.0

    @property
    def enqueue_per_s(self) -> float | None:
        return self.messages / self.enqueue_s if self.enqueue_s else None

    @property
    def cpu_ms_per_msg(self) -> float:
        """Worker CPU per message over the drain, start-up excluded."""
        return (self.cpu_s - self.cpu_startup_s) / self.messages * 1000 if self.messages else 0.0


class RunFailed(Exception):
    """A contender could not be measured at all (would not start, never delivered)."""


def _pss(pid: int) -> int:
    """Proportional set size in bytes: shared pages split among the processes sharing them, so a sum
    over forked processes does not count the parent's pages once per child (VmHWM does)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _tree(root: psutil.Process) -> tuple[float, int, int, int]:
    """(CPU seconds, sum of VmHWM bytes, sum of PSS bytes, processes) of ``root`` and its live
    descendants. A reaped child's CPU is in its parent's children_* times; a live one's is not, so
    the sum counts each once."""
    cpu = 0.0
    hwm = pss = 0
    count = 0
    with contextlib.suppress(psutil.Error):
        procs = [root, *root.children(recursive=True)]
        for p in procs:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                cpu += t.user + t.system + t.children_user + t.children_system
                hwm += sp._vm_hwm(p.pid)  # bench/send_pipeline.py's /proc reader
                pss += _pss(p.pid)
                count += 1
    return cpu, hwm, pss, count


class Bench:
    def __init__(self, config: PeersConfig, logs: Path) -> None:
        self.config = config
        self.logs = logs
        self.base_token = f"pb{uuid.uuid4().hex[:10]}"
        self.embedded: RedisProcess | None = None
        self.tmp = Path(tempfile.mkdtemp(prefix="koinonia-peers-"))
        self.sandbox: sp.Sandbox | None = None
        self.redis: redis.Redis | None = None

    # services

    def start(self) -> None:
        url = f"{MACHINE_REDIS}/{self.config.redis_db}"
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=1)
        try:
            client.ping()
            self.redis_where = f"machine Redis 127.0.0.1:6379, db {self.config.redis_db}"
        except redis.RedisError:
            say("  Redis at 127.0.0.1:6379 unreachable: starting an embedded one")
            self.embedded = RedisProcess(self.tmp / "redis", persist=False).start()
            url = self.embedded.url.rsplit("/", 1)[0] + f"/{self.config.redis_db}"
            client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=1)
            client.ping()
            self.redis_where = f"embedded redis-server, db {self.config.redis_db}"
        self.redis = client
        self.redis_url = url
        info = client.info("server")
        self.redis_version = str(info.get("redis_version", "?"))
        self.redis_pid = sp._local_pid(int(info.get("process_id", 0)))
        self.sandbox = sp.Sandbox(0)
        say(f"  {self.redis_where} (Redis {self.redis_version}); sandbox at {self.sandbox.url} (own process)")

    def stop(self) -> None:
        if self.redis is not None:
            left = self.cleanup(self.base_token, final=True)
            if left:
                say(f"  removed {left} leftover Redis keys of this benchmark")
            self.redis.close()
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.embedded is not None:
            self.embedded.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def cleanup(self, token: str, final: bool = False) -> int:
        """Delete every key holding ``token``, and RQ's: worker records of our queues (a killed worker
        leaves its own), our members of its global sets, and (``final``) its maintenance lock."""
        assert self.redis is not None
        r = self.redis
        removed = 0
        workers: set[bytes] = set()
        for key in r.scan_iter(match="rq:worker:*", count=1000):
            if token.encode() in (r.hget(key, "queues") or b""):
                workers.add(key)
        keys = [*r.scan_iter(match=f"*{token}*", count=1000), *workers]
        if final:
            keys += list(r.scan_iter(match="rq:clean_*", count=1000))
        for start in range(0, len(keys), 1000):
            removed += int(r.delete(*keys[start : start + 1000]))
        for name in ("rq:queues", "rq:workers"):
            members = [m for m in r.smembers(name) if token.encode() in m or m in workers]
            if members:
                r.srem(name, *members)
        return removed

    def setup(self, contender: str, latency_ms: float, round_: int) -> Setup:
        assert self.sandbox is not None
        token = f"{self.base_token}-{contender}-{latency_ms:g}-{round_}"
        return Setup(
            redis_url=self.redis_url,
            queue=f"q-{token}",
            prefix=f"k-{token}",
            concurrency=self.config.concurrency,
            carrier_url=self.sandbox.url,
            token=token,
            http=CEILINGS.get(contender, self.config.http),
        )

    # one run

    def measure(self, name: str, peer: Peer | None, latency_ms: float, round_: int) -> Run:
        """One run; ``peer`` None is the ceiling."""
        assert self.sandbox is not None and self.redis is not None
        cfg = self.config
        n = peer.messages(cfg.n, cfg.serial_n) if peer else cfg.n
        numbers = job.numbers(n)
        setup = self.setup(name, latency_ms, round_)
        self.cleanup(setup.token)
        self.sandbox.reset(latency_ms)
        if cfg.wait_quiet:
            sp.wait_quiet(QUIET_WAIT_S)

        enqueue_s: float | None = None
        enqueued_at: dict[str, float] = {}
        if peer is not None:
            try:
                enqueued = peer.enqueue(setup, numbers)
            except Exception as exc:  # a peer's library failing is a result to report, not a crash
                self.cleanup(setup.token)
                raise RunFailed(f"enqueue failed: {exc!r}") from exc
            if len(enqueued.at) != n:
                raise RunFailed(f"enqueue reported {len(enqueued.at)} of {n} jobs")
            enqueue_s = enqueued.seconds
            enqueued_at = dict(zip(numbers, enqueued.at, strict=True))
            command = peer.worker_command(setup)
        else:
            command = [PYTHON, "-m", "bench.peers.ceiling", "--n", str(n)]

        env = {
            **os.environ,
            **setup.worker_env(),
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
            "PYTHONUNBUFFERED": "1",
        }
        singles = {"sandbox": (self.sandbox.proc.pid, False)}
        if self.redis_pid:
            singles["redis"] = (self.redis_pid, False)
        watch = sp.CpuWatch(None, "", singles)
        log = self.logs / f"{setup.token}.log"
        with log.open("wb") as out:
            watch.start()
            busy0 = psutil.cpu_times()
            spawned_at = time.time()
            started = time.perf_counter()
            proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            try:
                sampled = self._follow(proc, n, peer is None, started)
            finally:
                if proc.returncode is None:
                    _stop(proc, name)
            busy1 = psutil.cpu_times()
            cpu = watch.stop()
        text = log.read_text(errors="replace")
        if sampled.get("error"):
            self.cleanup(setup.token)
            raise RunFailed(f"{sampled['error']}; worker log: {text[-1200:]!r}")

        ledger = self.sandbox.control("GET", "/_sandbox/ledger?entries=1")
        entries = ledger.get("entries", [])
        first: dict[str, float] = {}
        seen: Counter[str] = Counter()
        for e in entries:
            seen[e["to"]] += 1
            first.setdefault(e["to"], sp.parse_ts(e["received_at"]))
        wanted = set(numbers)
        run = Run(
            contender=name,
            latency_ms=latency_ms,
            round=round_,
            messages=n,
            enqueue_s=enqueue_s,
            span_s=0.0,
            startup_s=sampled["startup_s"],
            wall_s=sampled["wall_s"],
            cpu_s=sampled["cpu_s"],
            cpu_startup_s=sampled["cpu_startup_s"],
            rss_mb=sampled["hwm"] / 2**20,
            pss_mb=sampled["pss"] / 2**20,
            processes=sampled["processes"],
            latency_p50_ms=None,
            latency_p99_ms=None,
            delivered=len(wanted & set(seen)),
            duplicates=sum(c - 1 for c in seen.values() if c > 1),
            missing=len(wanted - set(seen)),
            unexpected=sum(c for to, c in seen.items() if to not in wanted),
        )
        times = sorted(first[to] for to in wanted if to in first)
        if len(times) >= 2:
            run.span_s = times[-1] - times[0]
            run.startup_s = times[0] - spawned_at
        if enqueued_at:
            waits = [(first[to] - enqueued_at[to]) * 1000 for to in numbers if to in first]
            if waits:
                run.latency_p50_ms = sp.percentile(waits, 0.5)
                run.latency_p99_ms = sp.percentile(waits, 0.99)
        if peer is None:
            report = _last_json(text)
            run.post_p50_ms = report.get("post_p50_ms")
            run.post_p99_ms = report.get("post_p99_ms")
            if report.get("posted") != n:
                run.problems.append(f"the ceiling process reported {report.get('posted')} of {n} posts")
        if run.missing or run.duplicates or run.unexpected or ledger.get("duplicates", 0):
            run.problems.append(
                f"{run.delivered} of {n} recipients reached the carrier, {run.missing} missing, "
                f"{run.duplicates} duplicates (ledger: {ledger.get('duplicates', 0)}), {run.unexpected} unexpected"
            )
        if ledger.get("by_status", {}).keys() - {"200"}:
            run.problems.append(f"sandbox answers by status {ledger['by_status']}")
        busy = sp._busy(busy1) - sp._busy(busy0)
        cpu["other processes"] = max(0.0, busy - run.cpu_s - sum(cpu.values()))
        run.cpu_other = {k: round(v, 3) for k, v in cpu.items()}
        run.other_share = cpu["other processes"] / (run.wall_s * (os.cpu_count() or 1)) if run.wall_s else 0.0
        self.cleanup(setup.token)
        return run

    def _follow(self, proc: subprocess.Popen[bytes], n: int, exits_by_itself: bool, started: float) -> dict[str, Any]:
        """Poll the ledger until all ``n`` recipients are in, sampling the worker's tree. A worker is left
        running for the caller to stop; the ceiling process is waited for (it exits when done)."""
        assert self.sandbox is not None
        ps = psutil.Process(proc.pid)
        deadline = started + 120.0 + n / 5.0  # a contender slower than 5 messages a second is reported as failed
        out: dict[str, Any] = {"hwm": 0, "pss": 0, "processes": 0, "cpu_s": 0.0, "cpu_startup_s": 0.0, "startup_s": 0.0}
        first_seen: float | None = None
        rusage = None
        cpu = 0.0
        while True:
            now = time.perf_counter()
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                rusage = usage
            else:
                cpu, hwm, pss, count = _tree(ps)
                out["hwm"] = max(out["hwm"], hwm)
                out["pss"] = max(out["pss"], pss)
                out["processes"] = max(out["processes"], count)
            unique = int(self.sandbox.control("GET", "/_sandbox/ledger")["unique"])
            if unique and first_seen is None:
                first_seen = now - started
                out["startup_s"] = first_seen
                out["cpu_startup_s"] = cpu if rusage is None else rusage.ru_utime + rusage.ru_stime
            if unique >= n:
                out["wall_s"] = time.perf_counter() - started
                if rusage is None:
                    out["cpu_s"] = _tree(ps)[0]
                break
            if rusage is not None:
                if exits_by_itself:
                    out["error"] = f"exited ({proc.returncode}) with {unique} of {n} delivered"
                else:
                    out["error"] = f"worker exited ({proc.returncode}) with {unique} of {n} delivered"
                return out
            if now >= deadline:
                out["error"] = f"{unique} of {n} delivered after {now - started:.0f} s"
                return out
            time.sleep(POLL_FIRST_S if not unique else POLL_S)  # polling the sandbox's count: nothing to wait on
        if exits_by_itself:
            if rusage is None:
                _, status, rusage = os.wait4(proc.pid, 0)  # it ends by itself once its last POST is answered
                proc.returncode = os.waitstatus_to_exitcode(status)
            out["cpu_s"] = rusage.ru_utime + rusage.ru_stime
            if proc.returncode != 0:
                out["error"] = f"exited with {proc.returncode}"
        else:
            time.sleep(GRACE_S)  # the caller stops the worker after this
        return out


def _stop(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM to the worker's process group (a warm shutdown: every job is done by now), SIGKILL after
    STOP_S. Not bench/send_pipeline.stop_child's 15 s: RQ's worker-pool takes longer than that to
    wind down its workers, and nothing is measured any more."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        say(f"    ({name} still running {STOP_S:g} s after SIGTERM: killed)")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


def _last_json(text: str) -> dict[str, Any]:
    for line in reversed(text.splitlines()):
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict):
                return value
    return {}


# Run / render / main ----------------------------------------------------------------------------


def load_peers(names: tuple[str, ...], errors: dict[str, str]) -> dict[str, Peer]:
    """The peers asked for, in the given order; one that cannot be imported is reported, not fatal."""
    peers: dict[str, Peer] = {}
    for name in names:
        if name not in MODULES:
            raise SystemExit(f"unknown peer {name!r}: choose from {', '.join(PEER_NAMES)}")
        module_name, attr = MODULES[name]
        try:
            module = importlib.import_module(f"{__package__}.{module_name}")
            peers[name] = getattr(module, attr)
        except ImportError as exc:
            errors[name] = f"cannot import ({exc}): install the bench extra, pip install -e '.[bench]'"
            say(f"  {name}: {errors[name]}")
    return peers


def run(config: PeersConfig) -> dict[str, Any]:
    from .report import summarise

    started = time.perf_counter()
    errors: dict[str, str] = {}
    peers = load_peers(config.peers, errors)
    say(
        f"peers: {', '.join(f'{n} {p.version()}' for n, p in peers.items())}; "
        f"ceiling: httpx {importlib.metadata.version('httpx')}; "
        f"N={config.n:,} (RQ: serial_n={config.serial_n}), C={config.concurrency}, "
        f"latencies {', '.join(f'{x:g} ms' for x in config.latencies)}, {config.runs} run(s)"
    )
    logs = Path(tempfile.mkdtemp(prefix="koinonia-peers-logs-"))
    runs: list[Run] = []
    bench = Bench(config, logs)
    with sp.terminate_as_interrupt():
        try:
            bench.start()
            contenders: list[tuple[str, Peer | None]] = [*((name, None) for name in CEILINGS), *peers.items()]
            for round_ in range(config.runs):
                for latency in config.latencies:
                    for name, peer in contenders:
                        if name in errors:
                            continue
                        try:
                            r = bench.measure(name, peer, latency, round_)
                        except RunFailed as exc:
                            errors[name] = str(exc)
                            say(f"  {name} @ {latency:g} ms #{round_ + 1}: FAILED: {exc}")
                            continue
                        runs.append(r)
                        say(_progress(r))
        finally:
            bench.stop()
            shutil.rmtree(logs, ignore_errors=True)
    result = summarise(config, runs, peers, errors)
    result["seconds"] = round(time.perf_counter() - started, 1)
    result["redis"] = f"{bench.redis_version} ({bench.redis_where})"
    return result


def _progress(r: Run) -> str:
    enq = f"enqueue {r.enqueue_per_s:,.0f}/s, " if r.enqueue_per_s else ""
    lat = (
        f"enqueue->carrier p50 {r.latency_p50_ms:,.0f} / p99 {r.latency_p99_ms:,.0f} ms, "
        if r.latency_p50_ms is not None and r.latency_p99_ms is not None
        else (f"POST p50 {r.post_p50_ms:.1f} / p99 {r.post_p99_ms:.1f} ms, " if r.post_p50_ms is not None else "")
    )
    verdict = "clean" if r.ok else "NOT CLEAN: " + "; ".join(r.problems)
    return (
        f"  {r.contender:<9} @ {r.latency_ms:>2g} ms #{r.round + 1}: {enq}drain {r.drain_per_s:,.0f} msg/s "
        f"({r.messages:,} over {r.span_s:.2f} s), {lat}start-up {r.startup_s:.2f} s, "
        f"CPU {r.cpu_s:.2f} s ({r.cpu_ms_per_msg:.2f} ms/msg), peak RSS {r.rss_mb:.0f} MB "
        f"({r.processes} proc), {verdict}"
    )


def main(argv: list[str] | None = None) -> int:
    from .report import render

    parser = argparse.ArgumentParser(description="Python queues side by side, and the no-queue ceiling")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=300, one run, no idle-machine wait")
    parser.add_argument("--n", type=int, default=None, help="messages per run (default 5,000; --quick 300)")
    parser.add_argument("--runs", type=int, default=None, help="runs per contender and latency (default 3)")
    parser.add_argument("--concurrency", type=int, default=None, help="jobs in flight per worker (default 200)")
    parser.add_argument("--latencies", default=None, help="sandbox latencies in ms, comma-separated (default 0,50)")
    parser.add_argument("--peers", default=None, help=f"comma-separated subset of {','.join(PEER_NAMES)}")
    parser.add_argument("--http", choices=job.HTTP_MODES, default=None, help="how the peers' jobs hold connections")
    parser.add_argument("--json", type=Path, default=None, help="also write the result dict to this file")
    args = parser.parse_args(argv)
    config = PeersConfig.make(
        n=args.n,
        runs=args.runs,
        concurrency=args.concurrency,
        latencies=[float(x) for x in args.latencies.split(",")] if args.latencies else None,
        quick=args.quick,
        peers=[x.strip() for x in args.peers.split(",")] if args.peers else None,
        http=args.http,
    )
    say(f"machine: {sp.machine_line()}")
    say(f"load average (1 / 5 min): {sp.load()}")
    result = run(config)
    say()
    say(render(result))
    keys = ("version", "enqueue_per_s", "drain_msgs_per_s_0ms", "drain_msgs_per_s_50ms", "rss_mb")
    brief = {name: {k: p.get(k) for k in keys} for name, p in result["peers"].items()}
    rest = {k: v for k, v in result.items() if k not in ("peers", "ceiling", "ceiling_shared")}
    say(json.dumps({"peers": brief, **rest}, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        say(f"wrote {args.json}")
    say(f"took {result['seconds']:.0f} s")
    return 0 if result["ok"] else 1


__all__ = ["CEILINGS", "Bench", "Run", "RunFailed", "main", "run", "sp"]
