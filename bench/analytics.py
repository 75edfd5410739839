"""Analytics processor: ``python bench/analytics.py [--quick] [--write]``.

Measures, on this machine, against a fresh migrated database on the machine's PostgreSQL (or an embedded one)
and Redis under a unique key prefix (bench/send_pipeline.py's ``Services``; everything dropped at the end):

1. **Recompute cost per dirty bucket**: one church-day of 20,000 messages (statuses as a real Sunday's
   broadcast ends: mostly delivered, some failed, suppressed, expired, sent; costs; delivery times) plus 500
   inbound texts and 50 opt-outs that day; ``aggregates.recompute`` of that one bucket, in its own
   transaction, repeated: median and p95 milliseconds, and the statement's plan (index names).
2. **Events/s processed, spread**: 50 churches x 400 messages (one day each); every message named by one
   event id, in entries of 10 ids as the consumer's outcome flushes make them (2,000 entries, 20,000 ids);
   ``emit`` then ``Processor.process_batch`` until drained: ids/s and entries/s from the first read to the
   last ack, and emit's cost per entry.
3. **Events/s processed, one hot bucket**: 20,000 ids, all of the 20,000-message church-day, in entries of
   10: every batch recomputes that one bucket, so this is the rate when one broadcast dominates.

Each measurement is the median of ``RUNS`` runs (``--quick``: one small run, written only with ``--write``).
Figures go to the ``## Analytics`` section of bench/RESULTS.md and the ``analytics`` key of bench/results.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import send_pipeline as sp  # noqa: E402
from _results import update_json, write_section  # noqa: E402  (bench/ is the script's folder)

from common.analytics import Event, EventType, Processor, aggregates, emit  # noqa: E402
from common.analytics.stream import AnalyticsStream  # noqa: E402
from common.analytics.types import Bucket  # noqa: E402
from common.db.pool import Pool  # noqa: E402
from common.redis_client import RedisGate  # noqa: E402

SECTION = "## Analytics"
JSON_KEY = "analytics"
COMMAND = "python bench/analytics.py --write"
RUNS = 5
TZ = "America/Chicago"
BIG = 20_000  # messages in the hot church-day
SPREAD_CHURCHES, SPREAD_EACH = 50, 400
IDS_PER_ENTRY = 10
say = sp.say

MESSAGES_SQL = """
INSERT INTO messages (id, church_id, channel, lane, status, segments, attempts, deadline_at, created_at, sent_at,
                      finalized_at, cost_amount, cost_currency, last_error_code)
SELECT gen_random_uuid(), CAST(:c AS uuid), CASE WHEN i % 50 = 0 THEN 'mms' ELSE 'sms' END, 'bulk',
       s.status, 1 + i % 3, CASE WHEN s.status IN ('suppressed', 'expired') THEN 0 ELSE 1 END,
       CAST(:at AS timestamptz) + interval '4 hours', CAST(:at AS timestamptz) + (i % 7200) * interval '1 second',
       CASE WHEN s.status IN ('delivered', 'delivery_failed', 'sent')
            THEN CAST(:at AS timestamptz) + (i % 7200 + 2) * interval '1 second' END,
       CASE WHEN s.status IN ('delivered', 'delivery_failed')
            THEN CAST(:at AS timestamptz) + (i % 7200 + 2 + i % 13) * interval '1 second' END,
       CASE WHEN s.status IN ('delivered', 'delivery_failed', 'sent') THEN 0.004 * (1 + i % 3) END,
       CASE WHEN s.status IN ('delivered', 'delivery_failed', 'sent') THEN 'USD' END,
       CASE s.status WHEN 'failed' THEN '40310' WHEN 'delivery_failed' THEN '40008' WHEN 'expired' THEN 'deadline_passed' END
FROM generate_series(1, :n) AS i
CROSS JOIN LATERAL (SELECT CASE WHEN i % 100 < 90 THEN 'delivered' WHEN i % 100 < 93 THEN 'delivery_failed'
                                WHEN i % 100 < 95 THEN 'failed' WHEN i % 100 < 97 THEN 'suppressed'
                                WHEN i % 100 < 98 THEN 'expired' ELSE 'sent' END AS status) s
RETURNING id::text
"""
TEXTS_SQL = """
WITH conv AS (
    INSERT INTO conversations (id, church_id, church_number, contact_enc, contact_hash, last_message_at)
    SELECT gen_random_uuid(), CAST(:c AS uuid), '+13125550100', gen_random_uuid()::text::bytea,
           decode(md5(i::text || :c) || md5(i::text), 'hex'), CAST(:at AS timestamptz) + interval '3 hours'
    FROM generate_series(1, :n) AS i
    RETURNING id
)
INSERT INTO conversation_messages (id, conversation_id, direction, body_enc, created_at)
SELECT gen_random_uuid(), id, 'inbound', 'x'::bytea, CAST(:at AS timestamptz) + interval '1 hour' FROM conv
"""
OPT_OUTS_SQL = """
INSERT INTO opt_out_events (church_id, address_enc, address_hash, channel, action, source, created_at)
SELECT CAST(:c AS uuid), 'x'::bytea, 'y'::bytea, 'sms', 'opt_out', 'keyword', CAST(:at AS timestamptz) + i * interval '1 minute'
FROM generate_series(1, :n) AS i
"""


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def new_church(pool: Pool, name: str) -> str:
    return str(pool.run("INSERT INTO churches (id, name, timezone) VALUES (gen_random_uuid(), :n, :tz) RETURNING id::text",
                        n=name, tz=TZ)[0][0])  # fmt: skip


def local_noon_utc(days_ago: int) -> datetime:
    zone = ZoneInfo(TZ)
    today = datetime.now(zone).date() - timedelta(days=days_ago)
    return datetime(today.year, today.month, today.day, 10, tzinfo=zone).astimezone(UTC)


def runtime(services: Any) -> Any:
    gate = RedisGate(services.redis_url, prefix=services.prefix, timeout_s=2.0)
    return SimpleNamespace(settings=SimpleNamespace(enable_queues=True), pool=services.pool, redis=gate)


def entries_of(ids: list[str]) -> list[Event]:
    return [Event.messages(EventType.delivered, ids[i : i + IDS_PER_ENTRY]) for i in range(0, len(ids), IDS_PER_ENTRY)]


def measure_processing(rt: Any, ids: list[str], label: str) -> dict[str, float]:
    events = entries_of(ids)
    started = time.perf_counter()
    for start in range(0, len(events), 100):  # emit as call sites do: a handful of entries per call
        emit(rt, events[start : start + 100])
    emit_s = time.perf_counter() - started
    processor = Processor(rt, consumer=f"bench-{label}")
    started = time.perf_counter()
    entries = buckets = 0
    while True:
        report = processor.process_batch()
        entries += report.entries
        buckets += report.buckets
        if report.entries == 0 and report.from_dirty == 0:
            break
    seconds = time.perf_counter() - started
    assert entries == len(events), (entries, len(events))
    return {
        "ids_per_s": len(ids) / seconds, "entries_per_s": entries / seconds, "seconds": seconds,
        "buckets_recomputed": buckets, "emit_us_per_entry": emit_s / len(events) * 1e6,
    }  # fmt: skip


def plan_indexes(pool: Pool, bucket: Bucket) -> list[str]:
    # EXPLAIN without ANALYZE plans the upsert without running it.
    raw = pool.run("EXPLAIN (FORMAT JSON) " + aggregates.RECOMPUTE_SQL, church_ids=[bucket.church_id], days=[bucket.day])[0][0]
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    found: set[str] = set()

    def walk(node: dict[str, Any]) -> None:
        if "Index Name" in node:
            found.add(f"{node['Node Type']} on {node['Index Name']}")
        for child in node.get("Plans", []):
            walk(child)

    walk(plan)
    return sorted(found)


def run(quick: bool) -> dict[str, Any]:
    load_at_start = os.getloadavg()[0]
    services = sp.Services().start()
    try:
        pool = services.pool
        rt = runtime(services)
        say(f"services: {services.pg_where} (server {services.server_version}), {services.redis_where} "
            f"(Redis {services.redis_version})")  # fmt: skip
        big_n = 2_000 if quick else BIG
        runs = 1 if quick else RUNS
        Processor(rt, consumer="bench-setup").process_batch()  # creates the consumer group

        big = new_church(pool, "Big Church")
        at = local_noon_utc(0)
        big_ids = [r[0] for r in pool.run(MESSAGES_SQL, c=big, at=at, n=big_n)]
        pool.run(TEXTS_SQL, c=big, at=at, n=500)
        pool.run(OPT_OUTS_SQL, c=big, at=at, n=50)
        spread_ids: list[str] = []
        for i in range(SPREAD_CHURCHES if not quick else 5):
            church = new_church(pool, f"Church {i}")
            spread_ids += [r[0] for r in pool.run(MESSAGES_SQL, c=church, at=at, n=SPREAD_EACH)]
        pool.run("VACUUM ANALYZE messages")
        pool.run("VACUUM ANALYZE conversation_messages")
        bucket = Bucket(big, datetime.now(ZoneInfo(TZ)).date())
        say(f"data: {big_n:,} messages in one church-day, 500 texts, 50 opt-outs; {len(spread_ids):,} messages in "
            f"{SPREAD_CHURCHES if not quick else 5} other churches")  # fmt: skip

        # 1. recompute cost of the hot bucket
        timings: list[float] = []
        for _ in range(max(5, 3 * runs)):
            started = time.perf_counter()
            with pool.transaction() as conn:
                done = aggregates.recompute(conn, [bucket])
            timings.append((time.perf_counter() - started) * 1000)
        assert done.rows == 2, done  # sms and mms
        row = pool.run("SELECT accepted, delivered, replies, opt_outs FROM daily_aggregates WHERE church_id = CAST(:c AS uuid)"
                       " AND channel = 'sms'", c=big)[0]  # fmt: skip
        indexes = plan_indexes(pool, bucket)
        say(f"recompute of one {big_n:,}-message church-day: median {statistics.median(timings):.1f} ms, p95 "
            f"{p95(timings):.1f} ms ({len(timings)} runs); sms row {row}; plan: {', '.join(indexes)}")  # fmt: skip

        # 2 and 3. events/s
        spread = [measure_processing(rt, spread_ids, f"spread{r}") for r in range(runs)]
        hot = [measure_processing(rt, big_ids, f"hot{r}") for r in range(runs)]

        def med(values: list[dict[str, float]], key: str) -> float:
            return float(statistics.median(v[key] for v in values))

        result = {
            "date": datetime.now(UTC).date().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "postgres": services.server_version,
            "redis": services.redis_version,
            "runs": runs,
            "load_average_at_start": round(load_at_start, 2),
            "recompute_bucket_messages": big_n,
            "recompute_ms_median": round(statistics.median(timings), 1),
            "recompute_ms_p95": round(p95(timings), 1),
            "recompute_plan": indexes,
            "spread_ids": len(spread_ids),
            "spread_churches": SPREAD_CHURCHES if not quick else 5,
            "spread_ids_per_s": round(med(spread, "ids_per_s")),
            "spread_entries_per_s": round(med(spread, "entries_per_s")),
            "spread_buckets_recomputed": int(med(spread, "buckets_recomputed")),
            "hot_ids": len(big_ids),
            "hot_ids_per_s": round(med(hot, "ids_per_s")),
            "hot_entries_per_s": round(med(hot, "entries_per_s")),
            "hot_buckets_recomputed": int(med(hot, "buckets_recomputed")),
            "emit_us_per_entry": round(med(spread + hot, "emit_us_per_entry"), 1),
            "stream_left": AnalyticsStream(services.redis, services.prefix).length(),
        }
        for name, values in (("spread", spread), ("one hot bucket", hot)):
            say(f"{name}: {med(values, 'ids_per_s'):,.0f} ids/s, {med(values, 'entries_per_s'):,.0f} entries/s, "
                f"{med(values, 'buckets_recomputed'):.0f} bucket recomputes (median of {runs})")  # fmt: skip
        say(f"emit: {result['emit_us_per_entry']} us per entry (XADD in pipelines of 100)")
        rt.redis.close()
        return result
    finally:
        services.stop()


def write(result: dict[str, Any]) -> None:
    r = result
    section = f"""{SECTION}

`{COMMAND}` ({r['date']}, {r['machine']}, PostgreSQL {r['postgres']}, Redis {r['redis']}; medians of {r['runs']} runs;
1-minute load average {r['load_average_at_start']} at the start: other work shared the 2 cores, so times are upper bounds and rates lower bounds).
The processor recomputes whole (church, local day) buckets from the messages (common/analytics/aggregates.py), so its
cost is per bucket, not per event; events only say which buckets.

| measurement | figure |
| --- | --- |
| recompute of one church-day of {r['recompute_bucket_messages']:,} messages (+500 texts, 50 opt-outs) | median {r['recompute_ms_median']} ms, p95 {r['recompute_ms_p95']} ms |
| events processed, {r['spread_ids']:,} ids over {r['spread_churches']} church-days (entries of {IDS_PER_ENTRY} ids) | {r['spread_ids_per_s']:,} ids/s ({r['spread_entries_per_s']:,} entries/s; {r['spread_buckets_recomputed']} recomputes) |
| events processed, {r['hot_ids']:,} ids all in the one {r['recompute_bucket_messages']:,}-message church-day | {r['hot_ids_per_s']:,} ids/s ({r['hot_entries_per_s']:,} entries/s; {r['hot_buckets_recomputed']} recomputes) |
| emit (XADD, pipelined, per entry) | {r['emit_us_per_entry']} us |

The recompute's plan: {', '.join(r['recompute_plan'])}. A batch of up to 500 entries recomputes each bucket it
touches once, so a hot church-day costs one recompute per batch however many of its events the batch holds, and the
retry-scheduler runs the processor at most once a second. Stream entries left after the runs: {r['stream_left']}
(acked entries are trimmed as the processor goes).
"""  # noqa: E501
    write_section(SECTION, section)
    update_json({JSON_KEY: result})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one small run (writes nothing unless --write)")
    parser.add_argument("--write", action="store_true", help="write bench/RESULTS.md and bench/results.json")
    args = parser.parse_args()
    result = run(args.quick)
    if args.write:
        write(result)
        say("written: bench/RESULTS.md (## Analytics), bench/results.json (analytics)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
