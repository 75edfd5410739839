"""Telnyx webhooks end to end: ``python bench/webhooks.py [--quick] [--write]``.

Measures, on this machine, over loopback only, ``POST /webhooks/telnyx`` through functions-framework as
deployed (a subprocess: ``functions-framework --target=webhooks``, gunicorn gthread, WORKERS/THREADS as
in template.yaml), driven by C=16 client threads, each with one keep-alive ``http.client`` connection and
its own ordered list of pre-signed requests (Ed25519 over ``f"{ts}|"`` + body, signed before the clock
starts, so the client's crypto is not measured):

1. Receipts: N messages already ``sent`` (bulk-inserted, each with a provider id); for each one
   ``message.sent`` then ``message.finalized`` (delivered), its two events on the same client thread in
   that order (the finalized one a few requests behind), 2N events. Events/s over the run's wall clock,
   per-request latency p50/p95/p99/max. Checked in PostgreSQL: every message ``delivered``, its receipt
   applied, ``webhook_events`` grew by exactly the events posted, every answer 200 ``applied``.
2. Receipts with faults: as 1, but 30% of the messages get ``finalized`` before ``sent``, and 20% of the
   events are posted twice (same body, same ``data.id``; the copy on a random thread at a random place).
   Checked: all ``delivered``, ``webhook_events`` grew by the distinct events, every duplicated event
   answered once ``applied`` and otherwise ``duplicate``.
3. Inbound: members' texts (``message.received``) to the church's number, 10 per member, each member's
   texts in order on one thread; 5% of the texts are keywords: a quarter of the members send ``STOP``
   (4th text) then ``START`` (8th text), without the carrier's autoresponse, so the function opts them out
   and in and queues a confirmation each time. Checked: one conversation per member, every text threaded,
   opt-out events and confirmations as expected, nobody left opted out, nothing flagged.

Also measured: CPU of the function, PostgreSQL (our database's backends), Redis and this driver per event
(psutil), and the statements one event costs, counted in this process by running the product's handler on
a few events with ``pg8000.native.Connection.run`` wrapped (pg_stat_statements is not loaded on this
machine's PostgreSQL, and loading it needs a server restart).

Services: a fresh database on the machine's PostgreSQL (or an embedded one), migrated; Redis under a unique
key prefix (bench/send_pipeline.py's ``Services``). Everything started or created is stopped or dropped at
the end (also on Ctrl-C). Every loop is bounded by a count and a wall-clock deadline. Each measured run
first waits for a quiet machine, briefly (the whole bench stays near 5 minutes): a run that other work
disturbed anyway is marked. Figures (medians of 3 runs) go to the ``## Webhooks`` section of
bench/RESULTS.md and the ``webhooks`` key of bench/results.json; ``--quick`` (one small run of each)
writes nothing unless ``--write`` is given.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import http.client
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import pg8000.native  # noqa: E402
import psutil  # noqa: E402
import send_pipeline as sp  # noqa: E402
from _results import RESULTS, RESULTS_JSON, update_json, write_section  # noqa: E402  (bench/ is the script's folder)

from common.config import Settings, get_settings  # noqa: E402
from common.ids import uuid7  # noqa: E402
from common.privacy import crypto  # noqa: E402
from common.webhooks import handler as webhook_handler  # noqa: E402
from tests.factories import make_church, numbers  # noqa: E402
from tests.webhook_signing import Signer, envelope, inbound_payload, outbound_payload  # noqa: E402

SECTION = "## Webhooks"
JSON_KEY = "webhooks"
COMMAND = "python bench/webhooks.py"
PATH = "/webhooks/telnyx"

SERVER_WORKERS = 1  # template.yaml: WORKERS "1"
SERVER_THREADS = 4  # template.yaml: THREADS "4"
SERVER_CONNECTIONS = 4  # one PostgreSQL connection per gthread (as bench/send_pipeline.py)
CLIENTS = 16
TELNYX_DEADLINE_MS = 2000.0  # Telnyx wants a 2xx within 2 s
CHURCH_NUMBER = "+13125550100"
FINALIZED_LAG = 8  # a message's finalized event follows its sent event this many of the thread's requests later
DUPLICATE_SHARE = 0.20
REORDERED_SHARE = 0.30
TEXTS_PER_MEMBER = 10
KEYWORD_SHARE = 0.05  # of the texts: STOP + START pairs
PLAIN_TEXTS = [
    "See you Sunday!",
    "Can I bring a friend to the potluck?",
    "Amen",
    "Thank you pastor",
    "What time does choir practice start?",
    "Praying for your family",
    "Is there parking behind the hall?",
    "Count me in for the youth trip",
    "Running late, save me a seat",
    "Happy birthday to Sister Ruth",
]
RUN_DEADLINE_S = 150.0  # one measured run, from the first request to the last answer
HTTP_TIMEOUT_S = 30.0
QUIET_WAIT_S = 8.0  # per run; then measure anyway and mark the run if other work took > 10% of the CPU

say = sp.say
percentile = sp.percentile
median = sp.median


# Function under test ----------------------------------------------------------------------------


# Requests ---------------------------------------------------------------------------------------


@dataclass
class Req:
    body: bytes
    event_id: str
    kind: str  # sent | finalized | received
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Answer:
    event_id: str
    kind: str
    status: int
    result: str
    ms: float


def sign_all(signer: Signer, lanes: list[list[Req]]) -> float:
    """Sign every request (one timestamp for the run: well inside the 300 s tolerance); seconds taken."""
    started = time.perf_counter()
    stamp = int(time.time())
    for lane in lanes:
        for req in lane:
            if not req.headers:
                req.headers = signer.headers(req.body, timestamp=stamp)
    return time.perf_counter() - started


def receipt_event(kind: str, mid: str, pid: str, to: str) -> Req:
    event_id = str(uuid.uuid4())
    status = "sent" if kind == "sent" else "delivered"
    event_type = "message.sent" if kind == "sent" else "message.finalized"
    body = envelope(event_type, outbound_payload(pid, mid, status, to=to), event_id=event_id)
    return Req(body, event_id, kind)


def interleave(first: list[Req], second: list[Req], lag: int) -> list[Req]:
    """first[k] and second[k - lag] alternately: each message's second event ``lag`` slots behind."""
    out: list[Req] = []
    for k in range(len(first) + lag):
        if k < len(first):
            out.append(first[k])
        if 0 <= k - lag < len(second):
            out.append(second[k - lag])
    return out


@dataclass
class ReceiptPlan:
    lanes: list[list[Req]]
    messages: int
    distinct: int  # distinct event ids
    posted: int  # requests, duplicates included
    duplicated: set[str]  # event ids posted twice
    reordered: int  # messages whose finalized goes first


def receipt_plan(msgs: list[tuple[str, str, str]], clients: int, faults: bool, rng: random.Random) -> ReceiptPlan:
    reordered = set(rng.sample(range(len(msgs)), round(REORDERED_SHARE * len(msgs)))) if faults else set()
    firsts: list[list[Req]] = [[] for _ in range(clients)]
    seconds: list[list[Req]] = [[] for _ in range(clients)]
    for i, (mid, pid, to) in enumerate(msgs):
        sent, fin = receipt_event("sent", mid, pid, to), receipt_event("finalized", mid, pid, to)
        a, b = (fin, sent) if i in reordered else (sent, fin)
        firsts[i % clients].append(a)
        seconds[i % clients].append(b)
    lanes = [interleave(f, s, FINALIZED_LAG) for f, s in zip(firsts, seconds, strict=True)]
    distinct = sum(len(lane) for lane in lanes)
    duplicated: set[str] = set()
    if faults:
        everything = [req for lane in lanes for req in lane]
        copies = rng.sample(everything, round(DUPLICATE_SHARE * len(everything)))
        for req in copies:
            lane = lanes[rng.randrange(clients)]
            lane.insert(rng.randrange(len(lane) + 1), Req(req.body, req.event_id, req.kind))
            duplicated.add(req.event_id)
    posted = sum(len(lane) for lane in lanes)
    return ReceiptPlan(lanes, len(msgs), distinct, posted, duplicated, len(reordered))


@dataclass
class InboundPlan:
    lanes: list[list[Req]]
    members: list[str]
    keyword_members: list[str]
    texts: int


def inbound_plan(members: list[str], clients: int, rng: random.Random) -> InboundPlan:
    texts = len(members) * TEXTS_PER_MEMBER
    pairs = round(KEYWORD_SHARE * texts / 2)
    keyword_members = set(rng.sample(members, pairs))
    by_member: dict[str, list[Req]] = {}
    for member in members:
        words = [rng.choice(PLAIN_TEXTS) for _ in range(TEXTS_PER_MEMBER)]
        if member in keyword_members:
            words[3], words[7] = "STOP", "START"
        reqs = []
        for word in words:
            event_id = str(uuid.uuid4())
            reqs.append(Req(envelope("message.received", inbound_payload(member, CHURCH_NUMBER, word), event_id=event_id),
                            event_id, "received"))  # fmt: skip
        by_member[member] = reqs
    lanes: list[list[Req]] = [[] for _ in range(clients)]
    for j in range(TEXTS_PER_MEMBER):  # round-robin over a thread's members, each member's texts in order
        for i, member in enumerate(members):
            lanes[i % clients].append(by_member[member][j])
    return InboundPlan(lanes, members, sorted(keyword_members), texts)


# Driving ----------------------------------------------------------------------------------------


@dataclass
class Run:
    kind: str  # receipts | faults | inbound
    index: int
    posted: int
    wall_s: float
    answers: list[Answer]
    cpu: dict[str, float]
    busy_s: float
    checks: dict[str, Any]

    @property
    def ms(self) -> list[float]:
        return [a.ms for a in self.answers]

    @property
    def events_per_s(self) -> float:
        return self.posted / self.wall_s

    @property
    def other_s(self) -> float:
        return max(0.0, self.busy_s - sum(self.cpu.values()))

    @property
    def other_share(self) -> float:
        return self.other_s / (self.wall_s * (os.cpu_count() or 1))

    def p(self, q: float) -> float:
        return percentile(self.ms, q)


def drive(port: int, lanes: list[list[Req]], watch: sp.CpuWatch) -> tuple[float, list[Answer], list[str], float]:
    """Post every lane from its own thread; (wall seconds, answers, errors, busy CPU s of the machine)."""
    answers: list[list[Answer]] = [[] for _ in lanes]
    errors: list[str] = []
    spans: list[tuple[float, float]] = []
    barrier = threading.Barrier(len(lanes) + 1, timeout=30)
    deadline = [0.0]

    def client(n: int) -> None:
        conn = sp.Client(port)
        out = answers[n]
        try:
            conn.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT_S)
            conn.conn.connect()
            barrier.wait()
            started = time.perf_counter()
            for req in lanes[n]:
                if time.monotonic() > deadline[0]:
                    errors.append(f"client {n}: deadline passed after {len(out)} of {len(lanes[n])} requests")
                    break
                status, data, ms = conn.post(PATH, req.body, req.headers)
                result = ""
                with contextlib.suppress(ValueError, AttributeError):
                    result = str(json.loads(data).get("result", ""))
                if status != 200:
                    result = f"HTTP {status}: {data[:200]!r}"
                out.append(Answer(req.event_id, req.kind, status, result, ms))
            spans.append((started, time.perf_counter()))
        except Exception as exc:  # reported by the caller
            errors.append(f"client {n}: {exc!r}")
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.abort()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(n,), name=f"client-{n}", daemon=True) for n in range(len(lanes))]
    for t in threads:
        t.start()
    watch.start()
    busy0 = sp._busy(psutil.cpu_times())
    deadline[0] = time.monotonic() + RUN_DEADLINE_S
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        errors.append("a client could not connect")
    total = sum(len(lane) for lane in lanes)
    next_report = time.monotonic() + 5
    hard_stop = time.monotonic() + RUN_DEADLINE_S + HTTP_TIMEOUT_S + 5
    while any(t.is_alive() for t in threads) and time.monotonic() < hard_stop:
        watch.sample()
        time.sleep(0.05)
        if time.monotonic() >= next_report:
            done = sum(len(a) for a in answers)
            say(f"    {done:>6,} / {total:,} answered")
            next_report += 5
    busy = sp._busy(psutil.cpu_times()) - busy0
    if any(t.is_alive() for t in threads):
        errors.append("client threads still running at the hard stop")
    wall = (max(e for _, e in spans) - min(s for s, _ in spans)) if spans else float("nan")
    return wall, [a for lane in answers for a in lane], errors, busy


class Bench:
    def __init__(self, args: argparse.Namespace, services: sp.Services, logs: Path) -> None:
        self.args = args
        self.svc = services
        self.logs = logs
        self.server: sp.FunctionServer | None = None
        self.signer = Signer()
        self.rng = random.Random(20261224)
        self.member_start = 0
        ours = {name.upper() for name in Settings.model_fields} | {"WORKERS", "THREADS"}
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ours},
            "PYTHONUNBUFFERED": "1",
            "DATABASE_URL": services.database_url(SERVER_CONNECTIONS),
            "REDIS_URL": services.redis_url,
            "REDIS_KEY_PREFIX": services.prefix,
            "ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
            "LOOKUP_KEY": base64.b64encode(os.urandom(32)).decode(),
            "TELNYX_API_KEY": sp.SANDBOX_KEY,
            "TELNYX_BASE_URL": "http://127.0.0.1:9/v2",  # never called: webhooks send nothing themselves
            "TELNYX_PUBLIC_KEY": self.signer.public_key,
            "APP_ENV": "development",
            "WORKERS": str(SERVER_WORKERS),
            "THREADS": str(SERVER_THREADS),
        }
        # This process seals and hashes too (the messages it bulk-inserts, its checks by lookup hash, the
        # handler it runs in ``statements``): with the function's own settings, so the same keys.
        os.environ.update({k: v for k, v in self.env.items() if k.lower() in Settings.model_fields})
        get_settings.cache_clear()

    def start(self) -> None:
        self.church = make_church(self.svc.pool, "Webhooks bench church", sender=CHURCH_NUMBER, sms_per_second=1000)
        self.server = sp.FunctionServer(self.env, self.logs, "webhooks")
        say(f"  webhooks function at http://127.0.0.1:{self.server.port} (WORKERS={SERVER_WORKERS}, "
            f"THREADS={SERVER_THREADS}, connection_limit={SERVER_CONNECTIONS})")  # fmt: skip
        singles = {"webhooks function": (self.server.proc.pid, True)}
        if self.svc.redis_pid:
            singles["redis"] = (self.svc.redis_pid, False)
        self.watch = sp.CpuWatch(self.svc.pg_postmaster, self.svc.db_name, singles)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    # setup

    def sent_messages(self, n: int) -> list[tuple[str, str, str]]:
        """``n`` messages of one broadcast, already ``sent`` with a provider id: (id, provider id, to)."""
        broadcast = str(uuid7())
        ids = [str(uuid7()) for _ in range(n)]
        pids = [str(uuid.uuid4()) for _ in range(n)]
        tos = numbers(n, area="646", start=self.member_start)
        self.member_start += n
        ring = crypto.keyring()
        church = self.church.church_id
        sealed = [ring.seal(to, "address") for to in tos]
        with self.svc.pool.transaction() as conn:
            conn.run(
                "INSERT INTO broadcasts (id, church_id, channel, lane, recipient_count)"
                " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), 'sms', 'bulk', :n)",
                id=broadcast, c=self.church.church_id, n=n,
            )  # fmt: skip
            conn.run(
                "INSERT INTO messages (id, church_id, broadcast_id, channel, lane, to_enc, to_hash, from_address, body_enc,"
                " encoding, segments, status, attempts, deadline_at, provider_message_id, sent_at)"
                " SELECT t.id, CAST(:c AS uuid), CAST(:b AS uuid), 'sms', 'bulk', t.to_enc, t.to_hash, :f, :body, 'GSM-7',"
                " 1, 'sent', 1, now() + interval '1 day', t.pid, now()"
                " FROM unnest(CAST(:ids AS uuid[]), CAST(:tos AS bytea[]), CAST(:hashes AS bytea[]), CAST(:pids AS text[]))"
                " AS t(id, to_enc, to_hash, pid)",
                c=church, b=broadcast, f=CHURCH_NUMBER, body=ring.seal(sp.TEXT, "text"), ids=ids, tos=sealed,
                hashes=crypto.lookup_hashes(church, tos), pids=pids,
            )  # fmt: skip
        self.svc.pool.run("ANALYZE messages")
        return list(zip(ids, pids, tos, strict=True))

    def members(self, n: int) -> list[str]:
        out = numbers(n, area="415", start=self.member_start)
        self.member_start += n
        return out

    def events_count(self) -> int:
        return int(self.svc.pool.run("SELECT count(*) FROM webhook_events")[0][0])

    # phases

    def warm_up(self) -> None:
        assert self.server is not None
        msgs = self.sent_messages(100)
        plan = receipt_plan(msgs, 4, False, self.rng)
        inbound = inbound_plan(self.members(20), 4, self.rng)
        lanes = [a + b for a, b in zip(plan.lanes, inbound.lanes, strict=True)]
        sign_all(self.signer, lanes)
        wall, answers, errors, _ = drive(self.server.port, lanes, self.watch)
        self.watch.stop()
        bad = [a for a in answers if a.status != 200]
        if errors or bad or len(answers) != sum(len(lane) for lane in lanes):
            raise SystemExit(f"warm-up failed: {errors[:3]} {[(a.status, a.result) for a in bad[:3]]}")
        say(f"  warm-up: {len(answers)} events in {wall:.1f} s, all 200")

    def measure(self, kind: str, index: int, lanes: list[list[Req]]) -> tuple[float, list[Answer], list[str], float, dict]:
        """Sign, wait (bounded) for a quiet machine, then post every lane; CPU per component over the run."""
        assert self.server is not None
        signing = sign_all(self.signer, lanes)
        say(f"  {kind} #{index + 1}: {sum(len(lane) for lane in lanes):,} requests signed in {signing:.1f} s (not timed); "
            "waiting for a quiet machine")  # fmt: skip
        sp.wait_quiet(QUIET_WAIT_S)
        wall, answers, errors, busy = drive(self.server.port, lanes, self.watch)
        return wall, answers, errors, busy, {"cpu": self.watch.stop()}

    def receipts(self, index: int, faults: bool) -> Run:
        kind = "faults" if faults else "receipts"
        msgs = self.sent_messages(self.args.messages)
        plan = receipt_plan(msgs, CLIENTS, faults, self.rng)
        events_before = self.events_count()
        wall, answers, errors, busy, extra = self.measure(kind, index, plan.lanes)
        ids = [m for m, _, _ in msgs]
        rows = self.svc.pool.run(
            "SELECT m.status, count(*), count(*) FILTER (WHERE c.applied_at IS NOT NULL AND c.rank = 3),"
            " count(*) FILTER (WHERE m.finalized_at IS NOT NULL AND m.carrier IS NOT NULL)"
            " FROM messages m LEFT JOIN carrier_receipts c ON c.provider_message_id = m.provider_message_id"
            " WHERE m.id = ANY(CAST(:ids AS uuid[])) GROUP BY m.status",
            ids=ids,
        )
        statuses = {r[0]: int(r[1]) for r in rows}
        applied = sum(int(r[2]) for r in rows)
        complete = sum(int(r[3]) for r in rows)
        events_added = self.events_count() - events_before
        results = Counter(a.result for a in answers)
        by_event: dict[str, list[str]] = defaultdict(list)
        for a in answers:
            by_event[a.event_id].append(a.result)
        problems = list(errors)
        if len(answers) != plan.posted:
            problems.append(f"{len(answers)} answers for {plan.posted} requests")
        if statuses != {"delivered": plan.messages}:
            problems.append(f"messages by status {statuses}")
        if applied != plan.messages or complete != plan.messages:
            problems.append(f"receipts applied {applied}, messages with finalized_at and carrier {complete}")
        if events_added != plan.distinct:
            problems.append(f"webhook_events grew by {events_added}, expected {plan.distinct}")
        dup_ok = sum(1 for e in plan.duplicated if sorted(by_event[e]) == ["applied", "duplicate"])
        single_ok = sum(1 for e, r in by_event.items() if e not in plan.duplicated and r == ["applied"])
        if dup_ok != len(plan.duplicated) or single_ok != plan.distinct - len(plan.duplicated):
            problems.append(f"answers {dict(results)}: {dup_ok}/{len(plan.duplicated)} duplicated events answered "
                            f"applied+duplicate, {single_ok} single events applied")  # fmt: skip
        checks = {
            "messages": plan.messages, "delivered": statuses.get("delivered", 0), "receipts_applied": applied,
            "webhook_events_added": events_added, "events_distinct": plan.distinct, "posted": plan.posted,
            "answers": dict(results), "duplicated_events": len(plan.duplicated), "duplicates_answered_duplicate":
            results.get("duplicate", 0), "reordered_messages": plan.reordered,
        }  # fmt: skip
        return self.finish(kind, index, plan.posted, wall, answers, busy, extra, checks, problems)

    def inbound(self, index: int) -> Run:
        plan = inbound_plan(self.members(self.args.members), CLIENTS, self.rng)
        events_before = self.events_count()
        wall, answers, errors, busy, extra = self.measure("inbound", index, plan.lanes)
        church, members = self.church.church_id, plan.members
        hashes = crypto.lookup_hashes(church, members)
        conv = self.svc.pool.run(
            "SELECT count(DISTINCT c.id), count(m.id) FILTER (WHERE m.direction = 'inbound'),"
            " count(m.id) FILTER (WHERE m.direction = 'outbound'), count(DISTINCT c.id) FILTER (WHERE c.needs_review)"
            " FROM conversations c LEFT JOIN conversation_messages m ON m.conversation_id = c.id"
            " WHERE c.church_id = CAST(:c AS uuid) AND c.church_number = :n AND c.contact_hash = ANY(CAST(:a AS bytea[]))",
            c=church, n=CHURCH_NUMBER, a=hashes,
        )[0]  # fmt: skip
        actions = dict(self.svc.pool.run(
            "SELECT action, count(*) FROM opt_out_events WHERE church_id = CAST(:c AS uuid)"
            " AND address_hash = ANY(CAST(:a AS bytea[])) GROUP BY action", c=church, a=hashes,
        ))  # fmt: skip
        opted_out = int(self.svc.pool.run(
            "SELECT count(*) FROM opt_outs WHERE church_id = CAST(:c AS uuid) AND address_hash = ANY(CAST(:a AS bytea[]))",
            c=church, a=hashes,
        )[0][0])  # fmt: skip
        confirmations = int(self.svc.pool.run(
            "SELECT count(*) FROM messages WHERE church_id = CAST(:c AS uuid) AND purpose = 'compliance'"
            " AND to_hash = ANY(CAST(:a AS bytea[]))", c=church, a=hashes,
        )[0][0])  # fmt: skip
        events_added = self.events_count() - events_before
        results = Counter(a.result for a in answers)
        pairs = len(plan.keyword_members)
        conversations, inbound_rows, outbound_rows, flagged = (int(x) for x in conv)
        problems = list(errors)
        if len(answers) != plan.texts or results != Counter({"applied": plan.texts}):
            problems.append(f"answers {dict(results)} for {plan.texts} texts")
        if conversations != len(members) or inbound_rows != plan.texts:
            problems.append(f"{conversations} conversations (expected {len(members)}), {inbound_rows} inbound rows")
        if actions != ({"opt_out": pairs, "opt_in": pairs} if pairs else {}) or opted_out:
            problems.append(f"opt-out events {actions}, {opted_out} still opted out (expected {pairs} out and in)")
        if confirmations != 2 * pairs or outbound_rows != 2 * pairs or flagged:
            problems.append(f"{confirmations} confirmations, {outbound_rows} outbound thread rows, {flagged} flagged")
        if events_added != plan.texts:
            problems.append(f"webhook_events grew by {events_added}, expected {plan.texts}")
        checks = {
            "texts": plan.texts, "members": len(members), "conversations": conversations,
            "inbound_rows": inbound_rows, "opt_out_events": actions, "still_opted_out": opted_out,
            "confirmations": confirmations, "flagged": flagged, "webhook_events_added": events_added,
            "answers": dict(results),
        }  # fmt: skip
        return self.finish("inbound", index, plan.texts, wall, answers, busy, extra, checks, problems)

    def finish(self, kind: str, index: int, posted: int, wall: float, answers: list[Answer], busy: float,
               extra: dict, checks: dict[str, Any], problems: list[str]) -> Run:  # fmt: skip
        if problems:
            raise SystemExit(f"{kind} run #{index + 1} was not clean: " + "; ".join(problems[:6]))
        run = Run(kind, index, posted, wall, answers, extra["cpu"], busy, checks)
        say(
            f"    -> {run.events_per_s:,.0f} events/s ({posted:,} in {wall:.2f} s); latency p50 {run.p(0.5):.1f} ms, "
            f"p95 {run.p(0.95):.1f}, p99 {run.p(0.99):.1f}, max {max(run.ms):.1f} ms; CPU s: "
            + ", ".join(f"{k} {v:.1f}" for k, v in run.cpu.items())
            + f", other processes {run.other_s:.1f}"
        )
        say("    -> checked: " + ", ".join(f"{k} {v}" for k, v in checks.items()))
        return run

    # statements per event (in this process, not timed)

    def statements(self) -> dict[str, Any]:
        """Round trips to PostgreSQL one event costs, BEGIN/COMMIT included: the product's handler run here
        on one event of each kind, with pg8000's ``Connection.run`` wrapped to count."""
        rt = SimpleNamespace(settings=SimpleNamespace(telnyx_public_key=self.signer.public_key, enable_queues=False),
                             pool=self.svc.pool)  # fmt: skip
        counted: list[str] = []
        original = pg8000.native.Connection.run

        def counting(conn: Any, sql: str, *args: Any, **kwargs: Any) -> Any:
            counted.append(" ".join(sql.split())[:60])
            return original(conn, sql, *args, **kwargs)

        def one(body: bytes) -> tuple[int, str]:
            counted.clear()
            reply = webhook_handler.handle(rt, self.signer.headers(body), body)  # type: ignore[arg-type]
            return len(counted), str(reply.body.get("result"))

        (mid, pid, to), (mid2, pid2, to2) = self.sent_messages(2)
        member = self.members(1)[0]

        def text(words: str) -> bytes:
            return envelope("message.received", inbound_payload(member, CHURCH_NUMBER, words))

        sent = receipt_event("sent", mid, pid, to).body
        steps = [
            ("receipt: message.sent", sent),
            ("receipt: message.finalized (delivered)", receipt_event("finalized", mid, pid, to).body),
            ("receipt: duplicate (same data.id)", sent),
            ("receipt: finalized before sent", receipt_event("finalized", mid2, pid2, to2).body),
            ("receipt: late sent after finalized", receipt_event("sent", mid2, pid2, to2).body),
            ("inbound: first text (new conversation)", text("Amen")),
            ("inbound: next text", text("See you Sunday!")),
            ("inbound: STOP (opt-out + confirmation)", text("STOP")),
            ("inbound: START (opt-in + confirmation)", text("START")),
        ]
        out: dict[str, Any] = {}
        pg8000.native.Connection.run = counting
        try:
            for name, body in steps:
                n, result = one(body)
                out[name] = n
                say(f"    {name}: {n} statements ({result})")
        finally:
            pg8000.native.Connection.run = original
        return out


# Report -----------------------------------------------------------------------------------------


def figures(runs: list[Run]) -> dict[str, Any]:
    cpu_keys = list(runs[0].cpu)
    return {
        "events_per_run": runs[0].posted,
        "events_per_s": round(median([r.events_per_s for r in runs]), 1),
        "p50_ms": round(median([r.p(0.5) for r in runs]), 2),
        "p95_ms": round(median([r.p(0.95) for r in runs]), 2),
        "p99_ms": round(median([r.p(0.99) for r in runs]), 2),
        "max_ms": round(max(max(r.ms) for r in runs), 2),
        "p99_vs_2s": round(median([r.p(0.99) for r in runs]) / TELNYX_DEADLINE_MS, 4),
        "max_vs_2s": round(max(max(r.ms) for r in runs) / TELNYX_DEADLINE_MS, 4),
        "cpu_ms_per_event": {k: round(median([r.cpu.get(k, 0.0) / r.posted * 1000 for r in runs]), 3) for k in cpu_keys},
        "machine_busy": round(median([r.busy_s / (r.wall_s * (os.cpu_count() or 1)) for r in runs]), 3),
        "checks": runs[0].checks if len(runs) == 1 else [r.checks for r in runs],
        "per_run": {
            "events_per_s": [round(r.events_per_s, 1) for r in runs],
            "p50_ms": [round(r.p(0.5), 2) for r in runs],
            "p99_ms": [round(r.p(0.99), 2) for r in runs],
            "max_ms": [round(max(r.ms), 2) for r in runs],
            "other_work_share": [round(r.other_share, 3) for r in runs],
        },
    }


def summarise(runs: list[Run], statements: dict[str, Any], svc: sp.Services, args: argparse.Namespace) -> dict[str, Any]:
    by = {k: [r for r in runs if r.kind == k] for k in ("receipts", "faults", "inbound")}
    return {
        "receipts": figures(by["receipts"]),
        "receipts_with_faults": figures(by["faults"]),
        "inbound": figures(by["inbound"]),
        "statements_per_event": statements,
        "statements_method": "in-process count of pg8000 Connection.run calls by common.webhooks.handler.handle "
        "(pg_stat_statements is not loaded on this PostgreSQL)",
        "runs": len(by["receipts"]),
        "runs_disturbed_by_other_work": sum(1 for r in runs if r.other_share > sp.DISTURBED),
        "settings": {
            "workers": SERVER_WORKERS,
            "threads": SERVER_THREADS,
            "server_connection_limit": SERVER_CONNECTIONS,
            "clients": CLIENTS,
            "messages_per_receipt_run": args.messages,
            "members_per_inbound_run": args.members,
            "texts_per_member": TEXTS_PER_MEMBER,
            "duplicate_share": DUPLICATE_SHARE,
            "reordered_share": REORDERED_SHARE,
            "keyword_share": KEYWORD_SHARE,
            "log_level": "INFO (default; LOG_LEVEL not set, as template.yaml)",
        },
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "cpu": sp.cpu_model(),
            "os": f"{platform.system()} {platform.release()}",
            "postgresql": f"{svc.server_version} ({svc.pg_where})",
            "redis": f"{svc.redis_version} ({svc.redis_where})",
        },
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": COMMAND + (" --quick" if args.quick else ""),
    }


def render(s: dict[str, Any], runs: list[Run], loads: tuple[str, str]) -> str:
    m = s["machine"]

    def mark(r: Run) -> str:
        return "*" if r.other_share > sp.DISTURBED else ""

    def per_run(kind: str, fmt: str, get: Any) -> str:
        return " / ".join(format(get(r), fmt) + mark(r) for r in runs if r.kind == kind)

    rows = []
    for kind, key, title in (("receipts", "receipts", "Receipts"), ("faults", "receipts_with_faults", "Receipts + faults"),
                             ("inbound", "inbound", "Inbound texts")):  # fmt: skip
        f = s[key]
        rows += [
            (f"{title}: events/s", f"**{f['events_per_s']:,.0f}**", "", per_run(kind, ",.0f", lambda r: r.events_per_s)),
            (f"{title}: p50 / p95", f"{f['p50_ms']:.1f} / {f['p95_ms']:.1f} ms", "",
             per_run(kind, ".1f", lambda r: r.p(0.5)) + " ms (p50)"),
            (f"{title}: p99", f"**{f['p99_ms']:.1f} ms**", f"{f['p99_vs_2s']:.3f} of 2 s",
             per_run(kind, ".1f", lambda r: r.p(0.99)) + " ms"),
            (f"{title}: max (all runs)", f"{f['max_ms']:.1f} ms", f"{f['max_vs_2s']:.3f} of 2 s",
             per_run(kind, ".1f", lambda r: max(r.ms)) + " ms"),
            (f"{title}: CPU per event", ", ".join(f"{k} {v:.2f}" for k, v in f["cpu_ms_per_event"].items()
                                                  if k in ("webhooks function", "postgresql")) + " ms", "",
             ", ".join(f"{k} {v:.2f}" for k, v in f["cpu_ms_per_event"].items()
                       if k not in ("webhooks function", "postgresql")) + " ms"),
        ]  # fmt: skip
    rec, fau, inb = s["receipts"], s["receipts_with_faults"], s["inbound"]
    fc = fau["checks"][0] if isinstance(fau["checks"], list) else fau["checks"]
    ic = inb["checks"][0] if isinstance(inb["checks"], list) else inb["checks"]
    rc = rec["checks"][0] if isinstance(rec["checks"], list) else rec["checks"]
    stmts = s["statements_per_event"]
    lines = [
        SECTION,
        "",
        f"Date: {s['date']}  ",
        f"Command: `{s['command']}`  ",
        f"Machine: {sp.machine_line()}; PostgreSQL {m['postgresql']}; Redis {m['redis']}  ",
        f"Load average (1 min / 5 min): {loads[0]} at start, {loads[1]} at end  ",
        f"Code measured: {s['code']}",
        "",
        f"Method: `POST /webhooks/telnyx` on the webhooks function under functions-framework (gunicorn gthread, "
        f"`WORKERS={SERVER_WORKERS}`, `THREADS={SERVER_THREADS}`, `connection_limit={SERVER_CONNECTIONS}`, "
        f"`LOG_LEVEL` unset = INFO, `APP_ENV=development`), {CLIENTS} client threads in this driver, one keep-alive "
        "connection each, every request Ed25519-signed before the clock starts; latency = request written to "
        "answer read (gunicorn's queueing included: 16 in flight, 4 threads); events/s = requests / (first "
        f"request to last answer); each figure the median of {s['runs']} runs; all on this 2-core machine "
        "(function, PostgreSQL, Redis, driver). Receipts: "
        f"{rc['messages']:,} messages bulk-inserted `sent` per run, `message.sent` then `message.finalized` "
        f"(delivered) each, both on one thread, the second {FINALIZED_LAG} requests behind. Faults: "
        f"{fc['reordered_messages']:,} messages ({REORDERED_SHARE:.0%}) finalized first, "
        f"{fc['duplicated_events']:,} events ({DUPLICATE_SHARE:.0%}) posted twice (copy at a random place on a "
        f"random thread), {fc['posted']:,} requests. Inbound: {ic['members']} members x {TEXTS_PER_MEMBER} "
        f"texts, {ic['opt_out_events'].get('opt_out', 0)} of them STOP then START (no carrier autoresponse, so "
        "each is confirmed by us).",
        "",
        "Checked after every run: receipts: all messages `delivered` with their receipt applied, "
        "`webhook_events` grew by the distinct events posted, every answer 200 `applied` (faults: each "
        "duplicated event answered `applied` once and `duplicate` once); inbound: one conversation per member "
        f"({ic['members']}), every text threaded, opt_out + opt_in events per keyword member, nobody left opted out, "
        "one confirmation per keyword, nothing flagged. All passed.",
        "",
        "| figure | median | vs Telnyx's 2 s | runs |",
        "|---|---:|---:|---|",
    ]
    for name, value, target, runs_text in rows:
        lines.append(f"| {name} | {value} | {target} | {runs_text} |")
    lines += [
        "",
        f"\\* other work on this shared machine took more than {sp.DISTURBED:.0%} of its CPU during that run "
        f"({s['runs_disturbed_by_other_work']} of {len(runs)} runs).",
        "",
        "Statements per event (round trips to PostgreSQL, BEGIN and COMMIT included; counted in-process by "
        "wrapping pg8000's `Connection.run` around `common.webhooks.handler.handle`, since pg_stat_statements "
        "is not loaded here): " + "; ".join(f"{k} {v}" for k, v in stmts.items()) + ".",
        "",
    ]
    return "\n".join(lines)


# Main -------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small run of each; writes nothing unless --write")
    parser.add_argument("--runs", type=int, default=None, help="runs of each kind (default 3; --quick: 1)")
    parser.add_argument("--messages", type=int, default=None, help="messages per receipt run (default 5,000; --quick: 500)")
    parser.add_argument("--members", type=int, default=None, help="members per inbound run (default 200; --quick: 40)")
    parser.add_argument("--write", action="store_true", help="write results even with --quick")
    parser.add_argument("--no-write", action="store_true", help="do not update bench/RESULTS.md and results.json")
    args = parser.parse_args()
    args.runs = args.runs or (1 if args.quick else 3)
    args.messages = args.messages or (500 if args.quick else 5000)
    args.members = args.members or (40 if args.quick else 200)
    write = (not args.quick or args.write) and not args.no_write

    say(f"machine: {sp.machine_line()}")
    say(f"load average (1 / 5 min): {sp.load()}")
    code, code_print = sp.code_state()
    say(f"code: {code}")
    loads_start = sp.load()
    logs = Path(tempfile.mkdtemp(prefix="koinonia-bench-logs-"))
    runs: list[Run] = []
    statements: dict[str, Any] = {}
    with sp.terminate_as_interrupt():
        services = sp.Services()
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
                say(f"runs: {args.runs} rounds of receipts ({args.messages:,} messages, {2 * args.messages:,} events), "
                    f"receipts with faults, inbound ({args.members} members x {TEXTS_PER_MEMBER} texts); "
                    f"{CLIENTS} client threads")  # fmt: skip
                for index in range(args.runs):
                    runs.append(bench.receipts(index, faults=False))
                    runs.append(bench.receipts(index, faults=True))
                    runs.append(bench.inbound(index))
                say("statements per event (in this process, not timed):")
                statements = bench.statements()
            except BaseException:
                if bench.server is not None:
                    say(f"webhooks function log tail:\n{bench.server.tail()}")
                raise
            finally:
                say("stopping the webhooks function")
                bench.stop()
        finally:
            say(f"dropping database {services.db_name}, deleting Redis prefix {services.prefix}")
            services.stop()
            shutil.rmtree(logs, ignore_errors=True)

    code_after, code_print_after = sp.code_state()
    if code_print_after != code_print:
        code += f"; CHANGED DURING THE RUN (now {code_after}): figures mix both versions"
        say(f"warning: the product code changed during the run (now {code_after})")
    summary = summarise(runs, statements, services, args)
    summary["code"] = code
    section = render(summary, runs, (loads_start, sp.load()))
    say()
    say(section)
    if write:
        write_section(SECTION, section)
        update_json({JSON_KEY: summary})
        say(f"wrote {RESULTS.relative_to(ROOT)} ({SECTION}) and {RESULTS_JSON.relative_to(ROOT)} ({JSON_KEY!r})")
    else:
        say("(not written: --quick or --no-write; run without them to record the figures)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
