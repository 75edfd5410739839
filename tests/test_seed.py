from __future__ import annotations

import pytest

from common.auth.api_keys import hash_key, parse_key
from common.privacy.crypto import lookup_hash, unseal
from common.seed import DEMO_MEMBERS, seed_demo


@pytest.mark.smoke
def test_seed_creates_a_usable_demo_church_and_is_idempotent(env, pool):
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
    # Members as every contact is stored: numbers and names sealed, numbers found by their lookup hashes.
    contacts = pool.run("SELECT phone_enc, phone_hash, first_name_enc, last_name_enc FROM contacts ORDER BY phone_hash")
    assert sorted((unseal(f, "name"), unseal(la, "name"), unseal(p, "address")) for p, _, f, la in contacts) == sorted(
        DEMO_MEMBERS)
    assert sorted(bytes(h) for _, h, _, _ in contacts) == sorted(lookup_hash(first.church_id, m[2]) for m in DEMO_MEMBERS)
    assert not any(m[0].encode() in bytes(f) for m in DEMO_MEMBERS for _, _, f, _ in contacts)


def test_a_demo_subscription_that_ran_out_is_renewed_on_the_next_seed(env, pool):
    seed_demo(pool)
    pool.run("UPDATE subscriptions SET period_start = now() - interval '60 days', period_end = now() - interval '30 days'")
    seed_demo(pool)
    current = pool.run("SELECT count(*) FROM subscriptions WHERE period_start <= now() AND period_end > now()")
    assert current == [[1]]
