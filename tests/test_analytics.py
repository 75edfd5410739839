"""Analytics and reports (issue #7) against real PostgreSQL, real Redis and the Telnyx sandbox.

What is proved here:

- a recompute equals a direct ``GROUP BY`` over the tables for every status, channel, cost, delivery time,
  reply and opt-out, with days in the church's own zone;
- events delivered twice, replayed, or for buckets already right change nothing;
- events lost (the stream deleted: Redis lost its data) are detected and the recent days recomputed; what
  the sweep cannot know, ``koinonia analytics rebuild`` repairs: equal again;
- events that cannot reach Redis are marked in PostgreSQL and processed all the same;
- a processor process SIGKILLed mid-batch leaves its entries pending, and another processor reclaims them;
- a broadcast through the real pipeline with carrier faults (5xx, 429, a permanent error, a carrier opt-out,
  a failed delivery receipt) and members' texts: every aggregate row equals the direct count, ``GET /usage``
  equals the billed segments counted directly by the rule, and the broadcast report equals a direct count.

The "direct" counts below are written out here on purpose, not taken from common/analytics: they are the
definitions the aggregates must meet. No sleeps stand in for synchronisation.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest

from common import constants
from common.analytics import Event, EventType, Processor, emit
from common.analytics import stream as analytics_stream
from common.analytics.rebuild import rebuild
from common.analytics.stream import LOST_STREAM, LOST_TRIMMED, AnalyticsStream, stream_key
from common.db.pool import Pool
from common.ids import uuid7
from common.runtime import Runtime, get_runtime
from tests.factories import make_church, numbers
from tests.helpers import ROOT, function_client, set_env
from tests.media_server import UNCHECKABLE_MEDIA_URL
from tests.test_pipeline_faults import drain_until

LA = "America/Los_Angeles"

# -- the definitions, counted directly ---------------------------------------------------------------------------------

DIRECT_MESSAGES_SQL = """
SELECT m.church_id::text, CAST(m.created_at AT TIME ZONE ch.timezone AS date), m.channel,
       count(*),
       count(*) FILTER (WHERE m.status IN ('sent', 'delivered', 'delivery_failed', 'delivery_unconfirmed')),
       count(*) FILTER (WHERE m.status = 'delivered'),
       count(*) FILTER (WHERE m.status IN ('failed', 'delivery_failed')),
       count(*) FILTER (WHERE m.status = 'expired'),
       count(*) FILTER (WHERE m.status = 'suppressed'),
       count(*) FILTER (WHERE m.status IN ('scheduled', 'queued', 'sending', 'retrying')),
       sum(m.segments),
       coalesce(sum(m.segments) FILTER (WHERE m.channel IN ('sms', 'mms')
           AND m.status NOT IN ('suppressed', 'scheduled', 'queued', 'expired')
           AND NOT (m.status = 'failed' AND m.attempts = 0)), 0),
       sum(m.cost_amount)
FROM messages m JOIN churches ch ON ch.id = m.church_id
GROUP BY 1, 2, 3
"""
DIRECT_DELIVERY_TIMES_SQL = """
SELECT m.church_id::text, CAST(m.created_at AT TIME ZONE ch.timezone AS date), m.channel,
       greatest(extract(epoch FROM m.finalized_at - m.sent_at), 0)
FROM messages m JOIN churches ch ON ch.id = m.church_id
WHERE m.status = 'delivered' AND m.sent_at IS NOT NULL AND m.finalized_at IS NOT NULL
"""
DIRECT_REPLIES_SQL = """
SELECT c.church_id::text, CAST(cm.created_at AT TIME ZONE ch.timezone AS date), count(*)
FROM conversation_messages cm JOIN conversations c ON c.id = cm.conversation_id JOIN churches ch ON ch.id = c.church_id
WHERE cm.direction = 'inbound'
GROUP BY 1, 2
"""
DIRECT_OPT_OUTS_SQL = """
SELECT e.church_id::text, CAST(e.created_at AT TIME ZONE ch.timezone AS date), e.channel, count(*)
FROM opt_out_events e JOIN churches ch ON ch.id = e.church_id
WHERE e.action = 'opt_out'
GROUP BY 1, 2, 3
"""
AGGREGATES_SQL = """
SELECT church_id::text, day, channel, accepted, sent, delivered, failed, expired, suppressed, pending, segments,
       billed_segments, cost_amount, delivery_rate, median_delivery_s, replies, opt_outs
FROM daily_aggregates
"""
Key = tuple[str, date, str]


def direct(pool: Pool) -> dict[Key, tuple[Any, ...]]:
    """Every (church, local day, channel) with what its row must hold, from the tables themselves."""
    counts: dict[Key, list[Any]] = {}

    def row(key: Key) -> list[Any]:
        return counts.setdefault(key, [0] * 9 + [None, None, None, 0, 0])  # 9 counts, cost, rate, median, replies, opt-outs

    for church, day, channel, *values in pool.run(DIRECT_MESSAGES_SQL):
        r = row((church, day, channel))
        r[0:9] = [int(v) for v in values[:9]]
        r[9] = values[9]
        accepted_by_carrier, delivered = r[1], r[2]
        r[10] = round(Decimal(delivered) / Decimal(accepted_by_carrier), 5) if accepted_by_carrier else None
    times: dict[Key, list[float]] = {}
    for church, day, channel, seconds in pool.run(DIRECT_DELIVERY_TIMES_SQL):
        times.setdefault((church, day, channel), []).append(float(seconds))
    for key, values in times.items():
        row(key)[11] = statistics.median(values)
    for church, day, n in pool.run(DIRECT_REPLIES_SQL):
        row((church, day, "sms"))[12] = int(n)
    for church, day, channel, n in pool.run(DIRECT_OPT_OUTS_SQL):
        row((church, day, "mail" if channel == "mail" else "sms"))[13] = int(n)
    return {key: tuple(values) for key, values in counts.items()}


def aggregated(pool: Pool) -> dict[Key, tuple[Any, ...]]:
    out = {}
    for church, day, channel, *values in pool.run(AGGREGATES_SQL):
        *counts, cost, rate, median, replies, opt_outs = values
        out[(church, day, channel)] = (*[int(c) for c in counts], cost, rate, median, int(replies), int(opt_outs))
    return out


def assert_aggregates_equal_direct_counts(pool: Pool) -> dict[Key, tuple[Any, ...]]:
    want, got = direct(pool), aggregated(pool)
    assert set(got) == set(want), f"rows differ: missing {sorted(set(want) - set(got))}, extra {sorted(set(got) - set(want))}"
    for key in want:
        *w, w_median, w_replies, w_opt_outs = want[key]
        *g, g_median, g_replies, g_opt_outs = got[key]
        assert (g, g_replies, g_opt_outs) == (w, w_replies, w_opt_outs), f"{key}: aggregated {got[key]}, direct {want[key]}"
        assert (g_median is None) == (w_median is None) and (w_median is None or abs(g_median - w_median) < 1e-6), key
    return want


def process_all(rt: Runtime, consumer: str = "test") -> list[Any]:
    """Processor rounds until a round finds nothing (no stream entry, no marked bucket)."""
    processor = Processor(rt, consumer=consumer)
    reports = []
    for _ in range(1000):
        report = processor.process_batch()
        reports.append(report)
        if report.entries == 0 and report.from_dirty == 0:
            return reports
    raise AssertionError(f"the processor never ran out of work: {reports[-3:]}")


def start_processing(rt: Runtime) -> None:
    """The first read creates the consumer group (and, finding no stream, sweeps: nothing yet to sweep)."""
    first = Processor(rt, consumer="test").process_batch()
    assert first.lost == LOST_STREAM and first.swept == 0, first


# -- rows made by hand ----------------------------------------------------------------------------------------------------


def church(pool: Pool, tz: str = LA) -> str:
    church_id = str(uuid7())
    pool.run("INSERT INTO churches (id, name, timezone) VALUES (CAST(:id AS uuid), 'Grace', :tz)", id=church_id, tz=tz)
    return church_id


def message(pool: Pool, church_id: str, at: datetime, status: str, *, channel: str = "sms", segments: int = 1,
            attempts: int = 0, cost: str | None = None, sent_after_s: float | None = None,
            delivered_after_s: float | None = None, code: str | None = None) -> str:  # fmt: skip
    message_id = str(uuid7())
    sent_at = at + timedelta(seconds=sent_after_s) if sent_after_s is not None else None
    finalized = sent_at + timedelta(seconds=delivered_after_s) if sent_at and delivered_after_s is not None else None
    pool.run(
        "INSERT INTO messages (id, church_id, channel, lane, status, segments, attempts, deadline_at, created_at, sent_at,"
        " finalized_at, cost_amount, cost_currency, last_error_code)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :channel, 'bulk', :status, :segments, :attempts, :deadline,"
        " :at, :sent, :fin, CAST(:cost AS numeric), :currency, :code)",
        id=message_id, c=church_id, channel=channel, status=status, segments=segments, attempts=attempts,
        deadline=at + timedelta(hours=4), at=at, sent=sent_at, fin=finalized, cost=cost,
        currency=None if cost is None else "USD", code=code,
    )  # fmt: skip
    return message_id


def inbound_text(pool: Pool, church_id: str, at: datetime) -> str:
    conversation, text = str(uuid7()), str(uuid7())
    pool.run(
        "INSERT INTO conversations (id, church_id, church_number, contact_enc, contact_hash, last_message_at)"
        " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), '+13125550100', :enc, :hash, :at)",
        id=conversation, c=church_id, enc=os.urandom(40), hash=os.urandom(32), at=at,
    )  # fmt: skip
    pool.run(
        "INSERT INTO conversation_messages (id, conversation_id, direction, body_enc, created_at)"
        " VALUES (CAST(:id AS uuid), CAST(:conv AS uuid), 'inbound', :body, :at)",
        id=text, conv=conversation, body=os.urandom(40), at=at,
    )  # fmt: skip
    return text


def opt_out_recorded(pool: Pool, church_id: str) -> None:
    """An opt-out event (its audit entry comes from the trigger), dated now: what a STOP or a 40300 writes."""
    pool.run(
        "INSERT INTO opt_out_events (church_id, address_enc, address_hash, channel, action, source)"
        " VALUES (CAST(:c AS uuid), :enc, :hash, 'sms', 'opt_out', 'keyword')",
        c=church_id, enc=os.urandom(40), hash=os.urandom(32),
    )  # fmt: skip


def local_noon(days_ago: int, tz: str = LA) -> datetime:
    from zoneinfo import ZoneInfo

    today = datetime.now(ZoneInfo(tz)).date()
    return datetime.combine(today - timedelta(days=days_ago), datetime.min.time(), ZoneInfo(tz)).replace(hour=12)


@pytest.fixture
def rt(env) -> Runtime:
    return get_runtime()


def a_mixed_history(pool: Pool) -> tuple[str, str, list[Event]]:
    """Two churches; every status and channel; days that are one day in UTC and another in the church's zone."""
    grace, other = church(pool), church(pool, "Europe/Berlin")
    ids: list[str] = []
    noon = local_noon(1)
    # 23:30 in Los Angeles is already tomorrow in UTC: still the church's day.
    late = noon.replace(hour=23, minute=30)
    ids += [message(pool, grace, late, "delivered", cost="0.0040", sent_after_s=1, delivered_after_s=4)]
    ids += [message(pool, grace, noon, "delivered", segments=2, attempts=1, cost="0.0080", sent_after_s=2,
                    delivered_after_s=s) for s in (3, 5, 11)]  # fmt: skip
    ids += [message(pool, grace, noon, status, attempts=attempts, code=code) for status, attempts, code in (
        ("sent", 1, None), ("delivery_unconfirmed", 1, None), ("delivery_failed", 1, "40008"), ("failed", 1, "40310"),
        ("failed", 0, "erased"), ("expired", 0, "deadline_passed"), ("suppressed", 0, "opted_out"), ("queued", 0, None),
        ("scheduled", 0, None), ("sending", 1, None), ("retrying", 1, None))]  # fmt: skip
    ids += [message(pool, grace, noon, "delivered", channel="mms", segments=1, attempts=1, cost="0.0150", sent_after_s=1,
                    delivered_after_s=2)]  # fmt: skip
    ids += [message(pool, grace, noon, "sent", channel="mail", segments=0, attempts=1)]
    ids += [message(pool, grace, local_noon(0), "delivered", attempts=1, sent_after_s=1, delivered_after_s=1)]
    ids += [message(pool, other, local_noon(1, "Europe/Berlin"), "failed", attempts=2, code="10007")]
    replies = [inbound_text(pool, grace, late), inbound_text(pool, grace, local_noon(0))]
    opt_out_recorded(pool, grace)
    stopped_in = pool.run("SELECT conversation_id::text FROM conversation_messages WHERE id = CAST(:id AS uuid)",
                          id=replies[1])[0][0]  # fmt: skip
    events = [Event.messages(EventType.delivered, ids), *(Event.reply(r) for r in replies),
              Event.conversation(EventType.opted_out, stopped_in)]  # fmt: skip
    return grace, other, events


# -- recompute, duplicates, losses ----------------------------------------------------------------------------------------


def test_a_recompute_equals_a_direct_count_over_every_status_channel_and_zone(rt, pool):
    start_processing(rt)
    grace, other, events = a_mixed_history(pool)
    assert emit(rt, events)
    reports = process_all(rt)
    assert reports[0].entries == 4 and reports[0].from_dirty == 0
    want = assert_aggregates_equal_direct_counts(pool)
    # The church's day, not UTC's: the 23:30 message is yesterday's in Los Angeles.
    yesterday = local_noon(1).date()
    row = want[(grace, yesterday, "sms")]
    assert row[0] == 15 and row[12] == 1, row  # 14 at noon + the one at 23:30; one reply at 23:30
    assert row[11] == 4.5  # median of 4, 3, 5, 11 s
    assert want[(grace, yesterday, "mms")][8] == 1  # one MMS segment billed (the plan's weight is usage's business)
    got = aggregated(pool)[(grace, yesterday, "sms")]
    assert got[1:4] == (7, 4, 3) and got[10] == Decimal("0.57143")  # carrier accepted, delivered, failed; 4/7
    assert (other, local_noon(1, "Europe/Berlin").date(), "sms") in want


def test_duplicated_and_replayed_events_change_nothing(rt, pool):
    start_processing(rt)
    _grace, _other, events = a_mixed_history(pool)
    emit(rt, events)
    process_all(rt)
    before = aggregated(pool)
    computed = pool.run("SELECT max(computed_at) FROM daily_aggregates")[0][0]
    for _ in range(3):  # the same events again, and again
        emit(rt, events)
    stream = AnalyticsStream(rt.redis.client, rt.redis.prefix)
    assert stream.length() > 0
    reports = process_all(rt)
    assert sum(r.entries for r in reports) == 12 and sum(r.buckets for r in reports) > 0
    assert aggregated(pool) == before
    assert pool.run("SELECT min(computed_at) FROM daily_aggregates")[0][0] > computed  # recomputed, not skipped
    assert_aggregates_equal_direct_counts(pool)
    assert stream.pending() == 0


def test_events_lost_with_the_stream_are_swept_and_rebuild_repairs_the_rest(rt, pool):
    start_processing(rt)
    grace, _other, events = a_mixed_history(pool)
    emit(rt, events)
    process_all(rt)
    # Changes whose events Redis then loses: a recent one, and one to a message created a week ago.
    old = message(pool, grace, local_noon(7), "queued")
    recent = pool.run("SELECT id::text FROM messages WHERE status = 'queued' AND created_at > now() - interval '3 days'")
    emit(rt, [Event.messages(EventType.accepted, [old])])
    process_all(rt)
    pool.run("UPDATE messages SET status = 'sent', attempts = 1 WHERE id = ANY(CAST(:ids AS uuid[]))",
             ids=[old, *(r[0] for r in recent)])  # fmt: skip
    emit(rt, [Event.messages(EventType.sent, [old, *(r[0] for r in recent)])])
    rt.redis.client.delete(stream_key(rt.redis.prefix))  # Redis lost its data: stream and group gone
    assert aggregated(pool) != direct(pool)

    reports = process_all(rt)
    assert reports[0].lost == LOST_STREAM and reports[0].swept > 0
    want, got = direct(pool), aggregated(pool)
    old_day = (grace, local_noon(7).date(), "sms")
    assert {k: v for k, v in got.items() if k != old_day} == {k: v for k, v in want.items() if k != old_day}
    assert got[old_day] != want[old_day]  # a week-old message changed while its event was lost: the sweep's limit

    lines: list[str] = []
    report = rebuild(pool, church_id=grace, progress=lines.append)
    assert report.churches == 1 and report.days == 8 and lines and "batch 1/1" in lines[-1]
    assert_aggregates_equal_direct_counts(pool)


def test_entries_trimmed_before_they_were_read_are_detected(rt, pool, monkeypatch):
    start_processing(rt)
    grace, _other, events = a_mixed_history(pool)
    emit(rt, events)
    process_all(rt)
    monkeypatch.setattr(analytics_stream, "stream_max_entries", 5)
    pool.run("UPDATE messages SET status = 'delivered' WHERE church_id = CAST(:c AS uuid) AND status = 'sent'", c=grace)
    ids = [r[0] for r in pool.run("SELECT id::text FROM messages WHERE church_id = CAST(:c AS uuid)", c=grace)]
    for message_id in ids:  # one entry each: far more than MAXLEN ~ 5 keeps
        emit(rt, [Event.messages(EventType.delivered, [message_id])])
    pipe = rt.redis.client.pipeline(transaction=False)
    for _ in range(300):  # past one stream node (100 entries), so the approximate trim really drops some
        pipe.xadd(stream_key(rt.redis.prefix), {"t": "sent", "k": "m", "ids": ids[0]}, maxlen=5, approximate=True)
    pipe.execute()
    reports = process_all(rt)
    assert reports[0].lost == LOST_TRIMMED and reports[0].swept > 0
    assert_aggregates_equal_direct_counts(pool)


def test_events_redis_cannot_take_are_marked_in_postgresql_and_processed(env, pool, monkeypatch):
    set_env(monkeypatch, **{constants.REDIS_URL_ENV: "redis://127.0.0.1:9/0"})  # nothing listens there
    rt = get_runtime()
    _grace, _other, events = a_mixed_history(pool)
    assert emit(rt, events) is False
    assert pool.run("SELECT count(*) FROM analytics_dirty")[0][0] == 3  # grace: two days; the other church: one
    reports = process_all(rt)
    assert not reports[0].stream_ok and reports[0].from_dirty == 3
    assert_aggregates_equal_direct_counts(pool)
    assert pool.run("SELECT count(*) FROM analytics_dirty")[0][0] == 0


def test_with_queues_off_events_go_to_postgresql_and_nothing_touches_redis(env, pool, monkeypatch):
    set_env(monkeypatch, **{constants.ENABLE_QUEUES_ENV: "false", constants.REDIS_URL_ENV: "redis://127.0.0.1:9/0"})
    rt = get_runtime()
    _grace, _other, events = a_mixed_history(pool)
    assert emit(rt, events) is False
    reports = process_all(rt)
    assert not reports[0].stream_ok and reports[0].from_dirty == 3
    assert_aggregates_equal_direct_counts(pool)


# -- a processor killed mid-batch ------------------------------------------------------------------------------------------

KILLED_MID_BATCH = """
import os, signal
from common.analytics import aggregates
from common.analytics.processor import Processor
from common.runtime import get_runtime

def die(conn, buckets):  # inside the transaction, after the entries were read: the worst moment
    conn.run("SELECT 1")
    os.kill(os.getpid(), signal.SIGKILL)

aggregates.recompute = die
Processor(get_runtime(), consumer="doomed").process_batch()
"""


def test_a_processor_killed_mid_batch_leaves_its_entries_to_another(rt, pool):
    start_processing(rt)
    _grace, _other, events = a_mixed_history(pool)
    emit(rt, events)
    doomed = subprocess.run([sys.executable, "-c", KILLED_MID_BATCH], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            timeout=60, capture_output=True, text=True)  # fmt: skip
    assert doomed.returncode == -9, doomed.stderr[-2000:]
    stream = AnalyticsStream(rt.redis.client, rt.redis.prefix)
    assert stream.pending() == 4  # read by the dead processor, never acked
    assert pool.run("SELECT count(*) FROM daily_aggregates")[0][0] == 0  # its transaction died with it

    patient = Processor(rt, consumer="live")  # the default idle time: the dead one's entries are too fresh
    assert patient.process_batch().entries == 0 and stream.pending() == 4
    rescuer = Processor(rt, consumer="rescuer", reclaim_idle_ms=0)  # as if reclaim_idle_ms had passed
    report = rescuer.process_batch()
    assert report.entries == 4 and report.buckets == 3
    assert stream.pending() == 0
    assert_aggregates_equal_direct_counts(pool)


def test_a_processor_that_dies_after_its_commit_but_before_its_ack_costs_a_second_recompute(rt, pool, monkeypatch):
    start_processing(rt)
    _grace, _other, events = a_mixed_history(pool)
    emit(rt, events)
    first = Processor(rt, consumer="first")
    monkeypatch.setattr(first, "_ack", lambda entries: None)  # committed, then gone before XACK
    first.process_batch()
    after_first = aggregated(pool)
    stream = AnalyticsStream(rt.redis.client, rt.redis.prefix)
    assert stream.pending() == 4
    report = Processor(rt, consumer="second", reclaim_idle_ms=0).process_batch()
    assert report.entries == 4 and stream.pending() == 0
    assert aggregated(pool) == after_first
    assert_aggregates_equal_direct_counts(pool)


def test_memory_stays_bounded_by_the_backlog(rt, pool):
    start_processing(rt)
    _grace, _other, events = a_mixed_history(pool)
    stream = AnalyticsStream(rt.redis.client, rt.redis.prefix)
    for _ in range(30):
        for _ in range(20):
            emit(rt, events)
        process_all(rt)
        assert stream.pending() == 0
    assert stream.length() <= 2 * analytics_stream.max_ids_per_entry  # trimmed as it goes (one node's worth), not 1,800
    assert_aggregates_equal_direct_counts(pool)


# -- the real pipeline, with faults ---------------------------------------------------------------------------------------


def member_texts(sandbox: Any, text: str, frm: str, to: str) -> None:
    answer = httpx.post(f"{sandbox.url}/_sandbox/inbound", json={"from": frm, "to": to, "text": text}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert sandbox.wait_webhooks_idle(20)


def pending(pool: Pool) -> int:
    return int(pool.run("SELECT count(*) FROM messages WHERE status IN ('scheduled', 'queued', 'sending', 'retrying')")[0][0])


def drain_until_settled(pool: Pool, sandbox: Any) -> None:
    """Consumer rounds until nothing is pending (retries wait out their backoff between rounds), then receipts."""
    drain_until(lambda: pending(pool) == 0, timeout_s=60, what="every message is settled")
    assert sandbox.wait_webhooks_idle(20), "the sandbox still had webhooks to deliver after 20 s"


def test_a_broadcast_through_the_real_pipeline_with_faults(hooks_url, pool, sandbox):
    rt = get_runtime()
    start_processing(rt)
    members = numbers(40, area="415")
    tenant = make_church(pool, members=members, mms_weight=3)
    invalid, blocked, undelivered, flaky, replier, stopper = members[:6]
    sandbox.configure(rate_5xx=0.15, rate_429=0.1, seed=7, ratelimit_reset_s=1,
                      rules={invalid: "invalid", blocked: "blocked", undelivered: "dlr:delivery_failed",
                             flaky: "fail_first:2"})  # fmt: skip
    member_texts(sandbox, "STOP", stopper, tenant.sender)  # opted out before the send: suppressed at accept
    send = function_client("send")
    answer = send.post("/messages", json={"channel": "sms", "groups": [tenant.group_id], "text": "Potluck at 6"},
                       headers=tenant.auth)  # fmt: skip
    assert answer.status_code == 202, answer.get_json()
    broadcast_id = answer.get_json()["broadcast_id"]
    mms = send.post("/messages", json={"channel": "mms", "to": members[10:13], "text": "Photos from Sunday",
                                       "media_urls": [UNCHECKABLE_MEDIA_URL]}, headers=tenant.auth)  # fmt: skip
    assert mms.status_code == 202, mms.get_json()
    drain_until_settled(pool, sandbox)
    reports = process_all(rt)
    member_texts(sandbox, "Thank you, see you there!", replier, tenant.sender)  # after the rest was processed
    reports += process_all(rt)
    assert reports[-2].entries >= 1  # the text's own event, not a recompute some other event caused

    statuses = dict(pool.run("SELECT status, count(*) FROM messages WHERE purpose = 'normal' GROUP BY status"))
    assert statuses.get("failed", 0) >= 1 and statuses.get("suppressed", 0) >= 2 and statuses.get("delivery_failed") == 1
    assert sandbox.ledger.by_code().get("10007", 0) > 0, "the carrier's 5xx never happened: the run proves nothing"

    assert sum(r.entries for r in reports) > 0 and sum(r.swept for r in reports) == 0
    assert pool.run("SELECT count(*) FROM analytics_dirty")[0][0] == 0  # every change came through the stream
    want = assert_aggregates_equal_direct_counts(pool)
    row = want[(tenant.church_id, local_noon(0, "America/Chicago").date(), "sms")]
    assert row[12] >= 2 and row[13] >= 2  # texts in (STOP, the thanks) and opt-outs (the STOP, the carrier's 40300)

    usage = send.get("/usage", headers=tenant.auth).get_json()
    billed = pool.run(
        "SELECT coalesce(sum(CASE WHEN m.channel = 'mms' THEN m.segments * 3 ELSE m.segments END), 0),"
        " coalesce(sum(m.segments) FILTER (WHERE m.channel = 'sms'), 0),"
        " coalesce(sum(m.segments) FILTER (WHERE m.channel = 'mms'), 0)"
        " FROM messages m WHERE m.church_id = CAST(:c AS uuid) AND m.channel IN ('sms', 'mms')"
        " AND m.status NOT IN ('suppressed', 'scheduled', 'queued', 'expired')"
        " AND NOT (m.status = 'failed' AND m.attempts = 0)",
        c=tenant.church_id,
    )[0]
    assert usage["used"] == int(billed[0]) > 0, (usage, billed)
    assert usage["by_channel"] == {"sms": {"segments": int(billed[1]), "used": int(billed[1])},
                                   "mms": {"segments": int(billed[2]), "used": 3 * int(billed[2])}}  # fmt: skip
    assert usage["remaining"] == usage["allowance"] - usage["used"] and usage["plan"] == "test"
    aggregated_billed = sum(r[8] for k, r in aggregated(pool).items() if k[0] == tenant.church_id and k[2] == "sms")
    assert aggregated_billed == int(billed[1])

    report = send.get(f"/broadcasts/{broadcast_id}/report", headers=tenant.auth).get_json()
    by_status = dict(pool.run("SELECT status, count(*) FROM messages WHERE broadcast_id = CAST(:b AS uuid) GROUP BY status",
                              b=broadcast_id))  # fmt: skip
    codes = dict(pool.run("SELECT coalesce(last_error_code, 'unknown'), count(*) FROM messages"
                          " WHERE broadcast_id = CAST(:b AS uuid) AND status IN ('failed', 'delivery_failed') GROUP BY 1",
                          b=broadcast_id))  # fmt: skip
    assert report["total"] == 40 == sum(by_status.values())
    assert report["delivered"] == by_status.get("delivered", 0)
    assert report["sent"] == by_status.get("sent", 0) and report["unconfirmed"] == by_status.get("delivery_unconfirmed", 0)
    assert report["failed"]["total"] == by_status.get("failed", 0) + by_status.get("delivery_failed", 0)
    assert report["failed"]["by_code"] == codes and codes.get("40310") == 1 and codes.get("40008") == 1
    assert report["opted_out"] == by_status.get("suppressed", 0) >= 2  # the STOP before, the 40300 during
    assert report["pending"] == 0 and report["expired"] == by_status.get("expired", 0)


# -- the read endpoints ----------------------------------------------------------------------------------------------------


def test_daily_reads_the_church_s_own_days_and_refuses_bad_ranges(send_env, pool):
    tenant = make_church(pool)
    other = make_church(pool, "Other Church", sender="+13125550111")
    for church_id in (tenant.church_id, other.church_id):
        pool.run("UPDATE churches SET timezone = :tz WHERE id = CAST(:c AS uuid)", tz=LA, c=church_id)
        message(pool, church_id, local_noon(2), "delivered", attempts=1, cost="0.0040", sent_after_s=1, delivered_after_s=2)
        message(pool, church_id, local_noon(0), "sent", channel="mms", attempts=1)
    rebuild(pool)
    send = function_client("send")
    body = send.get("/analytics/daily", headers=tenant.auth).get_json()
    assert body["timezone"] == LA and body["to"] == local_noon(0).date().isoformat()
    assert [(r["day"], r["channel"]) for r in body["data"]] == [
        (local_noon(2).date().isoformat(), "sms"), (local_noon(0).date().isoformat(), "mms")]  # fmt: skip
    first = body["data"][0]
    assert (first["accepted"], first["delivered"], first["delivery_rate"], first["median_delivery_s"]) == (1, 1, 1.0, 2.0)
    assert first["cost"] == {"amount": "0.00400", "currency": "USD"}
    only_mms = send.get("/analytics/daily", query_string={"channel": "mms"}, headers=tenant.auth).get_json()
    assert [r["channel"] for r in only_mms["data"]] == ["mms"]
    day = local_noon(2).date().isoformat()
    one_day = send.get("/analytics/daily", query_string={"from": day, "to": day}, headers=tenant.auth).get_json()
    assert len(one_day["data"]) == 1
    refusals = [
        ({"from": "2026-13-01"}, "from"), ({"to": "yesterday"}, "to"), ({"from": "2026-02-02", "to": "2026-02-01"}, "from"),
        ({"from": "2024-01-01", "to": "2026-01-01"}, "from"), ({"channel": "fax"}, "channel"),
        ({"from": "\uff12\uff10\uff12\uff16-01-01"}, "from"),  # fullwidth digits: not ASCII, not a day
    ]  # fmt: skip
    earliest = send.get("/analytics/daily", query_string={"to": "0001-01-01"}, headers=tenant.auth)
    assert earliest.status_code == 200 and earliest.get_json()["from"] == "0001-01-01"  # the range stops at the calendar's start
    for query, field in refusals:
        refused = send.get("/analytics/daily", query_string=query, headers=tenant.auth)
        assert refused.status_code == 400, (query, refused.get_json())
        assert refused.get_json()["error"] == {"code": "invalid_parameter", "field": field,
                                               "message": refused.get_json()["error"]["message"]}  # fmt: skip


def test_usage_and_reports_are_the_callers_own(send_env, pool):
    tenant = make_church(pool, members=numbers(2))
    other = make_church(pool, "Other Church", sender="+13125550111", allowance=None)
    send = function_client("send")
    answer = send.post("/messages", json={"channel": "sms", "groups": [tenant.group_id], "text": "hi"}, headers=tenant.auth)
    broadcast_id = answer.get_json()["broadcast_id"]
    assert send.get(f"/broadcasts/{broadcast_id}/report", headers=tenant.auth).get_json()["pending"] == 2
    theirs = send.get(f"/broadcasts/{broadcast_id}/report", headers=other.auth)
    assert theirs.status_code == 404 and theirs.get_json()["error"]["code"] == "not_found"
    assert send.get("/broadcasts/not-an-id/report", headers=tenant.auth).status_code == 404
    no_plan = send.get("/usage", headers=other.auth)
    assert no_plan.status_code == 404 and no_plan.get_json()["error"]["code"] == "no_subscription"
    assert send.get("/usage", headers=tenant.auth).get_json()["used"] == 0  # queued: not billed until the carrier is asked
    assert send.get("/usage").status_code == 401


def test_scheduled_sends_replays_and_erasures_reach_the_aggregates_by_their_own_events(send_env, pool, sandbox):
    rt = get_runtime()
    start_processing(rt)
    members = numbers(3, area="646")
    tenant = make_church(pool, members=members)
    send, dlq = function_client("send"), function_client("dlq-drain")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    held = send.post("/messages", json={"channel": "sms", "groups": [tenant.group_id], "text": "Tomorrow", "send_at": tomorrow},
                     headers=tenant.auth)  # fmt: skip
    assert held.status_code == 202 and held.get_json()["mode"] == "scheduled", held.get_json()
    reports = process_all(rt)
    assert reports[0].entries == 1  # the accept: nothing else happened to these messages
    assert_aggregates_equal_direct_counts(pool)

    sandbox.configure(rules={members[0]: "invalid"})
    failed = send.post("/messages", json={"channel": "sms", "to": members[0], "text": "Call me"}, headers=tenant.auth)
    drain_until(lambda: pending(pool) == 3, timeout_s=30, what="the one-to-one text has failed")
    process_all(rt)
    assert aggregated(pool)[(tenant.church_id, local_noon(0, "America/Chicago").date(), "sms")][3] == 1  # failed
    sandbox.configure(rules={})
    [(dead_letter,)] = pool.run("SELECT id::text FROM dead_letters")
    replayed = dlq.post("/dead-letters/replay", json={"ids": [dead_letter]}, headers=tenant.auth)
    assert replayed.status_code == 200 and replayed.get_json()["replayed"] == 1, replayed.get_json()
    reports = process_all(rt)
    assert reports[0].entries == 1  # the replay's own event
    assert_aggregates_equal_direct_counts(pool)
    drain_until(lambda: pending(pool) == 3, timeout_s=30, what="the replayed text is sent")

    erased = send.post("/privacy/deletions", json={"phone": members[1]}, headers=tenant.auth)
    assert erased.status_code == 202 and erased.get_json()["counts"]["cancelled"] == 1, erased.get_json()
    reports = process_all(rt)
    assert sum(r.entries for r in reports) >= 2  # the sent replay, the erasure's cancel
    want = assert_aggregates_equal_direct_counts(pool)
    assert want[(tenant.church_id, local_noon(0, "America/Chicago").date(), "sms")][5:7] == (1, 2)  # suppressed, pending
    assert failed.status_code == 202


def test_inline_sends_with_queues_off_reach_the_aggregates_through_postgresql(send_env, pool, sandbox, monkeypatch):
    set_env(monkeypatch, **{constants.ENABLE_QUEUES_ENV: "false"})
    tenant = make_church(pool)
    sandbox.configure(rules={"+14155550101": "invalid"})
    answer = function_client("send").post("/messages", json={"channel": "sms", "to": ["+14155550101", "+14155550102"],
                                                             "text": "Choir at 7"}, headers=tenant.auth)  # fmt: skip
    assert answer.status_code == 202 and answer.get_json()["mode"] == "inline", answer.get_json()
    assert pool.run("SELECT count(*) FROM analytics_dirty")[0][0] == 1  # the accept and the outcomes: one church-day
    reports = process_all(get_runtime())
    assert not reports[0].stream_ok and reports[0].from_dirty == 1
    want = assert_aggregates_equal_direct_counts(pool)
    assert want[(tenant.church_id, local_noon(0, "America/Chicago").date(), "sms")][:4] == (2, 1, 0, 1)


def test_processes_that_ran_once_leave_the_consumer_group(rt, pool, monkeypatch):
    start_processing(rt)
    _grace, _other, events = a_mixed_history(pool)
    for name in ("lambda-1", "lambda-2", "lambda-3"):  # each reads something, so each is a consumer of the group
        emit(rt, events)
        assert Processor(rt, consumer=name).process_batch().entries == 4
    key = stream_key(rt.redis.prefix)
    assert len(rt.redis.client.xinfo_consumers(key, analytics_stream.GROUP)) == 3
    monkeypatch.setattr(analytics_stream, "forget_idle_ms", -1)  # as if an hour had passed
    emit(rt, events)
    Processor(rt, consumer="lambda-4").process_batch()
    assert [c["name"] for c in rt.redis.client.xinfo_consumers(key, analytics_stream.GROUP)] == ["lambda-4"]
