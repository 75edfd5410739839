"""The hot read queries: right answers on small data, and index plans on realistic statistics.

The correctness tests build a few rows by hand. The EXPLAIN tests seed a realistically skewed database
(100,000 messages over 50 churches, one of them with 40%) once per module, ``VACUUM ANALYZE`` it, and
check that the planner, left to its own choices, answers every hot query from the intended index and
never scans one of the big tables sequentially.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest

from common.billing.usage import USAGE_FOR_CURRENT_PERIOD_SQL, usage_for_current_period
from common.config import parse_database_url
from common.conversations.queries import (
    LIST_CONVERSATION_MESSAGES_FIRST_PAGE_SQL,
    LIST_CONVERSATION_MESSAGES_NEXT_PAGE_SQL,
    LIST_CONVERSATIONS_FIRST_PAGE_SQL,
    LIST_CONVERSATIONS_NEXT_PAGE_SQL,
    list_conversation_messages,
    list_conversations,
)
from common.db.pool import Pool
from common.ids import uuid7
from common.messages.queries import (
    DUE_FOR_ATTEMPT_SQL,
    EXPIRED_LEASES_SQL,
    LIST_FIRST_PAGE_SQL,
    LIST_NEXT_PAGE_SQL,
    due_for_attempt,
    expired_leases,
    list_church_messages,
)
from common.messages.states import MessageStatus
from common.privacy import crypto
from tests.helpers import with_database

NOW = datetime(2025, 3, 14, 15, 9, 26, tzinfo=UTC)

# -- small-data helpers ---------------------------------------------------------------------------------


def _church(pool: Pool, name: str = "church") -> UUID:
    church_id = uuid7()
    pool.run("INSERT INTO churches (id, name) VALUES (:id, :name)", id=church_id, name=name)
    return church_id


def _message(
    pool: Pool,
    church_id: UUID,
    *,
    created_at: datetime = NOW,
    status: str = "sent",
    channel: str = "sms",
    segments: int = 1,
    attempts: int = 1,
    next_attempt_at: datetime | None = None,
    lease_until: datetime | None = None,
    message_id: UUID | None = None,
) -> UUID:
    message_id = message_id or uuid.uuid4()  # random ids: ties on created_at get no help from id order
    pool.run(
        "INSERT INTO messages (id, church_id, channel, lane, to_enc, to_hash, body_enc, segments, status, attempts,"
        " next_attempt_at, lease_until, deadline_at, created_at)"
        " VALUES (:id, :church, :channel, 'bulk', :to_enc, :to_hash, :body_enc, :segments, :status, :attempts,"
        " :next_attempt_at, :lease_until, :deadline, :created_at)",
        id=message_id,
        church=church_id,
        to_enc=crypto.seal("+15005550101", "address"),
        to_hash=crypto.lookup_hash(str(church_id), "+15005550101"),
        body_enc=crypto.seal("hello", "text"),
        channel=channel,
        segments=segments,
        status=status,
        attempts=attempts,
        next_attempt_at=next_attempt_at,
        lease_until=lease_until,
        deadline=created_at + timedelta(days=1),
        created_at=created_at,
    )
    return message_id


def _conversation(pool: Pool, church_id: UUID, *, address: str, last_message_at: datetime = NOW) -> UUID:
    conversation_id = uuid.uuid4()
    pool.run(
        "INSERT INTO conversations (id, church_id, church_number, contact_enc, contact_hash, last_message_at)"
        " VALUES (:id, :church, '+15005550006', :address, :hash, :last)",
        id=conversation_id,
        church=church_id,
        address=crypto.seal(address, "address"),
        hash=crypto.lookup_hash(str(church_id), address),
        last=last_message_at,
    )
    return conversation_id


def _conversation_message(pool: Pool, conversation_id: UUID, *, created_at: datetime) -> UUID:
    row_id = uuid.uuid4()
    pool.run(
        "INSERT INTO conversation_messages (id, conversation_id, direction, body_enc, created_at)"
        " VALUES (:id, :conv, 'inbound', :body, :created_at)",
        id=row_id,
        body=crypto.seal("hi", "text"),
        conv=conversation_id,
        created_at=created_at,
    )
    return row_id


def _subscription(
    pool: Pool,
    church_id: UUID,
    *,
    status: str = "active",
    allowance: int = 100,
    mms_weight: int = 3,
    start: datetime = NOW - timedelta(days=10),
    end: datetime = NOW + timedelta(days=20),
) -> None:
    pool.run(
        "INSERT INTO subscriptions (id, church_id, plan, status, segment_allowance, mms_weight, period_start, period_end)"
        " VALUES (:id, :church, 'standard', :status, :allowance, :weight, :start, :end)",
        id=uuid7(),
        church=church_id,
        status=status,
        allowance=allowance,
        weight=mms_weight,
        start=start,
        end=end,
    )


def _walk_pages(fetch: Callable[[tuple[datetime, UUID] | None], list[Any]], page_size: int) -> list[list[Any]]:
    """Every page from the first, following each page's last cursor, until an empty page."""
    pages: list[list[Any]] = []
    before = None
    for _ in range(1000):
        page = fetch(before)
        assert len(page) <= page_size
        if not page:
            return pages
        pages.append(page)
        before = page[-1].cursor
    raise AssertionError("pagination did not end")


# -- messages --------------------------------------------------------------------------------------------


def test_church_messages_pages_return_every_row_once_newest_first_even_with_tied_timestamps(pool, env):
    church, other = _church(pool, "a"), _church(pool, "b")
    # Groups of 4 rows share one created_at, like a broadcast's rows; ids are random within a group.
    mine = {
        _message(pool, church, created_at=NOW - timedelta(seconds=i // 4)): NOW - timedelta(seconds=i // 4) for i in range(23)
    }
    for i in range(6):
        _message(pool, other, created_at=NOW - timedelta(seconds=i // 2))
    expected = sorted(mine, key=lambda m: (mine[m], m), reverse=True)

    pages = _walk_pages(lambda before: list_church_messages(pool, church, limit=5, before=before), 5)

    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [row.id for page in pages for row in page] == expected
    assert {row.church_id for page in pages for row in page} == {church}
    first = pages[0][0]  # numbers and texts are sealed at rest, opened when read
    assert (first.to_address, first.body, first.subject) == ("+15005550101", "hello", None)
    # A church sees none of another church's rows, with or without a cursor from the other church.
    assert [r.church_id for r in list_church_messages(pool, other, limit=100)] == [other] * 6
    assert list_church_messages(pool, other, limit=100, before=pages[0][0].cursor) != []
    assert all(r.church_id == other for r in list_church_messages(pool, other, limit=100, before=pages[0][0].cursor))
    assert list_church_messages(pool, uuid7(), limit=100) == []
    assert list_church_messages(pool, uuid7(), limit=100, before=(NOW + timedelta(days=1), uuid7())) == []


def test_due_for_attempt_returns_due_scheduled_queued_and_retrying_oldest_first(pool, env):
    a, b = _church(pool, "a"), _church(pool, "b")
    retrying = _message(pool, a, status="retrying", next_attempt_at=NOW - timedelta(minutes=5))
    queued = _message(pool, b, status="queued", attempts=0, next_attempt_at=NOW - timedelta(seconds=10))
    scheduled = _message(pool, a, status="scheduled", attempts=0, next_attempt_at=NOW - timedelta(seconds=1))
    exactly_now = _message(pool, b, status="queued", attempts=0, next_attempt_at=NOW)
    _message(pool, a, status="queued", attempts=0, next_attempt_at=NOW + timedelta(seconds=1))  # not due yet
    _message(pool, a, status="queued", attempts=0, next_attempt_at=None)  # no due time: not the scheduler's
    for status in ("sending", "sent", "failed", "expired", "delivered"):  # stale due times on other states
        _message(pool, a, status=status, next_attempt_at=NOW - timedelta(hours=1))

    due = due_for_attempt(pool, now=NOW, limit=100)

    assert [m.id for m in due] == [retrying, queued, scheduled, exactly_now]
    assert [m.church_id for m in due] == [a, b, a, b]
    assert [m.id for m in due_for_attempt(pool, now=NOW, limit=2)] == [retrying, queued]
    assert due_for_attempt(pool, now=NOW - timedelta(hours=2), limit=100) == []


def test_expired_leases_returns_sending_past_lease_longest_expired_first(pool, env):
    a, b = _church(pool, "a"), _church(pool, "b")
    oldest = _message(pool, b, status="sending", lease_until=NOW - timedelta(minutes=3))
    newer = _message(pool, a, status="sending", lease_until=NOW - timedelta(seconds=1))
    _message(pool, a, status="sending", lease_until=NOW)  # expires at NOW, not before it
    _message(pool, a, status="sending", lease_until=NOW + timedelta(seconds=30))
    _message(pool, a, status="sent", lease_until=NOW - timedelta(hours=1))  # finished: lease irrelevant
    _message(pool, a, status="retrying", lease_until=NOW - timedelta(hours=1))

    expired = expired_leases(pool, now=NOW, limit=100)

    assert [m.id for m in expired] == [oldest, newer]
    assert [m.lease_until for m in expired] == [NOW - timedelta(minutes=3), NOW - timedelta(seconds=1)]
    assert [m.id for m in expired_leases(pool, now=NOW, limit=1)] == [oldest]


# -- conversations ---------------------------------------------------------------------------------------


def test_conversations_pages_return_every_row_once_most_recent_first(pool, env):
    church, other = _church(pool, "a"), _church(pool, "b")
    mine = {}
    for i in range(17):
        last = NOW - timedelta(minutes=i // 3)  # one broadcast touches several conversations at once
        mine[_conversation(pool, church, address=f"+1500555{i:04d}", last_message_at=last)] = last
    foreign = _conversation(pool, other, address="+15005559999")
    expected = sorted(mine, key=lambda c: (mine[c], c), reverse=True)

    pages = _walk_pages(lambda before: list_conversations(pool, church, limit=4, before=before), 4)

    assert [row.id for page in pages for row in page] == expected
    assert [len(p) for p in pages] == [4, 4, 4, 4, 1]
    assert [r.id for r in list_conversations(pool, other, limit=10)] == [foreign]
    assert list_conversations(pool, uuid7(), limit=10) == []


def test_conversation_messages_pages_in_order_and_only_for_the_owning_church(pool, env):
    church, other = _church(pool, "a"), _church(pool, "b")
    conversation = _conversation(pool, church, address="+15005550101")
    foreign = _conversation(pool, other, address="+15005550101")
    mine = {}
    for i in range(11):
        created = NOW - timedelta(seconds=i // 2)
        mine[_conversation_message(pool, conversation, created_at=created)] = created
    foreign_row = _conversation_message(pool, foreign, created_at=NOW)
    expected = sorted(mine, key=lambda m: (mine[m], m), reverse=True)

    pages = _walk_pages(lambda before: list_conversation_messages(pool, church, conversation, limit=3, before=before), 3)

    assert [row.id for page in pages for row in page] == expected
    assert {row.conversation_id for page in pages for row in page} == {conversation}
    # Another church's conversation id, asked for by this church, returns nothing (first or later page).
    assert list_conversation_messages(pool, church, foreign, limit=10) == []
    assert list_conversation_messages(pool, church, foreign, limit=10, before=(NOW + timedelta(days=1), uuid7())) == []
    assert list_conversation_messages(pool, other, conversation, limit=10) == []
    assert [r.id for r in list_conversation_messages(pool, other, foreign, limit=10)] == [foreign_row]


# -- usage -----------------------------------------------------------------------------------------------


def test_usage_counts_billed_segments_and_weights_mms(pool, env):
    church, other = _church(pool, "a"), _church(pool, "b")
    _subscription(pool, church, allowance=100, mms_weight=5)
    _subscription(pool, other, allowance=100, mms_weight=5)
    inside = NOW - timedelta(days=1)
    _message(pool, church, created_at=inside, channel="sms", segments=2, status="sent")  # 2
    _message(pool, church, created_at=inside, channel="mms", segments=1, status="delivered")  # 5
    _message(pool, church, created_at=inside, channel="mms", segments=2, status="sending")  # 10
    _message(pool, church, created_at=inside, channel="sms", segments=1, status="retrying")  # 1
    _message(pool, church, created_at=inside, channel="sms", segments=1, status="failed", attempts=2)  # 1
    _message(pool, church, created_at=inside, channel="sms", segments=1, status="failed", attempts=0)  # 0
    _message(pool, church, created_at=inside, channel="sms", segments=3, status="queued", attempts=0)  # 0
    _message(pool, church, created_at=inside, channel="mms", segments=1, status="expired", attempts=1)  # 0
    _message(pool, church, created_at=inside, channel="sms", segments=1, status="suppressed", attempts=0)  # 0
    _message(pool, church, created_at=inside, channel="mail", segments=1, status="sent")  # 0: not a segment
    _message(pool, church, created_at=NOW - timedelta(days=11), channel="sms", segments=4, status="sent")  # before
    _message(pool, other, created_at=inside, channel="sms", segments=7, status="sent")  # another church

    usage = usage_for_current_period(pool, church, now=NOW)

    assert usage is not None
    assert (usage.period_start, usage.period_end) == (NOW - timedelta(days=10), NOW + timedelta(days=20))
    assert (usage.allowance, usage.used, usage.remaining) == (100, 2 + 5 + 10 + 1 + 1, 100 - 19)
    other_usage = usage_for_current_period(pool, other, now=NOW)
    assert other_usage is not None
    assert other_usage.used == 7


def _billed(status: str, channel: str, attempts: int) -> bool:
    """The documented rule, written out independently of the module's SQL."""
    if channel == "mail" or status in ("suppressed", "expired", "scheduled", "queued"):
        return False
    return not (status == "failed" and attempts == 0)


def test_usage_matches_a_direct_count_over_every_status_channel_and_attempt_count(pool, env):
    church, other = _church(pool, "a"), _church(pool, "b")
    start, end = NOW - timedelta(days=3), NOW + timedelta(days=27)
    _subscription(pool, church, status="trialing", allowance=10, mms_weight=4, start=start, end=end)
    expected = 0
    for i, status in enumerate(MessageStatus):
        for channel in ("sms", "mms", "mail"):
            for attempts in (0, 1):
                segments = 1 + (i + attempts) % 3
                for created in (start, NOW, end - timedelta(microseconds=1)):
                    _message(
                        pool, church, created_at=created, status=status, channel=channel, segments=segments, attempts=attempts
                    )
                    if _billed(status, channel, attempts):
                        expected += segments * (4 if channel == "mms" else 1)
                # Just outside the period on either side, and the same rows for another church: never counted.
                for created in (start - timedelta(microseconds=1), end):
                    _message(
                        pool, church, created_at=created, status=status, channel=channel, segments=segments, attempts=attempts
                    )
                _message(pool, other, created_at=NOW, status=status, channel=channel, segments=segments, attempts=attempts)
    direct = pool.run(
        "SELECT status, channel, attempts, segments FROM messages WHERE church_id = :c AND created_at >= :s AND created_at < :e",
        c=church,
        s=start,
        e=end,
    )
    assert sum(seg * (4 if ch == "mms" else 1) for st, ch, att, seg in direct if _billed(st, ch, att)) == expected

    usage = usage_for_current_period(pool, church, now=NOW)

    assert usage is not None
    assert usage.used == expected > usage.allowance == 10
    assert usage.remaining == 0


def test_usage_needs_a_current_active_or_trialing_subscription(pool, env):
    church = _church(pool)
    _message(pool, church, created_at=NOW - timedelta(days=1), segments=3)
    assert usage_for_current_period(pool, church, now=NOW) is None
    _subscription(pool, church, status="canceled")
    _subscription(pool, church, status="past_due")
    _subscription(pool, church, status="active", start=NOW - timedelta(days=40), end=NOW - timedelta(days=10))
    _subscription(pool, church, status="active", start=NOW + timedelta(days=1), end=NOW + timedelta(days=31))
    assert usage_for_current_period(pool, church, now=NOW) is None
    _subscription(pool, church, status="active", allowance=50, start=NOW - timedelta(days=5), end=NOW + timedelta(days=25))
    usage = usage_for_current_period(pool, church, now=NOW)
    assert usage is not None
    assert (usage.allowance, usage.used, usage.remaining) == (50, 3, 47)
    assert usage_for_current_period(pool, uuid7(), now=NOW) is None


# -- plans on realistic statistics -------------------------------------------------------------------------

BIG_TABLES = frozenset({"messages", "conversations", "conversation_messages", "subscriptions"})

# One statement each: PostgreSQL's random() is deterministic after setseed(); gen_random_uuid() is not,
# which only changes ids, never the shape of the data.
_SEED_SQL = [
    "SELECT setseed(0.4242)",
    # 2,000 churches with a subscription each (most of a platform's churches are quiet); the first 50 are
    # the ones that send. Church 1 is the big one.
    "CREATE TEMP TABLE seed_churches AS SELECT n, gen_random_uuid() AS id FROM generate_series(1, 2000) n",
    "INSERT INTO churches (id, name) SELECT id, 'Church ' || n FROM seed_churches",
    """
    INSERT INTO subscriptions (id, church_id, plan, status, segment_allowance, mms_weight, period_start, period_end)
    SELECT gen_random_uuid(), id, 'standard',
           CASE WHEN n % 20 = 0 THEN 'canceled' WHEN n % 13 = 0 THEN 'past_due'
                WHEN n % 7 = 0 THEN 'trialing' ELSE 'active' END,
           CASE WHEN n = 1 THEN 50000 ELSE 5000 END, 3,
           CAST(:now AS timestamptz) - (n % 28 + 1) * interval '1 day',
           CAST(:now AS timestamptz) - (n % 28 + 1) * interval '1 day' + interval '30 days'
    FROM seed_churches
    """,
    # 100,000 messages: 40% church 1, the rest spread over churches 2..50; mostly sent/delivered, a few
    # thousand in flight (recent, with due times or leases around now), the rest over 90 days.
    """
    INSERT INTO messages (id, church_id, channel, lane, to_enc, to_hash, body_enc, segments, status, attempts,
                          next_attempt_at, lease_until, deadline_at, created_at, updated_at)
    SELECT (lpad(to_hex((extract(epoch FROM created_at) * 1000)::bigint), 12, '0') || '7'
            || substr(h, 1, 3) || '8' || substr(h, 4, 15))::uuid,
           church_id, channel, lane, decode(repeat(md5(to_address), 3), 'hex'), sha256(convert_to(to_address, 'UTF8')),
           decode(repeat('b0', 54), 'hex'), segments, status,
           CASE WHEN status IN ('queued', 'scheduled', 'suppressed') THEN 0
                WHEN status = 'retrying' THEN 1 + g % 3 ELSE 1 END,
           CASE WHEN status IN ('queued', 'retrying', 'scheduled')
                THEN CAST(:now AS timestamptz) + (r_due - 0.7) * interval '1 hour' END,
           CASE WHEN status = 'sending' THEN CAST(:now AS timestamptz) + (r_due - 0.5) * interval '4 minutes' END,
           created_at + interval '1 day', created_at, created_at
    FROM (
        SELECT g, r_due, md5(g::text || r_due::text) AS h, c.id AS church_id,
               CASE WHEN r_chan < 0.85 THEN 'sms' WHEN r_chan < 0.95 THEN 'mms' ELSE 'mail' END AS channel,
               CASE WHEN r_chan < 0.25 THEN 'conv' ELSE 'bulk' END AS lane,
               '+1555' || lpad((g % 9000000)::text, 7, '0') AS to_address,
               CASE WHEN r_chan < 0.85 THEN 1 + (g % 3) ELSE 1 END AS segments,
               status,
               CASE WHEN status IN ('queued', 'retrying', 'sending', 'scheduled')
                    THEN CAST(:now AS timestamptz) - r_age * interval '2 hours'
                    ELSE CAST(:now AS timestamptz) - r_age * interval '90 days' END AS created_at
        FROM (
            SELECT g, random() AS r_church, random() AS r_chan, random() AS r_due, random() AS r_age,
                   CASE WHEN r < 0.010 THEN 'queued' WHEN r < 0.020 THEN 'retrying'
                        WHEN r < 0.030 THEN 'sending' WHEN r < 0.035 THEN 'scheduled'
                        WHEN r < 0.045 THEN 'failed' WHEN r < 0.055 THEN 'suppressed'
                        WHEN r < 0.060 THEN 'expired' WHEN r < 0.080 THEN 'delivery_failed'
                        WHEN r < 0.400 THEN 'sent' ELSE 'delivered' END AS status
            FROM (SELECT g, random() AS r FROM generate_series(1, 100000) g) s
        ) raw
        JOIN seed_churches c
          ON c.n = CASE WHEN raw.r_church < 0.4 THEN 1 ELSE 2 + floor((raw.r_church - 0.4) / 0.6 * 49)::int END
    ) m
    """,
    # 5,000 conversations over the same churches and skew, active over 90 days.
    """
    CREATE TEMP TABLE seed_conversations AS
    SELECT raw.n, gen_random_uuid() AS id, c.id AS church_id, raw.last_message_at
    FROM (
        SELECT n, random() AS r_church,
               CAST(:now AS timestamptz) - random() * interval '90 days' AS last_message_at
        FROM generate_series(1, 5000) n
    ) raw
    JOIN seed_churches c
      ON c.n = CASE WHEN raw.r_church < 0.4 THEN 1 ELSE 2 + floor((raw.r_church - 0.4) / 0.6 * 49)::int END
    """,
    """
    INSERT INTO conversations (id, church_id, church_number, contact_enc, contact_hash, last_message_at, unread_count,
                               created_at)
    SELECT id, church_id, '+15005550006', decode(repeat(md5(n::text), 3), 'hex'),
           sha256(convert_to('+1556' || lpad(n::text, 7, '0'), 'UTF8')), last_message_at, n % 3,
           last_message_at - interval '30 days'
    FROM seed_conversations
    """,
    # 50,000 conversation messages in the 30 days before each conversation's last one: 10 per
    # conversation on average, but a tenth of them in 20 long threads (the pastor and the worship leader).
    """
    INSERT INTO conversation_messages (id, conversation_id, direction, body_enc, created_at)
    SELECT gen_random_uuid(), c.id, CASE WHEN raw.r_dir < 0.5 THEN 'inbound' ELSE 'outbound' END,
           decode(repeat('c0', 47), 'hex'), c.last_message_at - raw.r_age * interval '30 days'
    FROM (
        SELECT CASE WHEN random() < 0.1 THEN 1 + floor(random() * 20)::int
                    ELSE 1 + floor(random() * 5000)::int END AS conv_n,
               random() AS r_dir, random() AS r_age
        FROM generate_series(1, 50000)
    ) raw
    JOIN seed_conversations c ON c.n = raw.conv_n
    """,
    # What autovacuum would have done by now: statistics and the visibility map (index-only scans).
    "VACUUM (ANALYZE) churches, subscriptions, messages, conversations, conversation_messages",
]


@pytest.fixture(scope="module")
def seeded(pg_server_url: str, template_database: str) -> Iterator[tuple[Pool, dict[str, Any]]]:
    """One realistically skewed database for all the plan tests of this module."""
    name = f"kt_plans_{uuid.uuid4().hex[:12]}"
    admin = Pool(parse_database_url(pg_server_url))
    admin.run(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    pool = Pool(parse_database_url(with_database(pg_server_url, name)))
    try:
        with pool.connection() as conn:
            for sql in _SEED_SQL:
                conn.run(sql, **({"now": NOW} if ":now" in sql else {}))
            churches = {row[0]: row[1] for row in conn.run("SELECT n, id FROM seed_churches WHERE n IN (1, 30)")}
        yield pool, _realistic_params(pool, big=churches[1], small=churches[30])
    finally:
        pool.close()
        admin.run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _realistic_params(pool: Pool, *, big: UUID, small: UUID) -> dict[str, Any]:
    """Cursors and ids the application would really pass: taken from the seeded rows."""

    def one(sql: str, **params: Any) -> list[Any]:
        return pool.run(sql, **params)[0]

    by_time = "SELECT created_at, id FROM messages WHERE church_id = :c ORDER BY created_at DESC, id DESC OFFSET :o LIMIT 1"
    busiest_church, busiest = one(
        "SELECT c.church_id, c.id FROM conversation_messages cm JOIN conversations c ON c.id = cm.conversation_id"
        " GROUP BY c.church_id, c.id ORDER BY count(*) DESC LIMIT 1"
    )
    return {
        "big": big,
        "small": small,
        "deep": one(by_time, c=big, o=2000),
        "small_deep": one(by_time, c=small, o=200),
        "conversation_cursor": one(
            "SELECT last_message_at, id FROM conversations WHERE church_id = :c"
            " ORDER BY last_message_at DESC, id DESC OFFSET 100 LIMIT 1",
            c=big,
        ),
        "busiest_church": busiest_church,
        "busiest": busiest,
        "thread_cursor": one(
            "SELECT created_at, id FROM conversation_messages WHERE conversation_id = :c"
            " ORDER BY created_at DESC, id DESC OFFSET 60 LIMIT 1",
            c=busiest,
        ),
    }


@dataclass(frozen=True)
class PlanCase:
    sql: str
    params: Callable[[dict[str, Any]], dict[str, Any]]
    indexes: frozenset[str]  # every one must appear in the plan
    # Lists: the index must deliver the page in order (no sort of a church's rows or of a tie group).
    # Not asked of the scheduler's queries: their partial indexes hold only in-flight rows, and the
    # planner, underestimating them (next_attempt_at / lease_until are set only in those statuses, and it
    # multiplies the two selectivities), rightly or not sorts that small set; fine either way.
    in_index_order: bool = True
    index_only_on_messages: bool = False  # usage: every column it reads is in messages_church_created


def _cursor(pair: list[Any]) -> dict[str, Any]:
    return {"before_at": pair[0], "before_id": pair[1]}


PLAN_CASES: dict[str, PlanCase] = {
    "messages first page, big church": PlanCase(
        LIST_FIRST_PAGE_SQL, lambda p: {"church_id": p["big"], "limit": 50}, frozenset({"messages_church_created"})
    ),
    "messages later page, big church": PlanCase(
        LIST_NEXT_PAGE_SQL,
        lambda p: {"church_id": p["big"], "limit": 50, **_cursor(p["deep"])},
        frozenset({"messages_church_created"}),
    ),
    "messages later page, small church": PlanCase(
        LIST_NEXT_PAGE_SQL,
        lambda p: {"church_id": p["small"], "limit": 50, **_cursor(p["small_deep"])},
        frozenset({"messages_church_created"}),
    ),
    "conversations first page": PlanCase(
        LIST_CONVERSATIONS_FIRST_PAGE_SQL,
        lambda p: {"church_id": p["big"], "limit": 50},
        frozenset({"conversations_church_last"}),
    ),
    "conversations later page": PlanCase(
        LIST_CONVERSATIONS_NEXT_PAGE_SQL,
        lambda p: {"church_id": p["big"], "limit": 50, **_cursor(p["conversation_cursor"])},
        frozenset({"conversations_church_last"}),
    ),
    "conversation messages first page": PlanCase(
        LIST_CONVERSATION_MESSAGES_FIRST_PAGE_SQL,
        lambda p: {"church_id": p["busiest_church"], "conversation_id": p["busiest"], "limit": 50},
        frozenset({"conversation_messages_conv_created", "conversations_pkey"}),
    ),
    "conversation messages later page": PlanCase(
        LIST_CONVERSATION_MESSAGES_NEXT_PAGE_SQL,
        lambda p: {
            "church_id": p["busiest_church"],
            "conversation_id": p["busiest"],
            "limit": 50,
            **_cursor(p["thread_cursor"]),
        },
        frozenset({"conversation_messages_conv_created", "conversations_pkey"}),
    ),
    "usage for current period, big church": PlanCase(
        USAGE_FOR_CURRENT_PERIOD_SQL,
        lambda p: {"church_id": p["big"], "now": NOW},
        frozenset({"subscriptions_church_status", "messages_church_created"}),
        in_index_order=False,
        index_only_on_messages=True,
    ),
    "usage for current period, small church": PlanCase(
        USAGE_FOR_CURRENT_PERIOD_SQL,
        lambda p: {"church_id": p["small"], "now": NOW},
        frozenset({"subscriptions_church_status", "messages_church_created"}),
        in_index_order=False,
        index_only_on_messages=True,
    ),
    "due for attempt": PlanCase(
        DUE_FOR_ATTEMPT_SQL, lambda p: {"now": NOW, "limit": 500}, frozenset({"messages_due"}), in_index_order=False
    ),
    "expired leases": PlanCase(
        EXPIRED_LEASES_SQL, lambda p: {"now": NOW, "limit": 500}, frozenset({"messages_lease"}), in_index_order=False
    ),
}


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(PLAN_CASES))
def test_hot_query_is_answered_from_its_index(seeded, name):
    pool, seeded_params = seeded
    case = PLAN_CASES[name]
    params = case.params(seeded_params)
    with pool.connection() as conn:
        # Rows first: the parameters are realistic only if the query has something to find.
        rows = conn.run(case.sql, **params)
        raw = conn.run("EXPLAIN (FORMAT JSON) " + case.sql, **params)[0][0]
    assert rows, f"{name}: the seeded data gives this query nothing to return"
    plan = (json.loads(raw) if isinstance(raw, str) else raw)[0]["Plan"]
    shown = json.dumps(plan, indent=1, default=str)
    nodes = list(_nodes(plan))

    seq_scans = [n.get("Relation Name") for n in nodes if "Seq Scan" in n["Node Type"] and n.get("Relation Name") in BIG_TABLES]
    assert not seq_scans, f"{name}: sequential scan on {seq_scans}; plan:\n{shown}"
    used = {n["Index Name"] for n in nodes if "Index Name" in n}
    assert case.indexes <= used, f"{name}: expected indexes {sorted(case.indexes)}, used {sorted(used)}; plan:\n{shown}"
    if case.in_index_order:
        sorts = [n["Node Type"] for n in nodes if "Sort" in n["Node Type"]]
        assert not sorts, f"{name}: plan sorts ({sorts}) instead of reading in index order; plan:\n{shown}"
    if case.index_only_on_messages:
        on_messages = [n["Node Type"] for n in nodes if n.get("Index Name") == "messages_church_created"]
        assert on_messages == ["Index Only Scan"], f"{name}: messages read by {on_messages}, not index-only; plan:\n{shown}"
