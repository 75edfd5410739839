"""The claim fence and outcome writes, against real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from common.ids import uuid7
from common.messages import store
from common.messages.store import NewMessages, Outcome
from common.privacy import crypto


@pytest.fixture
def church(pool, env):  # env: the keys that seal numbers and bodies
    church_id = str(uuid7())
    pool.run("INSERT INTO churches (id, name) VALUES (CAST(:id AS uuid), 'c')", id=church_id)
    return church_id


def _insert(pool, church_id, n, *, statuses=None, deadline=timedelta(hours=4), next_at=None):
    ids = [str(uuid7()) for _ in range(n)]
    broadcast = str(uuid7())
    now = datetime.now(UTC)
    with pool.transaction() as conn:
        conn.run(
            "INSERT INTO broadcasts (id, church_id, channel, lane) VALUES (CAST(:b AS uuid), CAST(:c AS uuid), 'sms', 'bulk')",
            b=broadcast, c=church_id,
        )  # fmt: skip
        store.insert_messages(
            conn,
            NewMessages(
                church_id=church_id, broadcast_id=broadcast, channel="sms", lane="bulk", from_address="+13125550100",
                subject=None, body="hello", media_urls=None, encoding="GSM-7", segments=1, max_attempts=4,
                next_attempt_at=[next_at or now] * n, deadline_at=[now + deadline] * n, recipient_tz=[None] * n,
                ids=ids, to_addresses=[f"+1312555{1000 + i:04d}" for i in range(n)],
                statuses=statuses or ["queued"] * n,
            ),
        )  # fmt: skip
    return ids


def test_a_message_can_be_claimed_once(pool, church):
    ids = _insert(pool, church, 3)
    first = store.claim(pool, ids, lease_s=30)
    second = store.claim(pool, ids, lease_s=30)
    assert {m.id for m in first.sendable} == set(ids)
    assert second.sendable == [] and second.settled == []
    assert all(m.attempts == 1 for m in first.sendable)


def test_concurrent_claimants_split_the_rows_without_overlap(pool, church):
    ids = _insert(pool, church, 500)
    results: list[set[str]] = []
    barrier = threading.Barrier(4)

    def claimant() -> None:
        barrier.wait()
        results.append({m.id for m in store.claim(pool, ids, lease_s=30).sendable})

    threads = [threading.Thread(target=claimant) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    union: set[str] = set().union(*results)
    assert union == set(ids)
    assert sum(len(r) for r in results) == len(ids)


def test_outcomes_are_fenced_by_the_claim_token(pool, church):
    (mid,) = _insert(pool, church, 1)
    old = store.claim(pool, [mid], lease_s=30)
    pool.run("UPDATE messages SET lease_until = now() - interval '1 second' WHERE id = CAST(:id AS uuid)", id=mid)
    new = store.claim(pool, [mid], lease_s=30)  # the lease ran out: another claimant takes over
    assert [m.id for m in new.sendable] == [mid]
    assert store.record_outcomes(pool, old.token, [Outcome(mid, "sent", "sent", provider_message_id="p-old")]) == set()
    written = store.record_outcomes(pool, new.token, [Outcome(mid, "sent", "sent", provider_message_id="p-new")])
    assert written == {mid}
    row = pool.run(
        "SELECT status, provider_message_id, attempts, sent_at IS NOT NULL FROM messages WHERE id = CAST(:id AS uuid)", id=mid
    )
    assert row == [["sent", "p-new", 2, True]]
    history = pool.run("SELECT attempt, outcome FROM message_attempts WHERE message_id = CAST(:id AS uuid)", id=mid)
    assert history == [[2, "sent"]]


def test_claim_suppresses_opted_out_and_expires_past_deadline(pool, church):
    opted, late, fine = _insert(pool, church, 3)
    [[to_enc, to_hash]] = pool.run("SELECT to_enc, to_hash FROM messages WHERE id = CAST(:id AS uuid)", id=opted)
    assert to_hash == crypto.lookup_hash(church, crypto.unseal(to_enc, "address"))
    pool.run(
        "INSERT INTO opt_outs (church_id, address_enc, address_hash, source) VALUES (CAST(:c AS uuid), :e, :h, 'keyword')",
        c=church, e=to_enc, h=to_hash,
    )  # fmt: skip
    pool.run("UPDATE messages SET deadline_at = now() - interval '1 minute' WHERE id = CAST(:id AS uuid)", id=late)
    claim = store.claim(pool, [opted, late, fine], lease_s=30)
    assert [m.id for m in claim.sendable] == [fine]
    assert {(m.id, m.status) for m in claim.settled} == {(opted, "suppressed"), (late, "expired")}


def test_not_yet_due_is_not_claimable(pool, church):
    (mid,) = _insert(pool, church, 1, statuses=["scheduled"], next_at=datetime.now(UTC) + timedelta(hours=1))
    assert store.claim(pool, [mid], lease_s=30).ids == set()


def test_carrier_opt_out_is_recorded(pool, church):
    (mid,) = _insert(pool, church, 1)
    claim = store.claim(pool, [mid], lease_s=30)
    store.record_outcomes(pool, claim.token, [Outcome(mid, "suppressed", "opted_out", error_code="40300", http_status=409)])
    [[source, address_enc, address_hash]] = pool.run("SELECT source, address_enc, address_hash FROM opt_outs")
    assert source == "carrier_40300"
    assert crypto.unseal(address_enc, "address") == "+13125551000"
    assert address_hash == crypto.lookup_hash(church, "+13125551000")
    assert pool.run("SELECT action, source, address_hash FROM opt_out_events") == [["opt_out", "carrier_40300", address_hash]]


def test_rows_store_numbers_and_one_sealed_body_and_the_claim_opens_them(pool, church):
    ids = _insert(pool, church, 3)
    numbers = ["+13125551000", "+13125551001", "+13125551002"]
    rows = pool.run("SELECT to_enc, to_hash, body_enc, subject_enc FROM messages")
    assert len({bytes(r[2]) for r in rows}) == 1  # the body is sealed once for the whole request
    assert sorted((crypto.unseal(r[0], "address"), bytes(r[1])) for r in rows) == list(
        zip(numbers, crypto.lookup_hashes(church, numbers), strict=True)
    )
    assert crypto.unseal(rows[0][2], "text") == "hello" and rows[0][3] is None
    claimed = sorted(store.claim(pool, ids, lease_s=30).sendable, key=lambda m: m.to_address)
    assert [(m.to_address, m.body, m.subject) for m in claimed] == [
        ("+13125551000", "hello", None), ("+13125551001", "hello", None), ("+13125551002", "hello", None),
    ]  # fmt: skip
