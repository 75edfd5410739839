"""Quiet hours end to end: bulk texts wait for their recipient's send window, on every path, and are never lost.

The suite's template database has no send window (tests/conftest.py), so each test here sets one on its
church, always relative to the current time (a window that opens 3 hours from now, or one that opened 2
hours ago), so the result never depends on the hour the suite runs. Real PostgreSQL, Redis, consumer,
scheduler and our sandbox carrier; the rules live in common/compliance/quiet_hours.py (accept time) and in
the SQL twin ``send_window_opens_at`` used by the claim (migration 0004).
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from common.compliance.quiet_hours import SendWindow, is_open, next_opening
from common.config import parse_database_url
from common.consume import ConsumeBudget, ConsumeReport, run_consumer
from common.db.migrate import migrate
from common.db.pool import Pool
from common.privacy import crypto
from common.runtime import get_runtime
from common.scheduler import Scheduler
from common.send.models import default_deadline_s
from tests.factories import Tenant, make_church, numbers
from tests.helpers import function_client, with_database

UTC_ZONE = ZoneInfo("UTC")
CHICAGO = ZoneInfo("America/Chicago")
DUBAI = ZoneInfo("Asia/Dubai")  # UTC+4 all year (no DST)
DEADLINE = timedelta(seconds=default_deadline_s)

# -- helpers ---------------------------------------------------------------------------------------------------


def _local_now(tz: ZoneInfo) -> datetime:
    return datetime.now(UTC).astimezone(tz).replace(tzinfo=None, second=0, microsecond=0)


def closed_window(tz: ZoneInfo) -> SendWindow:
    """A 2-hour window opening about 3 hours from now, local wall clock (it wraps midnight when it must)."""
    local = _local_now(tz)
    window = SendWindow((local + timedelta(hours=3)).time(), (local + timedelta(hours=5)).time())
    assert not is_open(datetime.now(UTC), tz, window)
    return window


def open_window(tz: ZoneInfo) -> SendWindow:
    """A 4-hour window that opened about 2 hours ago, local wall clock."""
    local = _local_now(tz)
    window = SendWindow((local - timedelta(hours=2)).time(), (local + timedelta(hours=2)).time())
    assert is_open(datetime.now(UTC), tz, window)
    return window


def set_window(pool: Pool, tenant: Tenant, window: SendWindow, tz: ZoneInfo) -> None:
    pool.run(
        "UPDATE churches SET send_window_start = CAST(:s AS time), send_window_end = CAST(:e AS time), timezone = :tz"
        " WHERE id = CAST(:c AS uuid)",
        s=window.start.isoformat(), e=window.end.isoformat(), tz=tz.key, c=tenant.church_id,
    )  # fmt: skip


def drain(**budget: Any) -> ConsumeReport:
    budget = {"max_seconds": 30, "stop_when_idle": True, **budget}
    return asyncio.run(run_consumer(get_runtime(), ConsumeBudget(**budget)))


def broadcast(send, tenant: Tenant) -> dict[str, Any]:
    answer = send.post("/messages", json={"channel": "sms", "groups": [tenant.group_id], "text": "Potluck at 6"},
                       headers=tenant.auth)  # fmt: skip
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()


def message_rows(pool: Pool) -> dict[str, dict[str, Any]]:
    """Every message by recipient."""
    cols = ["id", "status", "lane", "next_attempt_at", "deadline_at", "updated_at", "recipient_tz", "attempts"]
    found = pool.run(f"SELECT to_enc, id::text, {', '.join(cols[1:])} FROM messages")
    return {crypto.unseal(r[0], "address"): dict(zip(cols, r[1:], strict=True)) for r in found}


def make_due_in_redis(message_ids: list[str]) -> None:
    """Test setup, not synchronisation: Redis keeps its own due time for a delayed id (its clock); this
    moves it to now, the Redis half of "the time has come" (the PostgreSQL half is an UPDATE of
    next_attempt_at), so the scheduler's pass promotes the ids."""
    queue = get_runtime().queue
    due_ms = int(datetime.now(UTC).timestamp() * 1000) - 1000
    changed = queue.client.zadd(queue.keys.delayed, dict.fromkeys(message_ids, due_ms), xx=True, ch=True)
    assert changed == len(message_ids), "every id should be waiting in Redis's delayed set"


def close_to(a: datetime, b: datetime, seconds: float = 1.0) -> bool:
    return abs((a - b).total_seconds()) <= seconds


@pytest.fixture
def send(send_env):
    return function_client("send")


@pytest.fixture
def tenant(send_env, pool) -> Tenant:
    return make_church(pool, members=numbers(4, area="415"))


# -- 1. the real default ---------------------------------------------------------------------------------------


@pytest.fixture
def fresh_pool(pg_server_url):
    """A database migrated from nothing (not the suite's template, which clears the window defaults)."""
    name = f"kt_qh_{uuid.uuid4().hex[:12]}"
    admin = Pool(parse_database_url(pg_server_url))
    admin.run(f'CREATE DATABASE "{name}"')
    pool = Pool(parse_database_url(with_database(pg_server_url, name)))
    try:
        migrate(pool, progress=lambda _line: None)
        yield pool
    finally:
        pool.close()
        admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def test_a_freshly_migrated_database_defaults_to_nine_to_eight(fresh_pool):
    defaults = dict(fresh_pool.run(
        "SELECT column_name, column_default FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name = 'churches'"
        " AND column_name IN ('send_window_start', 'send_window_end')"
    ))  # fmt: skip
    assert defaults == {
        "send_window_start": "'09:00:00'::time without time zone",
        "send_window_end": "'20:00:00'::time without time zone",
    }
    church_id = str(uuid.uuid4())
    fresh_pool.run("INSERT INTO churches (id, name) VALUES (CAST(:id AS uuid), 'Default Church')", id=church_id)
    assert fresh_pool.run("SELECT send_window_start, send_window_end FROM churches WHERE id = CAST(:id AS uuid)",
                          id=church_id) == [[time(9, 0), time(20, 0)]]  # fmt: skip


# -- 2-4. accept time ----------------------------------------------------------------------------------------


def test_a_broadcast_while_the_window_is_closed_is_held_until_it_opens(send, tenant, pool, sandbox):
    window = closed_window(CHICAGO)
    set_window(pool, tenant, window, CHICAGO)
    body = broadcast(send, tenant)
    opening = next_opening(datetime.now(UTC), CHICAGO, window)
    assert opening is not None

    assert body["quiet_hours"]["held"] == len(tenant.members)
    assert close_to(datetime.fromisoformat(body["quiet_hours"]["first_opening"]), opening)
    assert {r["status"] for r in body["recipients"]} == {"scheduled"}
    found = message_rows(pool)
    assert set(found) == set(tenant.members)
    for row in found.values():
        assert row["status"] == "scheduled" and row["recipient_tz"] == "America/Chicago"
        assert close_to(row["next_attempt_at"], opening), (row["next_attempt_at"], opening)
        assert row["deadline_at"] - row["next_attempt_at"] == DEADLINE  # the 4 hours start at the opening

    report = drain()
    assert sandbox.ledger.attempts == 0 and sandbox.ledger.accepted == 0
    assert report.claimed == 0
    assert {r["status"] for r in message_rows(pool).values()} == {"scheduled"}
    assert get_runtime().queue.depths().delayed == len(tenant.members)  # waiting, not dropped


def test_the_contacts_time_zone_wins_over_the_churchs(send, send_env, pool, sandbox):
    tenant = make_church(pool, members=numbers(2, area="628"))
    window = closed_window(UTC_ZONE)  # closed for the church (UTC); it is 4 hours later in Dubai, inside it
    assert is_open(datetime.now(UTC), DUBAI, window)
    set_window(pool, tenant, window, UTC_ZONE)
    abroad, home = tenant.members
    pool.run("UPDATE contacts SET timezone = 'Asia/Dubai' WHERE phone_hash = :h", h=crypto.lookup_hash(tenant.church_id, abroad))

    body = broadcast(send, tenant)
    assert body["quiet_hours"]["held"] == 1
    statuses = {r["to"]: r["status"] for r in body["recipients"]}
    assert statuses == {abroad: "queued", home: "scheduled"}

    report = drain()
    assert (report.sent, report.held) == (1, 0)
    assert sandbox.ledger.by_to() == {abroad: 1}
    found = message_rows(pool)
    assert (found[abroad]["status"], found[abroad]["recipient_tz"]) == ("sent", "Asia/Dubai")
    assert (found[home]["status"], found[home]["recipient_tz"]) == ("scheduled", "UTC")
    opening = next_opening(datetime.now(UTC), UTC_ZONE, window)
    assert opening is not None and close_to(found[home]["next_attempt_at"], opening)


def test_a_conversational_text_is_never_held(send, tenant, pool, sandbox):
    set_window(pool, tenant, closed_window(CHICAGO), CHICAGO)
    [member] = tenant.members[:1]
    answer = send.post("/messages", json={"channel": "sms", "to": member, "text": "Are you OK?"}, headers=tenant.auth)
    assert answer.status_code == 202, answer.get_json()
    body = answer.get_json()
    assert "quiet_hours" not in body and body["recipients"][0]["status"] == "queued"

    report = drain()
    assert (report.sent, report.held) == (1, 0)
    assert sandbox.ledger.by_to() == {member: 1}
    row = message_rows(pool)[member]
    assert (row["lane"], row["status"], row["recipient_tz"]) == ("conv", "sent", None)


# -- 5-6. claim time ---------------------------------------------------------------------------------------------


def test_a_window_that_closes_before_the_consumer_runs_holds_the_broadcast_at_claim(send, tenant, pool, sandbox):
    set_window(pool, tenant, open_window(CHICAGO), CHICAGO)
    body = broadcast(send, tenant)
    assert "quiet_hours" not in body and {r["status"] for r in body["recipients"]} == {"queued"}
    accepted = message_rows(pool)
    window = closed_window(CHICAGO)
    set_window(pool, tenant, window, CHICAGO)  # the church narrows its window; the texts are still in Redis

    report = drain()
    assert report.held == len(tenant.members) and (report.claimed, report.sent) == (0, 0)
    assert sandbox.ledger.attempts == 0
    for member, row in message_rows(pool).items():
        assert (row["status"], row["attempts"]) == ("scheduled", 0)
        claimed_at = row["updated_at"]  # the claim's now(): the hold was measured from it
        opening = next_opening(claimed_at, CHICAGO, window)
        assert opening is not None and close_to(row["next_attempt_at"], opening), (row["next_attempt_at"], opening)
        assert row["deadline_at"] - accepted[member]["deadline_at"] == row["next_attempt_at"] - claimed_at
        assert row["deadline_at"] > accepted[member]["deadline_at"] + timedelta(hours=1)
    assert get_runtime().queue.depths().delayed == len(tenant.members)  # back in Redis for the opening


def test_a_retry_that_comes_due_while_the_window_is_closed_is_held_not_sent(send, tenant, pool, sandbox):
    set_window(pool, tenant, open_window(UTC_ZONE), UTC_ZONE)
    flaky = tenant.members[0]
    sandbox.configure(rules={flaky: "fail_first:1"})  # 503 once, accepted the next time
    broadcast(send, tenant)
    first = drain(max_messages=len(tenant.members))  # one attempt each; the retry is not due yet
    assert (first.sent, first.retrying) == (len(tenant.members) - 1, 1)
    [[message_id]] = pool.run("SELECT id::text FROM messages WHERE to_hash = :h AND status = 'retrying'",
                              h=crypto.lookup_hash(tenant.church_id, flaky))  # fmt: skip

    window = closed_window(UTC_ZONE)
    set_window(pool, tenant, window, UTC_ZONE)
    # Test setup, not synchronisation: the retry is due now rather than in ~1 s (PostgreSQL and Redis).
    pool.run("UPDATE messages SET next_attempt_at = now() WHERE id = CAST(:id AS uuid)", id=message_id)
    make_due_in_redis([message_id])
    scheduler = Scheduler(get_runtime())
    scheduler.one_pass()
    assert scheduler.report.promoted == 1

    second = drain()
    assert (second.held, second.claimed) == (1, 0)
    assert sandbox.ledger.by_status() == {200: len(tenant.members) - 1, 503: 1}  # no second attempt
    assert flaky not in sandbox.ledger.by_to()
    row = message_rows(pool)[flaky]
    opening = next_opening(row["updated_at"], UTC_ZONE, window)
    assert row["status"] == "scheduled" and row["attempts"] == 1
    assert opening is not None and close_to(row["next_attempt_at"], opening)


# -- 7. the SQL twin agrees with Python ------------------------------------------------------------------------

GRID_ZONES = ["America/New_York", "Asia/Kolkata", "Pacific/Auckland", "UTC"]
GRID_WINDOWS = [SendWindow(time(9), time(20)), SendWindow(time(22), time(6)), SendWindow(time(0), time(23, 59))]


def _sql_openings(pool: Pool, cases: list[tuple[datetime, str, SendWindow]]) -> list[datetime | None]:
    found = pool.run(
        "SELECT send_window_opens_at(t.at, t.tz, t.ws, t.we) FROM unnest(CAST(:ats AS timestamptz[]),"
        " CAST(:zones AS text[]), CAST(:starts AS time[]), CAST(:ends AS time[]))"
        " WITH ORDINALITY AS t(at, tz, ws, we, n) ORDER BY t.n",
        ats=[at.isoformat() for at, _, _ in cases], zones=[z for _, z, _ in cases],
        starts=[w.start.isoformat() for _, _, w in cases], ends=[w.end.isoformat() for _, _, w in cases],
    )  # fmt: skip
    return [r[0] for r in found]


def _opens_at_its_start(opening: datetime, tz: ZoneInfo, window: SendWindow) -> bool:
    """The Python opening is the wall-clock start itself (not the end of a DST gap, or a fall-back reopening)."""
    return opening.astimezone(tz).time().replace(fold=0) == window.start


def test_sql_and_python_agree_on_open_and_on_the_next_opening(pool):
    start = datetime(2026, 10, 30, 12, 0, tzinfo=UTC)  # 3 days spanning America/New_York's fall-back, 2026-11-01
    instants = [start + timedelta(minutes=37 * i) for i in range(3 * 24 * 60 // 37)]
    cases = [(at, z, w) for at in instants for z in GRID_ZONES for w in GRID_WINDOWS]
    compared = open_ = 0
    for (at, z, window), sql in zip(cases, _sql_openings(pool, cases), strict=True):
        tz = ZoneInfo(z)
        python = next_opening(at, tz, window)
        assert (sql is None) is is_open(at, tz, window), (at, z, window, sql)
        if python is None:
            open_ += 1
            continue
        assert sql is not None
        if not _opens_at_its_start(python, tz, window):  # a DST gap: SQL may open later (documented), never earlier
            assert sql >= python and is_open(sql, tz, window), (at, z, window, sql, python)
            continue
        assert sql == python, (at.isoformat(), z, window, sql, python)
        compared += 1
    assert open_ > 500 and compared > 500  # both branches well exercised
    ny = ZoneInfo("America/New_York")
    fall_back = [at for at in instants if at.astimezone(ny).dst() != (at + timedelta(hours=12)).astimezone(ny).dst()]
    assert fall_back  # the grid really crosses the change


def test_sql_opens_later_never_earlier_where_a_dst_change_makes_the_start_ambiguous(pool):
    """The documented difference (quiet_hours.py, migration 0004): a start in a spring-forward gap or a
    repeated hour; the SQL twin names an instant at or after Python's, at which the window is open."""
    ny = ZoneInfo("America/New_York")
    cases = [
        (datetime(2026, 3, 8, 5, 0, tzinfo=UTC), "America/New_York", SendWindow(time(2, 30), time(6))),  # gap
        (datetime(2026, 11, 1, 4, 0, tzinfo=UTC), "America/New_York", SendWindow(time(1, 30), time(6))),  # repeated
    ]
    python = [next_opening(at, ny, w) for at, _, w in cases]
    assert python == [datetime(2026, 3, 8, 7, 0, tzinfo=UTC), datetime(2026, 11, 1, 5, 30, tzinfo=UTC)]
    sql = _sql_openings(pool, cases)
    assert sql == [datetime(2026, 3, 8, 7, 30, tzinfo=UTC), datetime(2026, 11, 1, 6, 30, tzinfo=UTC)]
    for (_, _, window), opening in zip(cases, sql, strict=True):
        assert opening is not None and is_open(opening, ny, window)


# -- 8. held, never dropped -------------------------------------------------------------------------------------


def test_held_messages_are_delivered_once_when_the_window_opens(send, tenant, pool, sandbox):
    set_window(pool, tenant, closed_window(CHICAGO), CHICAGO)
    body = broadcast(send, tenant)
    assert body["quiet_hours"]["held"] == len(tenant.members)
    drain()  # nothing is due: the consumer leaves them waiting
    assert sandbox.ledger.attempts == 0
    ids = [r["message_id"] for r in body["recipients"]]

    # Simulate the window opening (test setup, not synchronisation): the church's window is now open, and
    # the held rows' time has come, in PostgreSQL (next_attempt_at) and in Redis (its delayed set).
    set_window(pool, tenant, open_window(CHICAGO), CHICAGO)
    pool.run("UPDATE messages SET next_attempt_at = now() WHERE id = ANY(CAST(:ids AS uuid[]))", ids=ids)
    make_due_in_redis(ids)
    scheduler = Scheduler(get_runtime())
    scheduler.one_pass()
    assert scheduler.report.promoted == len(ids)

    report = drain()
    assert (report.sent, report.held) == (len(ids), 0)
    assert sandbox.ledger.by_to() == dict.fromkeys(tenant.members, 1) and sandbox.ledger.duplicates == 0
    assert {r["status"] for r in message_rows(pool).values()} == {"sent"}
    drain()  # and nothing goes twice
    assert sandbox.ledger.accepted == len(ids)
