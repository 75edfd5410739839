"""What one message costs us, counted and profiled: ``python bench/costs.py [--quick]``.

1. **Counts** (not estimates). The send path and the consumer run in-process, in a child process of this one
   (its own settings and singletons, against this run's database, Redis prefix and sandbox): ``POST /messages``
   through a Flask test client of functions/send/main.py (a 1-recipient send, then 1,000-recipient broadcasts),
   and ``common.consume.run_consumer`` with a ``Runtime`` draining 1,000 messages at 0 and 50 ms carrier
   latency. The libraries are instrumented at their boundary, nothing of ours is touched:

   - SQL statements: pg8000's ``execute_simple`` / ``execute_unnamed`` / ``execute_named`` (what
     ``Connection.run`` dispatches to: one per statement, ``BEGIN`` and ``COMMIT`` included);
   - PostgreSQL round trips: pg8000's ``handle_messages`` (each waits for the server's answer once: a statement
     with parameters costs three, parse, describe, then bind/execute, as pg8000 sends them);
   - Redis round trips: redis-py's ``send_packed_command`` on the sync and asyncio connections (a single
     command and a whole pipeline are one call each: one round trip; ``send_command`` goes through it).

   Each count is attributed to a phase by the innermost function of ours on the calling stack (the event
   loop's coroutine chain included): for the drain dequeue, claim, outcome write, ack, analytics, and the
   rest; the carrier's share is its HTTP requests (the sandbox ledger's attempts).
2. **Profile** of the hot paths with py-spy (sampling from outside, ``--nonblocking``, idle threads
   excluded, so samples are on-CPU time): the send function's gunicorn worker while it accepts N messages
   as broadcasts, and one consumer process draining them at 50 ms. Top frames by self and total time, and
   the share of each library (our carrier client with httpcore/h11, json, pg8000, redis-py, asyncio...);
   samples taken while modules were being imported (start-up) are counted apart. Without py-spy (the
   ``bench`` extra) the profile is skipped and says so; ``--keep-profiles DIR`` keeps the raw stacks.

``run(config)`` returns the figures, ``render(result)`` the markdown; alone, this prints them (``--json FILE``
also saves the result). ``--quick``: the same counts, a profile over 2,000 messages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import send_pipeline as sp  # noqa: E402
from our_stack import CLIENTS, Stack, drain_line, fill_line, machine, run_and_show, running_stack  # noqa: E402

say = sp.say
COMMAND = "python bench/costs.py"
COUNTS_MARK = "COSTS-COUNTS "  # the child's result line
CHILD_DEADLINE_S = 300.0


@dataclass
class Config:
    broadcast: int = 1000  # recipients of each counted broadcast
    drain_n: int = 1000  # messages per counted drain
    latencies: tuple[float, ...] = (0.0, 50.0)
    profile_n: int = 20_000  # messages accepted and drained under py-spy
    profile_latency_ms: float = 50.0
    profile_rate: int = 200  # py-spy samples per second
    concurrency: int = sp.CONSUMER_CONCURRENCY
    clients: int = CLIENTS
    quick: bool = False
    keep_profiles: Path | None = None  # copy py-spy's raw stacks here (flamegraph.pl / speedscope read them)

    @classmethod
    def make(
        cls, *, n: int | None = None, runs: int | None = None, concurrency: int | None = None,
        latencies: tuple[float, ...] | list[float] | None = None, quick: bool = False, profile_n: int | None = None,
        keep_profiles: Path | None = None,
    ) -> Config:  # fmt: skip
        """The orchestrator's arguments. Counts are exact, so ``runs`` does not apply; ``n`` sizes the profile."""
        del runs
        return cls(
            latencies=tuple(float(x) for x in (latencies if latencies is not None else (0.0, 50.0))),
            profile_n=profile_n or n or (2_000 if quick else 20_000),
            concurrency=concurrency or sp.CONSUMER_CONCURRENCY,
            quick=quick,
            keep_profiles=keep_profiles,
        )


# Counting (runs in the child) -------------------------------------------------------------------

Rule = tuple[str, str, frozenset[str] | None]  # (phase, path fragment, function names; None: any function)


def _rules(*rules: tuple[str, str, tuple[str, ...] | None]) -> list[Rule]:
    return [(phase, path, frozenset(names) if names else None) for phase, path, names in rules]


_SETUP = (
    ("connection setup", "redis/connection.py", ("connect", "on_connect", "connect_check_health")),
    ("connection setup", "redis/asyncio/connection.py", ("connect", "on_connect", "connect_check_health")),
    ("connection setup", "pg8000/core.py", ("__init__",)),
    ("connection setup", "common/db/pool.py", ("_connect",)),
)
SEND_RULES = _rules(
    *_SETUP,
    ("auth", "common/auth/", None),
    ("rate limits + quota", "common/limits/", None),
    ("rate limits + quota", "common/billing/", None),
    ("analytics", "common/analytics/", None),
    ("enqueue", "common/queue/", None),
    ("wake", "common/wake.py", None),
    ("accept (one transaction)", "common/send/service.py", None),
    ("accept (one transaction)", "common/messages/", None),
    ("accept (one transaction)", "common/compliance/", None),
    ("accept (one transaction)", "common/privacy/", None),
)
DRAIN_RULES = _rules(
    *_SETUP,
    ("dequeue", "common/queue/aqueue.py", ("dequeue",)),
    ("wait for work", "common/queue/aqueue.py", ("wait_for_work",)),
    ("ack / retry", "common/queue/aqueue.py", ("ack", "retry_later")),
    ("lease renewal", "common/queue/aqueue.py", ("renew",)),
    ("lease renewal", "common/messages/store.py", ("renew_leases",)),
    ("claim", "common/messages/store.py", ("claim", "unclaimed_state")),
    ("outcome write", "common/messages/store.py", ("record_outcomes",)),
    ("analytics", "common/analytics/", None),
    ("dead-letter counters", "common/consume.py", ("_count_dead",)),
)
DRAIN_PHASES = ("dequeue", "claim", "carrier", "outcome write", "ack / retry", "analytics", "lease renewal",
                "dead-letter counters", "wait for work", "connection setup", "other")  # fmt: skip
KINDS = ("sql", "pg_round_trips", "redis_round_trips")


class Tally:
    """Counts per phase, attributed by walking the caller's stack (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rules: list[Rule] = []
        self.counting = False
        self.by_phase: dict[str, Counter[str]] = defaultdict(Counter)
        self.sql_by_verb: Counter[str] = Counter()

    @contextlib.contextmanager
    def measure(self, rules: list[Rule]) -> Iterator[Tally]:
        with self._lock:
            self.rules, self.counting = rules, True
            self.by_phase, self.sql_by_verb = defaultdict(Counter), Counter()
        try:
            yield self
        finally:
            self.counting = False

    def _phase(self) -> str:
        frame = sys._getframe(2)
        while frame is not None:
            code = frame.f_code
            path = code.co_filename.replace("\\", "/")
            for phase, fragment, names in self.rules:
                if fragment in path and (names is None or code.co_name in names):
                    return phase
            frame = frame.f_back  # type: ignore[assignment]
        return "other"

    def hit(self, kind: str, sql: str | None = None) -> None:
        if not self.counting:
            return
        phase = self._phase()
        with self._lock:
            self.by_phase[phase][kind] += 1
            if sql is not None:
                self.sql_by_verb[(sql.split(None, 1) or ["?"])[0].upper()] += 1

    def result(self, messages: int, extra: dict[str, dict[str, int]] | None = None) -> dict[str, Any]:
        phases = {name: dict(c) for name, c in self.by_phase.items()}
        for name, counts in (extra or {}).items():
            phases.setdefault(name, {}).update(counts)
        totals = {k: sum(p.get(k, 0) for p in phases.values()) for k in KINDS}
        steady = {k: sum(p.get(k, 0) for n, p in phases.items() if n not in ("connection setup", "wait for work"))
                  for k in KINDS}  # fmt: skip
        return {
            "messages": messages,
            "totals": totals,
            "per_message": {k: round(v / messages, 4) for k, v in totals.items()},
            "per_message_steady": {k: round(v / messages, 4) for k, v in steady.items()},
            "by_phase": phases,
            "sql_by_verb": dict(self.sql_by_verb),
        }


def instrument(tally: Tally) -> None:
    """Count at the libraries' boundary (pg8000, redis-py sync and asyncio); behaviour unchanged."""
    import pg8000.core
    import redis.asyncio.connection
    import redis.connection

    core = pg8000.core.CoreConnection
    for name in ("execute_simple", "execute_unnamed", "execute_named"):
        original = getattr(core, name)

        def statement(self: Any, sql_or_stmt: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            # execute_named (a statement common/db/pool.py prepared once) gets its name first, its text last
            text = sql_or_stmt if isinstance(sql_or_stmt, str) else (args[-1] if args and isinstance(args[-1], str) else "?")
            tally.hit("sql", text)
            return __original(self, sql_or_stmt, *args, **kwargs)

        setattr(core, name, statement)
    handle = core.handle_messages

    def handle_messages(self: Any, context: Any) -> Any:
        tally.hit("pg_round_trips")
        return handle(self, context)

    core.handle_messages = handle_messages  # type: ignore[method-assign]

    sync_owner = next(c for c in redis.connection.Connection.__mro__ if "send_packed_command" in c.__dict__)
    sync_send = sync_owner.send_packed_command

    def send_packed_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        tally.hit("redis_round_trips")
        return sync_send(self, *args, **kwargs)

    sync_owner.send_packed_command = send_packed_command  # type: ignore[method-assign]
    async_owner = next(c for c in redis.asyncio.connection.Connection.__mro__ if "send_packed_command" in c.__dict__)
    async_send = async_owner.send_packed_command

    async def asend_packed_command(self: Any, *args: Any, **kwargs: Any) -> Any:
        tally.hit("redis_round_trips")
        return await async_send(self, *args, **kwargs)

    async_owner.send_packed_command = asend_packed_command  # type: ignore[method-assign]


def count_child(params: dict[str, Any]) -> dict[str, Any]:
    """In the child: the counts (see the module docstring). The environment names the parent's services."""
    tally = Tally()
    instrument(tally)
    from functions_framework import create_app

    from common.consume import ConsumeBudget, run_consumer
    from common.runtime import get_runtime
    from tests.factories import make_church, numbers

    rt = get_runtime()
    sandbox = sp.Sandbox.__new__(sp.Sandbox)  # the parent's sandbox: only its control API is used here
    sandbox.host, sandbox.port = params["sandbox_host"], params["sandbox_port"]
    church = make_church(rt.pool, "costs", sender="+13125559900", sms_per_second=sp.SENDER_RATE)
    client = create_app("send", str(ROOT / "functions" / "send" / "main.py")).test_client()
    headers = {**church.auth, "Content-Type": "application/json"}
    area = iter(range(10**6))

    def post(count: int) -> dict[str, Any]:
        to = numbers(count, area="646", start=next(area) * 10_000)
        body = json.dumps({"channel": "sms", "to": to if count > 1 else to[0], "text": sp.TEXT})
        resp = client.post("/messages", data=body, headers=headers)
        data = resp.get_json()
        if resp.status_code != 202 or data.get("mode") != "queued" or data["counts"]["accepted"] != count:
            raise SystemExit(f"POST /messages -> {resp.status_code}: {str(data)[:300]}")
        return dict(data)

    def drain() -> dict[str, Any]:
        budget = ConsumeBudget(max_messages=10**8, max_seconds=120, stop_when_idle=True)
        return asyncio.run(run_consumer(rt, budget)).as_dict()

    say("  counting child: warm-up (a send, a broadcast, a drain: connections open, scripts loaded)")
    sandbox.reset(0)
    post(1)
    post(params["broadcast"])
    drain()
    out: dict[str, Any] = {}
    with tally.measure(SEND_RULES):
        post(1)
    out["accept_1"] = tally.result(1)
    accepts = []
    for _ in range(3):
        with tally.measure(SEND_RULES):
            post(params["broadcast"])
        accepts.append(tally.result(params["broadcast"]))
    out["accept_broadcast"] = accepts[1]  # the middle one; all three are kept
    out["accept_broadcast_all"] = [a["totals"] for a in accepts]
    drain()  # the three counted broadcasts, uncounted
    for latency in params["latencies"]:
        sandbox.reset(latency)
        for _ in range(params["drain_n"] // params["broadcast"]):
            post(params["broadcast"])
        if params["drain_n"] % params["broadcast"]:
            post(params["drain_n"] % params["broadcast"])
        attempts0 = sandbox.control("GET", "/_sandbox/ledger")["attempts"]
        with tally.measure(DRAIN_RULES):
            report = drain()
        ledger = sandbox.control("GET", "/_sandbox/ledger")
        carrier = ledger["attempts"] - attempts0
        if report.get("sent") != params["drain_n"] or ledger["duplicates"] or carrier != params["drain_n"]:
            raise SystemExit(f"counted drain at {latency:g} ms was not clean: {report}, carrier requests {carrier}")
        result = tally.result(params["drain_n"], {"carrier": {"http_requests": carrier}})
        result["consumer_report"] = report
        out[f"drain_{latency:g}ms"] = result
        say(f"  counted drain at {latency:g} ms: {result['per_message_steady']} per message (steady state)")
    return out


def run_child(stack: Stack, config: Config) -> dict[str, Any]:
    """The counts, from a child process against this stack's services (its own singletons and settings)."""
    d = stack.started.depths()
    if d.ready_conv or d.ready_bulk or d.delayed or d.inflight:
        raise SystemExit(f"queue not empty before counting: {d}")
    params = {"broadcast": config.broadcast, "drain_n": config.drain_n, "latencies": list(config.latencies),
              "sandbox_host": stack.sandbox.host, "sandbox_port": stack.sandbox.port}  # fmt: skip
    cmd = [sys.executable, str(Path(__file__).resolve()), "--count-child", json.dumps(params)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    result: dict[str, Any] | None = None
    tail: list[str] = []
    timer = threading.Timer(CHILD_DEADLINE_S, lambda: sp.stop_child(proc, "counting child", signal.SIGKILL))
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith(COUNTS_MARK):
                result = json.loads(line[len(COUNTS_MARK) :])
            else:
                tail = [*tail[-30:], line.rstrip("\n")]
                if line.startswith("  "):
                    say(line.rstrip("\n"))
        proc.wait()
    finally:
        timer.cancel()
        sp.stop_child(proc, "counting child")
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"counting child failed ({proc.returncode}):\n" + "\n".join(tail))
    return result


# Profiling --------------------------------------------------------------------------------------

CATEGORIES = (  # (label, path fragments): a frame's file decides; first match wins
    ("carrier client (ours + httpcore/h11)", ("common/carrier/", "httpcore/", "h11/", "httpx/", "anyio/")),
    ("pg8000", ("pg8000/",)),
    ("redis-py", ("redis/",)),
    ("json", ("json/",)),
    ("phone numbers (phonenumbers)", ("phonenumbers/", "common/phones.py")),
    ("sealing and hashing (common/privacy, cryptography)", ("common/privacy/", "cryptography/")),
    ("pydantic", ("pydantic/", "pydantic_core/", "common/request_models.py", "common/send/models.py")),
    ("web server (gunicorn, flask, werkzeug)", ("gunicorn/", "flask/", "werkzeug/", "functions_framework/")),
    ("logging", ("logging/", "common/logs.py", "common/log_context.py", "common/outcome_log.py")),
    ("asyncio", ("asyncio/",)),
    ("our code (other)", ("common/", "functions/")),
    ("threads", ("concurrent/futures/",)),
)
UNATTRIBUTED = "stdlib, not under any of the above"


def category(frame: str) -> str | None:
    """The category of a frame (``qualname (file)``), or None for a frame that only does work for its caller
    (the standard library's socket, ssl, selectors, re, hmac... and anything else unlisted)."""
    file = frame[frame.rfind("(") + 1 : -1] if frame.endswith(")") else frame
    for label, fragments in CATEGORIES:
        if any(f in file for f in fragments):
            return label
    return None


def attributed(frames: list[str]) -> str:
    """Whose work a sample is: the innermost frame with a category (a socket read inside pg8000 is pg8000's,
    an epoll wait inside the event loop is asyncio's)."""
    for frame in reversed(frames):
        label = category(frame)
        if label is not None:
            return label
    return UNATTRIBUTED


_PREFIXES = ("/site-packages/", f"/lib/python{sys.version_info[0]}.{sys.version_info[1]}/", str(ROOT) + "/")


def short(frame: str) -> str:
    """``qualname (full path)`` -> ``qualname (common/send/service.py)``: the path from the repository, the
    site-packages or the standard library folder (py-spy's own shortening drops folders without __init__.py)."""
    at = frame.rfind(" (")
    if at < 0 or not frame.endswith(")"):
        return frame
    path = frame[at + 2 : -1]
    for prefix in _PREFIXES:
        i = path.find(prefix)
        if i >= 0:
            path = path[i + len(prefix) :]
            break
    return f"{frame[:at]} ({path})"


def profile_summary(path: Path, top: int = 15) -> dict[str, Any]:
    """Self and total shares per frame and per category from py-spy's raw (collapsed stacks) output.

    Samples taken while a module was being imported (a new consumer's start-up, a module imported at first use)
    are counted apart (``startup_share``) and left out of the shares: they are paid once per process, not per
    message, and at small N they would hide the hot path."""
    self_fn: Counter[str] = Counter()
    total_fn: Counter[str] = Counter()
    self_cat: Counter[str] = Counter()
    total_cat: Counter[str] = Counter()
    samples = startup = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";") if f]
        if any("importlib._bootstrap" in f for f in frames):
            startup += n
            continue
        samples += n
        if not frames:
            self_cat["(no Python frame: native code)"] += n
            continue
        self_fn[frames[-1]] += n
        self_cat[attributed(frames)] += n
        for f in set(frames):
            total_fn[f] += n
        for c in {category(f) for f in frames} - {None}:
            total_cat[c] += n  # type: ignore[index]
    if not samples:
        return {"samples": 0}

    def share(n: int) -> float:
        return round(n / samples, 4)

    roots = {f for f, n in total_fn.items() if n >= 0.95 * samples}
    return {
        "samples": samples,
        "startup_samples": startup,
        "startup_share": round(startup / (samples + startup), 4),
        "top_self": [{"frame": f, "self": share(n), "total": share(total_fn[f])} for f, n in self_fn.most_common(top)],
        "top_total": [
            {"frame": f, "self": share(self_fn[f]), "total": share(n)} for f, n in total_fn.most_common() if f not in roots
        ][: 4 * top],
        "categories": [{"category": c, "self": share(n), "total": share(total_cat[c])} for c, n in self_cat.most_common()],
    }


class Spy:
    """``py-spy record`` attached to one process, raw output; stops when the process exits or on ``stop()``."""

    def __init__(self, binary: str, pid: int, out: Path, rate: int) -> None:
        self.out = out
        cmd = [binary, "record", "--pid", str(pid), "--format", "raw", "--nolineno", "--nonblocking", "--full-filenames",
               "--rate", str(rate), "-o", str(out)]  # fmt: skip
        self.log = out.with_suffix(".log")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self, timeout_s: float = 10.0) -> bool:
        """Wait (bounded) until py-spy says it is sampling, so a short phase is not over before it attached."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.proc.poll() is None:
            if b"Sampling process" in self.log.read_bytes():
                return True
            time.sleep(0.05)  # polling py-spy's own log line; it has no other readiness signal
        return False

    def stop(self, timeout_s: float = 30.0) -> dict[str, Any]:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            sp.stop_child(self.proc, "py-spy", signal.SIGKILL)
        if not self.out.exists():
            return {"samples": 0, "error": self.log.read_text(errors="replace")[-500:]}
        return profile_summary(self.out)

    def wait(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """After the target exited: py-spy notices, writes and ends by itself."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout_s)
        return self.stop()


def py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


def profile(stack: Stack, config: Config, folder: Path) -> dict[str, Any]:
    binary = py_spy()
    if binary is None:
        say("  py-spy not installed (pip install -e '.[bench]'): profile skipped")
        return {"skipped": "py-spy not installed (the bench extra)"}
    out: dict[str, Any] = {"tool": f"py-spy ({binary}), {config.profile_rate} samples/s, --nonblocking, idle excluded"}
    stack.wait_quiet()
    say(f"  profile: send function worker accepting {config.profile_n:,} as broadcasts of 1,000 ({config.clients} clients)")
    spy = Spy(binary, stack.send_worker.pid, folder / "send.txt", config.profile_rate)
    if not spy.ready():
        say(f"  py-spy did not attach: {spy.log.read_text(errors='replace')[-300:]}")
    try:
        fill = stack.fill(config.profile_n, config.clients)
    finally:
        out["send"] = spy.stop()
    say(fill_line(fill))
    stack.wait_quiet()
    say(f"  profile: consumer draining them at {config.profile_latency_ms:g} ms")
    spies: list[Spy] = []

    def attach(pids: list[int]) -> None:
        spies.append(Spy(binary, pids[0], folder / "consumer.txt", config.profile_rate))

    drain = stack.drain(fill, config.profile_latency_ms, kind="profile", on_start=attach)
    say(drain_line(drain))
    out["consumer"] = spies[0].wait() if spies else {"samples": 0}
    if config.keep_profiles is not None:
        config.keep_profiles.mkdir(parents=True, exist_ok=True)
        for name in ("send.txt", "consumer.txt"):
            if (folder / name).exists():
                shutil.copy(folder / name, config.keep_profiles / f"pyspy-{name}")
        say(f"  raw py-spy stacks kept in {config.keep_profiles}")
    out["n"] = config.profile_n
    out["consumer_cpu_ms_per_msg"] = round(drain.cpu_ms_per_msg, 3)
    out["drain_msgs_per_s"] = round(drain.msgs_per_s, 1)
    out["accept_per_s"] = round(fill.per_s, 1)
    for name in ("send", "consumer"):
        cats = out[name].get("categories", [])
        say(f"    {name}: {out[name].get('samples', 0)} samples; self time by category: "
            + ", ".join(f"{c['category']} {c['self']:.0%}" for c in cats[:6]))  # fmt: skip
    return out


# run / render / main ----------------------------------------------------------------------------


def run(config: Config) -> dict[str, Any]:
    code, _ = sp.code_state()
    at = ", ".join(f"{x:g} ms" for x in config.latencies)
    say(f"costs: counts for a 1-recipient send, {config.broadcast:,}-recipient broadcasts and drains of "
        f"{config.drain_n:,} at {at}; profile over {config.profile_n:,}")  # fmt: skip
    result: dict[str, Any] = {}
    with running_stack("costs", concurrency=config.concurrency, quick=config.quick, clients=config.clients) as stack:
        say("counts (in-process send and consumer, instrumented pg8000 and redis-py):")
        result["counts"] = run_child(stack, config)
        say("profile (py-spy):")
        result["profile"] = profile(stack, config, stack.logs)
    result.update({
        "broadcast": config.broadcast, "drain_n": config.drain_n, "latencies_ms": list(config.latencies),
        "concurrency": config.concurrency, "version": code, "machine": machine(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": COMMAND + (" --quick" if config.quick else ""),
    })  # fmt: skip
    return result


def _per(counts: dict[str, int], messages: int) -> str:
    return " / ".join(f"{counts.get(k, 0) / messages:.3g}" for k in KINDS)


def _batching(d: dict[str, Any]) -> str:
    """Messages per dequeue round trip, per claim statement, per outcome write statement, per ack round trip."""
    phases, n = d["by_phase"], d["messages"]

    def per(phase: str, kind: str) -> str:
        count = phases.get(phase, {}).get(kind, 0)
        return f"{n / count:.0f}" if count else "-"

    return (
        f"{per('dequeue', 'redis_round_trips')} messages per dequeue, {per('claim', 'sql')} per claim statement, "
        f"{per('outcome write', 'sql')} per outcome-write statement, {per('ack / retry', 'redis_round_trips')} per ack"
    )


_DISPATCH = ("(common/cli.py)", "(common/web.py)", "(common/limits/auth_failures.py)", "(functions/")


def _is_work(frame: str) -> bool:
    """A function of ours that does work, not one that only dispatches to it (the CLI, routing, the auth guard)."""
    return "(common/" in frame and not any(d in frame for d in _DISPATCH)


def render(result: dict[str, Any]) -> str:
    c = result["counts"]
    lines = [
        "Per message, counted at the library boundary (pg8000 statements and round trips, redis-py round trips: a "
        "pipeline is one), the send path and the consumer in-process:",
        "",
        "| what | messages | SQL statements | PostgreSQL round trips | Redis round trips |",
        "|---|---:|---:|---:|---:|",
    ]
    a1, ab = c["accept_1"], c["accept_broadcast"]
    lines.append(f"| accept, 1 recipient | 1 | {a1['totals']['sql']} | {a1['totals']['pg_round_trips']} | "
                 f"{a1['totals']['redis_round_trips']} |")  # fmt: skip
    pm = ab["per_message"]
    lines.append(f"| accept, {ab['messages']:,}-recipient broadcast (per message) | {ab['messages']:,} | {pm['sql']:.4f} | "
                 f"{pm['pg_round_trips']:.4f} | {pm['redis_round_trips']:.4f} |")  # fmt: skip
    for latency in result["latencies_ms"]:
        d = c.get(f"drain_{latency:g}ms")
        if d:
            s = d["per_message_steady"]
            lines.append(f"| drain at {latency:g} ms (per message, steady state) | {d['messages']:,} | {s['sql']:.4f} | "
                         f"{s['pg_round_trips']:.4f} | {s['redis_round_trips']:.4f} |")  # fmt: skip
    lines += ["", "By phase (SQL statements / PostgreSQL round trips / Redis round trips per message):", ""]
    phases_send = ", ".join(f"{name} {_per(counts, ab['messages'])}" for name, counts in sorted(ab["by_phase"].items()))
    lines.append(f"- accept, broadcast of {ab['messages']:,}: {phases_send}; statements by verb {ab['sql_by_verb']}.")
    for latency in result["latencies_ms"]:
        d = c.get(f"drain_{latency:g}ms")
        if not d:
            continue
        parts = []
        for name in DRAIN_PHASES:
            counts = d["by_phase"].get(name)
            if counts is None:
                continue
            if name == "carrier":
                parts.append(f"carrier {counts.get('http_requests', 0) / d['messages']:.3g} HTTP requests")
            else:
                parts.append(f"{name} {_per(counts, d['messages'])}")
        r = d["consumer_report"]
        lines.append(f"- drain at {latency:g} ms: " + ", ".join(parts) + f" (consumer report: dequeued {r.get('dequeued')}, "
                     f"sent {r.get('sent')}; setup and waiting are per invocation, not per message).")  # fmt: skip
        lines.append(f"- drain at {latency:g} ms, batching: {_batching(d)}.")
    p = result.get("profile", {})
    if p.get("skipped"):
        lines += ["", f"Profile: skipped ({p['skipped']})."]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        f"Profile ({p.get('tool', 'py-spy')}): the send function's worker accepting {p.get('n', 0):,} messages "
        f"({p.get('accept_per_s', 0):,.0f} msg/s), one consumer draining them at 50 ms ({p.get('drain_msgs_per_s', 0):,.0f} "
        f"msg/s, {p.get('consumer_cpu_ms_per_msg', 0):.3f} ms CPU per message). Share of on-CPU samples (self: the "
        "innermost frame's library, a stdlib frame counting for its caller's; total: on the stack at all), "
        "samples taken while importing modules left out:",
        "",
        "| category | send: self | send: total | consumer: self | consumer: total |",
        "|---|---:|---:|---:|---:|",
    ]
    send = {x["category"]: x for x in p.get("send", {}).get("categories", [])}
    cons = {x["category"]: x for x in p.get("consumer", {}).get("categories", [])}
    for cat in sorted(set(send) | set(cons), key=lambda k: -(cons.get(k, {}).get("self", 0) + send.get(k, {}).get("self", 0))):
        s, k = send.get(cat, {}), cons.get(cat, {})
        cells = [s.get("self", 0), s.get("total", 0), k.get("self", 0), k.get("total", 0)]
        lines.append(f"| {cat} | " + " | ".join(f"{x:.0%}" for x in cells) + " |")
    for name in ("consumer", "send"):
        prof = p.get(name, {})
        if prof.get("error"):
            lines += ["", f"py-spy could not sample the {name}: {prof['error'].strip()[-200:]}"]
        if not prof.get("top_self"):
            continue
        lines += ["", f"Top frames, {name} ({prof['samples']:,} samples; {prof['startup_samples']:,} more while importing "
                  f"modules, left out):", "", "| frame | self | total |", "|---|---:|---:|"]
        lines += [f"| `{x['frame']}` | {x['self']:.1%} | {x['total']:.1%} |" for x in prof["top_self"]]
        ours = [x for x in prof.get("top_total", []) if _is_work(x["frame"]) and x["total"] < 0.85][:8]
        if ours:
            lines += ["", "Our functions by total time: " + ", ".join(f"`{x['frame']}` {x['total']:.0%}" for x in ours) + "."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: the same counts, a profile over 2,000 messages")
    parser.add_argument("--profile-n", type=int, help="messages accepted and drained under py-spy (default 20,000)")
    parser.add_argument("--latencies", default="0,50", help="carrier latencies of the counted drains (default 0,50)")
    parser.add_argument("--json", type=Path, help="also write the result to this file")
    parser.add_argument("--keep-profiles", type=Path, help="copy py-spy's raw stacks (collapsed format) to this folder")
    parser.add_argument("--count-child", help=argparse.SUPPRESS)  # internal: the counting child process
    args = parser.parse_args()
    if args.count_child:
        result = count_child(json.loads(args.count_child))
        print(COUNTS_MARK + json.dumps(result), flush=True)
        return 0
    config = Config.make(quick=args.quick, profile_n=args.profile_n, keep_profiles=args.keep_profiles,
                         latencies=[float(x) for x in args.latencies.split(",") if x.strip()])  # fmt: skip
    return run_and_show(run, render, config, args.json)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    raise SystemExit(main())
