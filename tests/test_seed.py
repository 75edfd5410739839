from __future__ import annotations

import pytest

from common.auth.api_keys import hash_key, parse_key
from common.seed import DEMO_MEMBERS, seed_demo


@pytest.mark.smoke
def test_seed_creates_a_usable_demo_church_and_is_idempotent(pool):
    first = seed_demo(pool)
    second = seed_demo(pool)
    assert first.church_id == second.church_id
    assert pool.run("SELECT count(*) FROM churches")[0][0] == 1
    assert pool.run("SELECT count(*) FROM group_members WHERE group_id = :g", g=second.group_id)[0][0] == len(
        DEMO_MEMBERS
    )
    # Only the newest key works; keys are stored only as hashes.
    live = pool.run("SELECT prefix, key_hash FROM api_keys WHERE revoked_at IS NULL")
    assert live == [[parse_key(second.api_key), hash_key(second.api_key)]]
    stored = pool.run("SELECT key_hash FROM api_keys")
    assert all(second.api_key.encode() not in bytes(row[0]) for row in stored)
    assert pool.run("SELECT count(*) FROM sender_numbers WHERE is_default")[0][0] == 1


def test_a_demo_subscription_that_ran_out_is_renewed_on_the_next_seed(pool):
    seed_demo(pool)
    pool.run("UPDATE subscriptions SET period_start = now() - interval '60 days', period_end = now() - interval '30 days'")
    seed_demo(pool)
    current = pool.run("SELECT count(*) FROM subscriptions WHERE period_start <= now() AND period_end > now()")
    assert current == [[1]]
