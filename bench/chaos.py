"""Chaos run: ``python bench/chaos.py [--messages N] [--no-write]``.

10,000 accepted messages drained through a carrier that fails a quarter of its requests, while the
consumer is SIGKILLed three times, Redis is restarted empty once and PostgreSQL is restarted once.
Then: was anything lost, and where did every duplicate at the carrier come from?

Everything runs on loopback and everything is private to the run (a temporary folder, removed at the
end, also on Ctrl-C / SIGTERM):

- PostgreSQL: ``infra.embedded.PostgresProcess`` (pgserver, unix socket), a fresh migrated database;
- Redis: ``infra.embedded.RedisProcess`` without persistence (a restart loses everything it held);
- the Telnyx sandbox CLI in its own process: 20% 5xx, 5% 429 (retry-after 1 s), 2% timeouts (held
  2 s, then closed; the sandbox does not count these as accepted), 100 ms latency + up to 100 ms
  jitter, fixed seed; every request carries ``webhook_url=...?mid=<message id>`` so each ledger entry
  names its message;
- the ``send`` function (functions-framework app, in this process) accepts 10 broadcasts of 1,000
  recipients with ``max_attempts: 10`` (so transient faults alone do not kill a message);
- one ``koinonia consume --forever`` process at a time (the local stack's worker; restarted when it
  is killed or exits) and one retry-scheduler process (``run_scheduler(get_runtime(), 600)``, as
  ``functions/retry-scheduler`` runs it; restarted when it exits, as the next cloud tick would);
- ``ACCOUNT_SMS_PER_SECOND=250`` paces the drain over about a minute so the faults land at spread-out
  points; everything else is the default configuration (concurrency 200, lease 30 s, 4 h deadline).

Faults, each once the carrier has accepted a share of the messages and at least 6 s after the last:
consumer kill #1 (15%), Redis restart (35%), consumer kill #2 (50%), PostgreSQL restart (65%),
consumer kill #3 (80%). A consumer or scheduler that exits by itself is a fault event too.

Figures (at the end: all settled, or the deadline): accepted, delivered (``sent``: the carrier took
it), dead (``failed``, by dead-letter reason), expired, suppressed, lost, duplicate carrier requests
and the crash window each came from. Written to the ``## Chaos run`` section of bench/RESULTS.md and
under ``chaos`` in bench/results.json (other keys kept).
"""

from __future__ import annotations

import argparse
import ast
import base64
import contextlib
import datetime as dt
import http.client
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _results import RESULTS, RESULTS_JSON, update_json, write_section  # noqa: E402  (bench/ is the script's folder)

from common.config import parse_database_url  # noqa: E402
from common.db.migrate import migrate  # noqa: E402
from common.db.pool import DatabaseUnavailable, Pool  # noqa: E402
from infra.embedded import PostgresProcess, RedisProcess  # noqa: E402
from tests.factories import make_church, numbers  # noqa: E402

SECTION = "## Chaos run"
COMMAND = "python bench/chaos.py"

FINAL = ("sent", "failed", "expired", "suppressed")
PENDING = ("scheduled", "queued", "retrying", "sending")
SANDBOX = {
    "rate_5xx": 0.20,
    "rate_429": 0.05,
    "rate_timeout": 0.02,
    "timeout_hold_s": 2.0,  # the carrier client's read timeout is 10 s (no setting): the hold must end first
    "latency_ms": 100.0,
    "jitter_ms": 100.0,
    "seed": 20261224,
}
ACCOUNT_RATE = 250
SENDER_RATE = 1_000
BROADCAST = 1_000
MAX_ATTEMPTS = 10
WEBHOOK_URL = "http://127.0.0.1:9/webhooks/telnyx"  # never called; makes each request name its message
TEXT = "Christmas Eve candlelight service at 5, 7 and 11 pm. All are welcome."
# (label, share of the messages the carrier has accepted) in order; at least MIN_GAP_S apart.
FAULTS = [
    ("consumer kill #1", 0.15),
    ("Redis restart", 0.35),
    ("consumer kill #2", 0.50),
    ("PostgreSQL restart", 0.65),
    ("consumer kill #3", 0.80),
]
MIN_GAP_S = 6.0
PROGRESS_EVERY_S = 5.0
POLL_S = 0.2
CARRIER_TIMEOUT = "carrier timeout after accept"
# A duplicate's first copy was accepted at most this long before the fault that lost its outcome
# (the consumer's lease: an unrecorded claim is retried after it, so its first copy is within it).
WINDOW_S = 35.0


def say(line: str = "") -> None:
    print(line, flush=True)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_ts(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def with_query(url: str, **params: str) -> str:
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    query.update(params)
    return urlunsplit(parts._replace(query="&".join(f"{k}={v}" for k, v in query.items())))


def code_state() -> str:
    """The product code measured: HEAD, and which of its tracked files have uncommitted changes."""

    def git(*args: str) -> str:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        return ""

    head = git("rev-parse", "--short", "HEAD").strip() or "unknown"
    status = git("status", "--porcelain", "--", "common", "functions", "infra", "pyproject.toml").splitlines()
    changed = [line[3:] for line in status if line.strip() and not line.startswith("??")]
    return f"git {head}" + (f" + uncommitted changes to {', '.join(changed)}" if changed else " (tracked files clean)")


# Processes --------------------------------------------------------------------------------------


def stop_child(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM) -> None:
    """Stop a child we started in its own session (its process group is its id); then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=15)


class SandboxProcess:
    def __init__(self) -> None:
        cmd = [sys.executable, "-m", "infra.telnyx_sandbox", "--host", "127.0.0.1", "--port", "0", "--no-webhooks"]
        cmd += ["--rate-5xx", str(SANDBOX["rate_5xx"]), "--rate-429", str(SANDBOX["rate_429"])]
        cmd += ["--rate-timeout", str(SANDBOX["rate_timeout"]), "--timeout-hold-s", str(SANDBOX["timeout_hold_s"])]
        cmd += ["--latency-ms", str(SANDBOX["latency_ms"]), "--jitter-ms", str(SANDBOX["jitter_ms"])]
        cmd += ["--seed", str(SANDBOX["seed"])]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        match = re.fullmatch(r"telnyx-sandbox listening on (http://([\d.]+):(\d+))", line)
        if not match:
            stop_child(self.proc)
            raise SystemExit(f"sandbox did not start: {line!r}")
        self.url, self.host, self.port = match.group(1), match.group(2), int(match.group(3))

    def ledger(self, entries: bool = False) -> dict[str, Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request("GET", "/_sandbox/ledger" + ("?entries=1" if entries else ""))
            resp = conn.getresponse()
            data = json.loads(resp.read())
            if resp.status != 200:
                raise SystemExit(f"sandbox ledger -> {resp.status}")
            return data  # type: ignore[no-any-return]
        finally:
            conn.close()

    def accepted(self) -> int:
        return int(self.ledger()["accepted"])

    def stop(self) -> None:
        stop_child(self.proc, signal.SIGINT)


class Supervised:
    """One child process at a time under a name; restarted by ``ensure`` when it is gone."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.logs = logs
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.exits: list[tuple[int, int]] = []  # (generation, exit code) of exits we did not cause
        self.killed = 0

    def log(self, generation: int) -> Path:
        return self.logs / f"{self.name}-{generation}.log"

    def start(self) -> None:
        self.generation += 1
        with self.log(self.generation).open("wb") as sink:  # the child holds its own descriptor
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=self.env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
            )

    def exited(self) -> int | None:
        """The exit code if the current process ended by itself (recorded once), else None."""
        if self.proc is None or self.proc.poll() is None:
            return None
        code = self.proc.returncode
        self.exits.append((self.generation, code))
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: a crash, nothing flushed. (If it had just exited by itself, that exit is recorded
        and a fresh process is the one killed, so every kill hits a live consumer.)"""
        if self.proc is None or self.exited() is not None:
            self.start()
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=15)
        self.killed += 1
        self.proc = None

    def stop(self) -> None:
        stop_child(self.proc)
        self.proc = None

    def outputs(self) -> list[str]:
        return [self.log(g).read_text(errors="replace") for g in range(1, self.generation + 1) if self.log(g).exists()]


def last_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]+(Error|Exception|Unavailable)\b", line):
            return line.strip()[:200]
    return lines[-1].strip()[:200] if lines else "(no output)"


# The run ----------------------------------------------------------------------------------------


@dataclass
class Event:
    label: str
    start: dt.datetime
    end: dt.datetime
    detail: str = ""
    accepted: int = 0  # carrier ledger when it began
    stranded: int | None = None  # consumer kills: rows claimed and unrecorded right after the kill


@dataclass
class Run:
    messages: int
    deadline_s: float
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="koinonia-chaos-")))
    events: list[Event] = field(default_factory=list)
    pg: PostgresProcess | None = None
    redis: RedisProcess | None = None
    sandbox: SandboxProcess | None = None
    pool: Pool | None = None
    consumer: Supervised | None = None
    scheduler: Supervised | None = None
    ids: set[str] = field(default_factory=set)
    started: float = 0.0
    wall_start: dt.datetime = field(default_factory=now)

    # Setup -------------------------------------------------------------------------------------

    def setup(self) -> dict[str, str]:
        say(f"chaos: services in {self.tmp}")
        self.pg = PostgresProcess(self.tmp / "pg").start()
        admin = Pool(parse_database_url(self.pg.url))
        name = f"kchaos_{uuid.uuid4().hex[:10]}"
        admin.run(f'CREATE DATABASE "{name}"')
        self.pg_version = str(admin.run("SHOW server_version")[0][0])
        admin.close()
        db_url = with_database(self.pg.url, name)
        self.pool = Pool(parse_database_url(with_query(db_url, connection_limit="4", pool_timeout="5")))
        migrate(self.pool, progress=lambda _line: None)
        say(f"  PostgreSQL {self.pg_version} (pgserver, unix socket), database {name} migrated")
        self.redis = RedisProcess(self.tmp / "redis", persist=False).start()
        say(f"  Redis on {self.redis.url} (no persistence)")
        self.sandbox = SandboxProcess()
        say(f"  sandbox on {self.sandbox.url}: {SANDBOX}")
        env = {
            **os.environ,
            "DATABASE_URL": with_query(db_url, connection_limit="10", pool_timeout="30"),
            "REDIS_URL": self.redis.url,
            "REDIS_KEY_PREFIX": "kchaos",
            "ENABLE_QUEUES": "true",
            "ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
            "LOOKUP_KEY": base64.b64encode(os.urandom(32)).decode(),
            "TELNYX_API_KEY": "KEY_sandbox",
            "TELNYX_BASE_URL": f"{self.sandbox.url}/v2",
            "TELNYX_WEBHOOK_URL": WEBHOOK_URL,
            "ACCOUNT_SMS_PER_SECOND": str(ACCOUNT_RATE),
            # --messages may exceed the default 50,000 bulk recipients a church may send a day (issue #6);
            # the church's plan comes from tests/factories.make_church (a large allowance).
            "CHURCH_BULK_RECIPIENTS_LIMIT": "1000000000",
            "APP_ENV": "development",
            "LOG_LEVEL": "WARNING",
            "PYTHONUNBUFFERED": "1",
        }
        for key in ("WAKE_QUEUE_URL", "CONSUMER_CONCURRENCY", "CONSUMER_BATCH", "LEASE_S", "INLINE_BUDGET_S"):
            env.pop(key, None)
        logs = self.tmp / "logs"
        logs.mkdir()
        self.consumer = Supervised("consumer", [sys.executable, "-m", "common.cli", "consume", "--forever"], env, logs)
        scheduler_code = (
            "from common.scheduler import run_scheduler; from common.runtime import get_runtime; "
            "print('scheduler:', run_scheduler(get_runtime(), 600).as_dict(), flush=True)"
        )
        self.scheduler = Supervised("scheduler", [sys.executable, "-c", scheduler_code], env, logs)
        return env

    def accept(self, env: dict[str, str]) -> None:
        """10 broadcasts of 1,000 through the send function (functions-framework app, this process)."""
        os.environ.update(env)  # the send function reads its settings from the environment
        from functions_framework import create_app

        assert self.pool is not None
        tenant = make_church(self.pool, "Chaos Church", sms_per_second=SENDER_RATE)
        client = create_app("send", str(ROOT / "functions" / "send" / "main.py")).test_client()
        to_all = numbers(self.messages, area="415")
        started = time.monotonic()
        for start in range(0, self.messages, BROADCAST):
            to = to_all[start : start + BROADCAST]
            body = {"channel": "sms", "to": to, "text": TEXT, "max_attempts": MAX_ATTEMPTS}
            response = client.post("/messages", json=body, headers=tenant.auth)
            data = response.get_json()
            if response.status_code != 202 or data["mode"] != "queued" or data["counts"]["accepted"] != len(to):
                raise SystemExit(f"POST /messages -> {response.status_code}: {str(data)[:400]}")
            self.ids.update(mid for (mid,) in self.pool.run(
                "SELECT id::text FROM messages WHERE broadcast_id = CAST(:b AS uuid)", b=data["broadcast_id"]))  # fmt: skip
        say(f"  accepted {len(self.ids):,} messages in {time.monotonic() - started:.1f}s "
            f"({self.messages // BROADCAST} POST /messages of {BROADCAST:,}, max_attempts {MAX_ATTEMPTS})")  # fmt: skip

    # Observation --------------------------------------------------------------------------------

    def counts(self) -> dict[str, int] | None:
        assert self.pool is not None
        try:
            return {s: int(n) for s, n in self.pool.run("SELECT status, count(*) FROM messages GROUP BY status")}
        except Exception:  # PostgreSQL restarting (pool or driver error): ask again on the next poll
            return None

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    # Faults -------------------------------------------------------------------------------------

    def fault(self, label: str) -> None:
        assert self.consumer and self.redis and self.pg and self.sandbox
        self.supervise()  # an exit by itself just before is recorded as its own event first
        accepted = self.sandbox.accepted()
        start = now()
        stranded = None
        detail = ""
        if label.startswith("consumer kill"):
            self.consumer.kill()
            end = now()
            for _ in range(50):  # PostgreSQL may be briefly away; bounded
                try:
                    assert self.pool is not None
                    stranded = int(self.pool.run("SELECT count(*) FROM messages WHERE status = 'sending'")[0][0])
                    break
                except (DatabaseUnavailable, OSError):
                    time.sleep(0.1)
            detail = f"SIGKILL consumer generation {self.consumer.generation}; {stranded} rows left 'sending'"
            self.consumer.start()
        elif label == "Redis restart":
            self.redis.kill()
            self.redis.start()
            end = now()
            detail = "SIGKILL redis-server, started again empty on the same port"
        elif label == "PostgreSQL restart":
            self.pg.restart()
            end = now()
            detail = "pg_ctl stop -m fast, then start"
        else:
            raise AssertionError(label)
        self.events.append(Event(label, start, end, detail, accepted, stranded))
        say(f"[{self.elapsed():6.1f}s] FAULT {label}: {detail} ({(end - start).total_seconds():.2f}s; "
            f"carrier had accepted {accepted:,})")  # fmt: skip

    def supervise(self) -> None:
        assert self.consumer and self.scheduler
        for proc in (self.consumer, self.scheduler):
            code = proc.exited()
            if code is not None:
                at = now()
                reason = last_error(proc.outputs()[-1])
                label = f"{proc.name} exit (code {code})"
                self.events.append(Event(label, at, at, reason, self.sandbox.accepted() if self.sandbox else 0))
                say(f"[{self.elapsed():6.1f}s] {proc.name} generation {proc.generation} exited with {code}: {reason}; "
                    "restarting it")  # fmt: skip
                proc.start()

    # Main loop ----------------------------------------------------------------------------------

    def drive(self) -> dict[str, int]:
        assert self.consumer and self.scheduler and self.sandbox
        self.started = time.monotonic()
        self.wall_start = now()
        deadline = self.started + self.deadline_s
        self.consumer.start()
        self.scheduler.start()
        say(f"[{self.elapsed():6.1f}s] consumer (koinonia consume --forever) and retry-scheduler started")
        pending_faults = list(FAULTS)
        last_fault = -MIN_GAP_S
        last_progress = -PROGRESS_EVERY_S
        counts: dict[str, int] = {}
        while time.monotonic() < deadline:
            self.supervise()
            accepted = self.sandbox.accepted()
            if pending_faults and accepted >= pending_faults[0][1] * self.messages and self.elapsed() - last_fault >= MIN_GAP_S:
                self.fault(pending_faults.pop(0)[0])
                last_fault = self.elapsed()
            counts = self.counts() or counts
            settled = sum(counts.get(s, 0) for s in FINAL)
            if self.elapsed() - last_progress >= PROGRESS_EVERY_S:
                last_progress = self.elapsed()
                ledger = self.sandbox.ledger()
                say(f"[{self.elapsed():6.1f}s] carrier: {ledger['attempts']:,} requests, {ledger['accepted']:,} accepted, "
                    f"{ledger['duplicates']} duplicate(s); PostgreSQL: {dict(sorted(counts.items()))}")  # fmt: skip
            if not pending_faults and settled == self.messages:
                say(f"[{self.elapsed():6.1f}s] all {self.messages:,} settled")
                return counts
            time.sleep(POLL_S)  # polling the ledger and PostgreSQL; there is nothing to wait on
        say(f"[{self.elapsed():6.1f}s] DEADLINE ({self.deadline_s:g}s) reached; faults not yet injected: "
            f"{[f for f, _ in pending_faults]}")  # fmt: skip
        return counts

    def teardown(self) -> None:
        for proc in (self.consumer, self.scheduler):
            if proc is not None:
                proc.stop()
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.pool is not None:
            self.pool.close()
        if self.redis is not None:
            self.redis.stop()
        if self.pg is not None:
            self.pg.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


# Figures ----------------------------------------------------------------------------------------


def consumer_reports(outputs: list[str]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for text in outputs:
        for line in text.splitlines():
            if line.startswith("consume: "):
                for key, value in ast.literal_eval(line.removeprefix("consume: ")).items():
                    if key != "seconds":
                        total[key] += int(value)
    return dict(total)


def warnings_by_message(outputs: list[str]) -> dict[str, int]:
    found: Counter[str] = Counter()
    for text in outputs:
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    record = json.loads(line)
                    if record.get("level") in ("WARNING", "ERROR"):
                        found[record["msg"]] += 1
    return dict(found)


def attribute(entries: list[dict[str, Any]], events: list[Event]) -> tuple[list[dict[str, Any]], dict[str, int], dict[str, int]]:
    """Each duplicate (an accepted request whose message the carrier had accepted before), with:

    - ``window``: the fault that lost the previous copy's outcome: the previous copy itself when it was a
      timeout/drop after accept; otherwise the first fault event that ended at or after the previous copy
      was accepted (and within WINDOW_S of it); ``unattributed`` if none;
    - ``preceding``: the nearest fault event that began before the duplicate itself (the simple rule).
    """
    faults = sorted(events, key=lambda e: e.start)
    by_message: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for entry in entries:
        by_message[entry["webhook_url"] or entry["to"]].append(entry)
    duplicates: list[dict[str, Any]] = []
    for key, copies in by_message.items():
        for previous, entry in itertools.pairwise(copies):
            prev_at, dup_at = parse_ts(previous["received_at"]), parse_ts(entry["received_at"])
            if previous["outcome"] in ("timeout_after_accept", "drop_after_accept"):
                window = CARRIER_TIMEOUT
            else:
                after = [e for e in faults if e.end >= prev_at and (e.start - prev_at).total_seconds() <= WINDOW_S]
                window = after[0].label if after else "unattributed"
            before = [e for e in faults if e.start <= dup_at]
            duplicates.append({
                "message": key.rsplit("mid=", 1)[-1],
                "first_at": previous["received_at"],
                "duplicate_at": entry["received_at"],
                "window": window,
                "preceding": before[-1].label if before else "none",
            })  # fmt: skip
    return (
        duplicates,
        dict(Counter(d["window"] for d in duplicates)),
        dict(Counter(d["preceding"] for d in duplicates)),
    )


def figures(run: Run, counts: dict[str, int]) -> dict[str, Any]:
    assert run.pool is not None and run.sandbox is not None and run.consumer and run.scheduler
    pool = run.pool
    rows = {mid: (status, attempts) for mid, status, attempts in pool.run("SELECT id::text, status, attempts FROM messages")}
    dead_reasons = {reason: int(n) for reason, n in pool.run(
        "SELECT d.reason, count(*) FROM dead_letters d JOIN messages m ON m.id = d.message_id"
        " WHERE m.status = 'failed' GROUP BY d.reason ORDER BY 2 DESC")}  # fmt: skip
    expired_codes = {code or "none": int(n) for code, n in pool.run(
        "SELECT last_error_code, count(*) FROM messages WHERE status = 'expired' GROUP BY 1 ORDER BY 2 DESC")}  # fmt: skip
    attempts_hist = {int(a): int(n) for a, n in pool.run("SELECT attempts, count(*) FROM messages GROUP BY 1 ORDER BY 1")}
    ledger = run.sandbox.ledger(entries=True)
    entries = ledger.pop("entries")
    carrier_ids = {e["webhook_url"].rsplit("mid=", 1)[-1] for e in entries if e["webhook_url"]}
    missing_rows = sorted(run.ids - set(rows))
    status_of = {mid: rows[mid][0] for mid in run.ids if mid in rows}
    unsettled = sorted(mid for mid, s in status_of.items() if s not in FINAL)
    unknown = sorted(mid for mid, s in status_of.items() if s not in FINAL and s not in PENDING)
    phantom = sorted(mid for mid, s in status_of.items() if s == "sent" and mid not in carrier_ids)
    at_carrier_not_sent = sorted(mid for mid, s in status_of.items() if s != "sent" and mid in carrier_ids)
    duplicates, by_window, by_preceding = attribute(entries, run.events)
    dup_ids = {d["message"] for d in duplicates}
    dup_attempts = Counter(rows[m][1] for m in dup_ids if m in rows)
    # Lost: accepted but gone from PostgreSQL, in no known state, or recorded 'sent' though the carrier
    # never saw it; and (at the deadline) anything still pending: accepted, never delivered, not dead or
    # expired. All must be 0.
    lost = len(missing_rows) + len(unknown) + len(phantom) + len(unsettled)
    statuses = Counter(status_of.values())
    return {
        "messages": run.messages,
        "accepted": len(run.ids),
        "delivered": statuses.get("sent", 0),
        "dead": statuses.get("failed", 0),
        "dead_reasons": dead_reasons,
        "expired": statuses.get("expired", 0),
        "expired_codes": expired_codes,
        "suppressed": statuses.get("suppressed", 0),
        "lost": lost,
        "lost_detail": {
            "missing_rows": len(missing_rows),
            "unknown_status": len(unknown),
            "sent_but_never_at_carrier": len(phantom),
            "unsettled_at_end": len(unsettled),
        },
        "at_carrier_but_not_sent_in_pg": len(at_carrier_not_sent),
        "duplicates": len(duplicates),
        "duplicates_by_window": by_window,
        "duplicates_by_preceding_event": by_preceding,
        "duplicate_messages_attempts": dict(sorted(dup_attempts.items())),
        "carrier_requests": ledger["attempts"],
        "carrier_accepted": ledger["accepted"],
        "carrier_unique": ledger["unique"],
        "carrier_by_status": ledger["by_status"],
        "carrier_unanswered": ledger["unanswered"],
        "attempts_histogram": attempts_hist,
        "events": [
            {
                "label": e.label,
                "at_s": round((e.start - run.wall_start).total_seconds(), 1),
                "took_s": round((e.end - e.start).total_seconds(), 2),
                "carrier_accepted_before": e.accepted,
                "stranded": e.stranded,
                "detail": e.detail,
            }
            for e in run.events
        ],
        "consumer_generations": run.consumer.generation,
        "consumer_exits": [{"generation": g, "code": c} for g, c in run.consumer.exits],
        "scheduler_generations": run.scheduler.generation,
        "scheduler_exits": [{"generation": g, "code": c} for g, c in run.scheduler.exits],
        "consumer_reports_total": consumer_reports(run.consumer.outputs()),
        "consumer_warnings": warnings_by_message(run.consumer.outputs()),
        "scheduler_warnings": warnings_by_message(run.scheduler.outputs()),
        "seconds": round(run.elapsed(), 1),
        "all_settled": not unsettled,
        "final_statuses": dict(sorted(counts.items())),
        "duplicate_list": duplicates[:50],
    }


# Report -----------------------------------------------------------------------------------------


def render(f: dict[str, Any], settings_line: str, code: str) -> str:
    def kv(d: dict[str, Any]) -> str:
        return ", ".join(f"{k}: {v}" for k, v in d.items()) if d else "none"

    lines = [
        SECTION,
        "",
        f"Date: {now():%Y-%m-%d %H:%M} UTC  ",
        f"Command: `{COMMAND}`  ",
        f"Code measured: {code}  ",
        f"Settings: {settings_line}",
        "",
        "| figure | value |",
        "|---|---:|",
        f"| accepted (202, rows in PostgreSQL) | {f['accepted']:,} |",
        f"| delivered (`sent`: the carrier took it) | {f['delivered']:,} |",
        f"| dead (`failed`) | {f['dead']:,} |",
        f"| expired | {f['expired']:,} |",
        f"| suppressed | {f['suppressed']:,} |",
        f"| **lost** | **{f['lost']}** |",
        f"| duplicate carrier requests (ledger) | **{f['duplicates']}** |",
        f"| carrier requests / accepted / unique | {f['carrier_requests']:,} / {f['carrier_accepted']:,} / "
        f"{f['carrier_unique']:,} |",
        f"| run time | {f['seconds']:.0f} s (all settled: {'yes' if f['all_settled'] else 'NO'}) |",
        "",
        f"Dead letters by reason: {kv(f['dead_reasons'])}. Expired by last error: {kv(f['expired_codes'])}.  ",
        f"Lost = accepted ids missing from PostgreSQL ({f['lost_detail']['missing_rows']}) + rows in no known "
        f"status ({f['lost_detail']['unknown_status']}) + rows `sent` the carrier never saw "
        f"({f['lost_detail']['sent_but_never_at_carrier']}) + rows still pending (never delivered, not dead or "
        f"expired) when the run ended ({f['lost_detail']['unsettled_at_end']}). Rows the carrier accepted that "
        f"PostgreSQL does not record as sent: {f['at_carrier_but_not_sent_in_pg']}.  ",
        f"Carrier answers: {kv(f['carrier_by_status'])}; unanswered: {kv(f['carrier_unanswered'])} (the sandbox's "
        "`timeout` holds the request, then closes without accepting it: not a duplicate source; only "
        "`timeout_after_accept` / `drop_after_accept`, not enabled here, would be).  ",
        f"Attempts per message: {kv(f['attempts_histogram'])}.",
        "",
        "Fault events (time from the consumer's start):",
        "",
        "| event | at | took | carrier accepted before "
        "| rows `sending` just after (earlier kills' unreclaimed included) | detail |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for e in f["events"]:
        stranded = "" if e["stranded"] is None else str(e["stranded"])
        lines.append(f"| {e['label']} | {e['at_s']:.1f} s | {e['took_s']:.2f} s | {e['carrier_accepted_before']:,} | "
                     f"{stranded} | {e['detail']} |")  # fmt: skip
    lines += [
        "",
        f"Duplicates by crash window (the fault that lost the first copy's outcome: the first fault event ending "
        f"at or after the first copy reached the carrier, within {WINDOW_S:g} s; a timeout/drop after accept is its "
        f"own window): {kv(f['duplicates_by_window'])}.  ",
        f"By the nearest fault event before the duplicate itself: {kv(f['duplicates_by_preceding_event'])}.  ",
        f"Attempts recorded on the duplicated messages: {kv(f['duplicate_messages_attempts'])}.  ",
        f"Consumer processes: {f['consumer_generations']} (exits not caused by a kill: "
        f"{f['consumer_exits'] or 'none'}); scheduler processes: {f['scheduler_generations']} (exits: "
        f"{f['scheduler_exits'] or 'none'}).  ",
        f"Consumer rounds that ended normally (killed ones print nothing): {kv(f['consumer_reports_total'])}.  ",
        f"Consumer warnings: {kv(f['consumer_warnings'])}.  ",
        f"Scheduler warnings: {kv(f['scheduler_warnings'])}.",
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so every ``finally`` stops what it started."""

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000, help="multiple of 1,000 (default 10,000)")
    parser.add_argument("--deadline-s", type=float, default=600.0, help="give up waiting after this (default 600)")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md / results.json")
    args = parser.parse_args()
    if args.messages <= 0 or args.messages % BROADCAST:
        parser.error("--messages must be a positive multiple of 1,000")
    write = not args.no_write and args.messages == 10_000
    run = Run(args.messages, args.deadline_s)
    settings_line = (
        f"{args.messages:,} messages (10 x 1,000 per POST, max_attempts {MAX_ATTEMPTS}); sandbox rate_5xx "
        f"{SANDBOX['rate_5xx']}, rate_429 {SANDBOX['rate_429']} (retry-after 1 s), rate_timeout "
        f"{SANDBOX['rate_timeout']} (hold {SANDBOX['timeout_hold_s']:g} s), latency {SANDBOX['latency_ms']:g} ms + "
        f"jitter up to {SANDBOX['jitter_ms']:g} ms, seed {SANDBOX['seed']}; `ACCOUNT_SMS_PER_SECOND={ACCOUNT_RATE}`, "
        f"sender {SENDER_RATE}/s; consumer `koinonia consume --forever` (concurrency 200, batch 100, lease 30 s: "
        "defaults), retry-scheduler `run_scheduler(get_runtime(), 600)`; private PostgreSQL (pgserver) and Redis "
        "(no persistence); all loopback."
    )
    code = code_state()
    say(f"chaos run: {settings_line}")
    say(f"code measured: {code}")
    with terminate_as_interrupt():
        try:
            env = run.setup()
            run.accept(env)
            counts = run.drive()
            summary = figures(run, counts)
        finally:
            say("chaos: stopping everything it started")
            run.teardown()
    section = render(summary, settings_line, code)
    say()
    say(section)
    if write:
        write_section(SECTION, section)
        update_json({"chaos": {k: v for k, v in summary.items() if k != "duplicate_list"} | {
            "date": f"{now():%Y-%m-%d %H:%M} UTC", "command": COMMAND, "settings": settings_line, "code": code}})  # fmt: skip
        say(f"wrote {RESULTS.relative_to(ROOT)} ({SECTION}) and {RESULTS_JSON.relative_to(ROOT)} (chaos)")
    return 0 if summary["lost"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
