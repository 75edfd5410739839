"""API keys end to end: create (shown once), several per church, revoke (at once, even cached), the last key,
the audit trail, the Redis cache (hot path without PostgreSQL, races with revokes, Redis down), the operator
routes and ``koinonia keys``. Real PostgreSQL and Redis, the send function under functions-framework.
"""

from __future__ import annotations

import hashlib
import json
import threading
import uuid

import pytest

import common.cli
from common.api_errors import Conflict, Unauthorized
from common.auth import keys
from common.auth.authenticate import authenticate
from common.auth.cache import KeyCache, lookup_active
from common.config import parse_database_url
from common.db.pool import DatabaseUnavailable, Pool
from common.runtime import get_runtime
from tests.factories import Tenant, make_church
from tests.helpers import function_client, rebuild_singletons, set_env

OPERATOR_TOKEN = "op-" + "Zq81w" * 8  # >= 32 characters, as settings require


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def keys_env(send_env, monkeypatch):
    set_env(monkeypatch, OPERATOR_TOKEN=OPERATOR_TOKEN)
    yield
    rebuild_singletons()


@pytest.fixture
def client(keys_env):
    return function_client("send")


@pytest.fixture
def tenant(keys_env, pool) -> Tenant:
    return make_church(pool, "First Church", sender="+13125550100")


@pytest.fixture
def other(keys_env, pool) -> Tenant:
    return make_church(pool, "Second Church", sender="+13125550199")


def create(client, headers, name: str = "office laptop") -> dict:
    response = client.post("/keys", json={"name": name}, headers=headers)
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def works(client, key: str) -> bool:
    response = client.get("/messages", headers=bearer(key))
    assert response.status_code in (200, 401), response.get_json()
    return response.status_code == 200


def cache_entry(prefix: str) -> str | None:
    gate = get_runtime().redis
    value: str | None = gate.client.get(gate.key("auth", prefix))
    return value


def audit_rows(pool, church_id: str) -> list[tuple[str, str, str | None, dict]]:
    rows = pool.run("SELECT action, actor, target, details FROM audit_log WHERE church_id = CAST(:c AS uuid) ORDER BY id",
                    c=church_id)  # fmt: skip
    return [(r[0], r[1], r[2], r[3]) for r in rows]


def own_key_id(pool, tenant: Tenant) -> str:
    prefix = tenant.api_key.split("_")[1]
    return str(pool.run("SELECT id::text FROM api_keys WHERE prefix = :p", p=prefix)[0][0])


# -- create, list, several keys --------------------------------------------------------------------------------


def test_a_new_key_is_shown_once_works_and_only_its_hash_is_stored(client, tenant, pool):
    body = create(client, tenant.auth, "office laptop")
    assert set(body) == {"id", "name", "prefix", "key", "created_at"}
    assert body["name"] == "office laptop" and body["key"].startswith(f"kn_{body['prefix']}_")
    assert works(client, body["key"])

    [[prefix, stored_hash, name]] = pool.run("SELECT prefix, key_hash, name FROM api_keys WHERE id = CAST(:id AS uuid)",
                                             id=body["id"])  # fmt: skip
    assert (prefix, name) == (body["prefix"], "office laptop")
    assert bytes(stored_hash) == hashlib.sha256(body["key"].encode()).digest()
    everything = json.dumps(pool.run("SELECT * FROM api_keys"), default=str)
    secret = body["key"].removeprefix(f"kn_{body['prefix']}_")  # the secret may itself hold "_" (base64url)
    assert body["key"] not in everything and secret not in everything

    listed = client.get("/keys", headers=tenant.auth)
    assert listed.status_code == 200
    text = listed.get_data(as_text=True)
    assert body["key"] not in text and secret not in text and bytes(stored_hash).hex() not in text
    assert body["key"] not in client.get("/audit", headers=tenant.auth).get_data(as_text=True)
    [mine] = [k for k in listed.get_json()["data"] if k["id"] == body["id"]]
    assert set(mine) == {"id", "name", "prefix", "active", "created_at", "last_used_at", "revoked_at"}
    assert mine["active"] is True and mine["revoked_at"] is None


def test_several_keys_per_church_all_work_for_the_same_church(client, tenant, pool):
    made = [create(client, tenant.auth, f"app {i}") for i in range(3)]
    for key in [tenant.api_key] + [m["key"] for m in made]:
        caller = authenticate(pool, f"Bearer {key}")
        assert caller.church_id == tenant.church_id
        assert works(client, key)
    assert len({m["prefix"] for m in made}) == 3
    listed = client.get("/keys", headers=bearer(made[0]["key"])).get_json()["data"]
    assert {k["id"] for k in listed} == {m["id"] for m in made} | {own_key_id(pool, tenant)}


def test_a_key_needs_a_sensible_name_and_a_body_without_surprises(client, tenant):
    assert client.post("/keys", headers=tenant.auth).get_json()["name"] == "default"  # no body: a 'default' key
    for payload, field in [({"name": ""}, "name"), ({"name": "x" * 101}, "name"), ({"name": 7}, "name"),
                           ({"name": "a\nb"}, "name"), ({"nom": "x"}, "nom"), (["x"], "")]:  # fmt: skip
        response = client.post("/keys", json=payload, headers=tenant.auth)
        assert response.status_code == 422, payload
        error = response.get_json()["error"]
        assert (error["code"], error["field"]) == ("validation_failed", field) and error["message"]
    bad_json = client.post("/keys", data="{", headers={**tenant.auth, "Content-Type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.get_json()["error"]["code"] == "invalid_json"


def test_a_church_has_at_most_ten_active_keys(client, tenant):
    for i in range(keys.max_active_keys - 1):
        create(client, tenant.auth, f"k{i}")
    response = client.post("/keys", json={"name": "one too many"}, headers=tenant.auth)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "too_many_keys" and "revoke one" in error["message"]


# -- revoke ------------------------------------------------------------------------------------------------------------


def test_revoke_stops_a_key_at_once_even_with_a_warm_cache(client, tenant, pool):
    new = create(client, tenant.auth, "old laptop")
    assert works(client, new["key"])  # the cache is warm now
    assert json.loads(cache_entry(new["prefix"]) or "{}").get("c") == tenant.church_id

    response = client.delete(f"/keys/{new['id']}", headers=tenant.auth)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["id"] == new["id"] and body["active"] is False and body["revoked_at"]
    assert "note" not in body  # Redis was told
    assert cache_entry(new["prefix"]) is None
    assert not works(client, new["key"])
    assert function_client("dlq-drain").get("/dead-letters", headers=bearer(new["key"])).status_code == 401
    assert works(client, tenant.api_key)

    again = client.delete(f"/keys/{new['id']}", headers=tenant.auth)  # idempotent: same answer, nothing new written
    assert again.status_code == 200 and again.get_json()["revoked_at"] == body["revoked_at"]
    assert [a for a in audit_rows(pool, tenant.church_id) if a[0] == "api_key.revoked"] == [
        ("api_key.revoked", f"church:{tenant.api_key.split('_')[1]}", new["id"], {"prefix": new["prefix"]})
    ]
    listed = {k["id"]: k for k in client.get("/keys", headers=tenant.auth).get_json()["data"]}
    assert listed[new["id"]]["active"] is False


def test_a_church_can_revoke_the_key_it_is_calling_with_when_another_is_active(client, tenant, pool):
    new = create(client, tenant.auth)
    assert client.delete(f"/keys/{own_key_id(pool, tenant)}", headers=tenant.auth).status_code == 200
    assert not works(client, tenant.api_key)
    assert works(client, new["key"])


def test_the_last_active_key_cannot_be_revoked(client, tenant, pool):
    response = client.delete(f"/keys/{own_key_id(pool, tenant)}", headers=tenant.auth)
    assert response.status_code == 409
    error = response.get_json()["error"]
    assert error["code"] == "last_active_key" and "create another" in error["message"]
    assert works(client, tenant.api_key)
    assert pool.run("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")[0][0] == 1
    assert [a[0] for a in audit_rows(pool, tenant.church_id)] == []


def test_two_revokes_at_once_never_leave_a_church_without_a_key(client, tenant, pool):
    second = create(client, tenant.auth)
    ids = [own_key_id(pool, tenant), second["id"]]
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def revoke(key_id: str) -> None:
        worker_pool = Pool(pool.target)
        try:
            barrier.wait()
            keys.revoke_key(worker_pool, tenant.church_id, key_id, actor="operator", cache=None)
            outcomes.append("revoked")
        except Conflict as exc:
            outcomes.append(exc.code)
        finally:
            worker_pool.close()

    threads = [threading.Thread(target=revoke, args=(k,)) for k in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["last_active_key", "revoked"]
    assert pool.run("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")[0][0] == 1


def test_another_churchs_key_is_not_found_and_stays_active(client, tenant, other, pool):
    theirs = own_key_id(pool, other)
    for key_id in (theirs, str(uuid.uuid4()), "not-an-id"):
        response = client.delete(f"/keys/{key_id}", headers=tenant.auth)
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"
    assert works(client, other.api_key)
    assert pool.run("SELECT revoked_at FROM api_keys WHERE id = CAST(:id AS uuid)", id=theirs) == [[None]]


# -- the audit trail ------------------------------------------------------------------------------------------------


def test_creates_and_revokes_are_in_the_churchs_audit_trail_in_keyset_pages(client, tenant, other, pool):
    caller = f"church:{tenant.api_key.split('_')[1]}"
    made = [create(client, tenant.auth, f"k{i}") for i in range(3)]
    client.delete(f"/keys/{made[0]['id']}", headers=tenant.auth)
    create(client, other.auth)  # another church's entry never shows up in ours

    assert audit_rows(pool, tenant.church_id) == [
        *[("api_key.created", caller, m["id"], {"prefix": m["prefix"]}) for m in made],
        ("api_key.revoked", caller, made[0]["id"], {"prefix": made[0]["prefix"]}),
    ]
    seen: list[dict] = []
    cursor = None
    for _ in range(6):
        query = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = client.get("/audit", query_string=query, headers=tenant.auth).get_json()
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [(e["action"], e["target"]) for e in seen] == [
        ("api_key.revoked", made[0]["id"]), *[("api_key.created", m["id"]) for m in reversed(made)]
    ]
    assert set(seen[0]) == {"id", "action", "actor", "target", "details", "created_at"}
    text = json.dumps(seen)
    assert tenant.church_id not in text and all(m["key"] not in text for m in made)

    for query, code in [({"cursor": "bm9wZQ"}, "invalid_cursor"), ({"limit": "0"}, "invalid_limit"),
                        ({"church_id": other.church_id}, "invalid_parameter")]:  # fmt: skip
        response = client.get("/audit", query_string=query, headers=tenant.auth)
        assert response.status_code == 400 and response.get_json()["error"]["code"] == code


# -- the cache -------------------------------------------------------------------------------------------------------


def test_a_warm_cache_authenticates_without_touching_postgresql(tenant, pool, redis_gate):
    cache = KeyCache(redis_gate, 60)
    header = f"Bearer {tenant.api_key}"
    assert authenticate(pool, header, cache=cache).church_id == tenant.church_id  # miss: PostgreSQL, then filled

    untouched = Pool(pool.target)  # a working pool to the same database, never used so far
    try:
        assert authenticate(untouched, header, cache=cache).church_id == tenant.church_id
        assert untouched.stats().open == 0, "the warm path opened a PostgreSQL connection"
        cache.forget(tenant.api_key.split("_")[1])  # the control: a miss does reach PostgreSQL
        assert authenticate(untouched, header, cache=cache).church_id == tenant.church_id
        assert untouched.stats().open == 1
    finally:
        untouched.close()


def test_the_send_function_trusts_its_cache_until_a_revoke_drops_it(client, tenant, pool):
    """Revoked behind the API's back (SQL, no Redis): the cached entry still answers, so the hot path
    read no key row; once the entry is gone PostgreSQL says no. (Real revokes drop it: see above.)"""
    second = create(client, tenant.auth)
    assert works(client, second["key"])
    pool.run("UPDATE api_keys SET revoked_at = now() WHERE id = CAST(:id AS uuid)", id=second["id"])
    assert works(client, second["key"])
    assert KeyCache(get_runtime().redis, 60).forget(second["prefix"])
    assert not works(client, second["key"])
    assert cache_entry(second["prefix"]) is None  # a refused key is not cached


def test_a_fill_that_read_the_row_before_a_revoke_cannot_bring_the_key_back(client, tenant, pool):
    second = create(client, tenant.auth)
    cache = KeyCache(get_runtime().redis, 60)
    stale = lookup_active(pool, second["prefix"])  # a request read the row ...
    assert stale is not None
    keys.revoke_key(pool, tenant.church_id, second["id"], actor="operator", cache=cache)  # ... the revoke commits, drops
    cache.fill(pool, second["prefix"], stale)  # ... then that request fills the cache
    assert cache_entry(second["prefix"]) is None
    assert not works(client, second["key"])
    # Why the re-check matters: the same stale entry written blindly would let the revoked key in.
    gate = get_runtime().redis
    gate.client.set(gate.key("auth", second["prefix"]), stale.encode(), ex=60)
    assert works(client, second["key"])
    cache.forget(second["prefix"])


def test_a_fill_that_cannot_re_check_leaves_no_entry(client, tenant, pool):
    cache = KeyCache(get_runtime().redis, 60)
    prefix = tenant.api_key.split("_")[1]
    active = lookup_active(pool, prefix)
    assert active is not None
    nowhere = Pool(parse_database_url("postgresql://postgres@127.0.0.1:1/none"))  # PostgreSQL gone after the read
    with pytest.raises(DatabaseUnavailable):
        cache.fill(nowhere, prefix, active)
    assert cache_entry(prefix) is None


def test_a_cached_prefix_never_lets_a_wrong_secret_in(client, tenant):
    assert works(client, tenant.api_key)
    prefix = tenant.api_key.split("_")[1]
    assert cache_entry(prefix) is not None
    forged = f"kn_{prefix}_{'A' * 32}"
    response = client.get("/messages", headers=bearer(forged))
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"


def test_keys_still_verify_create_and_revoke_from_postgresql_with_redis_unreachable(client, tenant, pool, monkeypatch):
    second = create(client, tenant.auth)
    assert works(client, second["key"])  # cached in the real Redis
    set_env(monkeypatch, REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens there
    for _ in range(5):  # through the failures that open the breaker, and with it open
        assert works(client, tenant.api_key)
    third = create(client, tenant.auth)
    assert works(client, third["key"])
    response = client.delete(f"/keys/{second['id']}", headers=tenant.auth)
    assert response.status_code == 200
    assert "up to 60 s" in response.get_json()["note"]  # the real Redis still holds its entry, for the TTL at most
    assert not works(client, second["key"])  # here, verified in PostgreSQL
    assert [a[0] for a in audit_rows(pool, tenant.church_id)][-1] == "api_key.revoked"


def test_a_deleted_church_is_forgotten_by_the_cache(client, tenant, pool):
    assert works(client, tenant.api_key)
    pool.run("UPDATE churches SET deleted_at = now() WHERE id = CAST(:c AS uuid)", c=tenant.church_id)
    assert keys.forget_church(pool, tenant.church_id, KeyCache(get_runtime().redis, 60))
    assert not works(client, tenant.api_key)


def test_last_used_at_is_recorded_but_not_written_on_every_request(client, tenant, pool):
    new = create(client, tenant.auth)

    def last_used():
        return pool.run("SELECT last_used_at FROM api_keys WHERE id = CAST(:id AS uuid)", id=new["id"])[0][0]

    assert last_used() is None
    assert works(client, new["key"])
    assert last_used() is not None
    pool.run("UPDATE api_keys SET last_used_at = '2000-01-01T00:00:00Z' WHERE id = CAST(:id AS uuid)", id=new["id"])
    for _ in range(3):
        assert works(client, new["key"])
    assert last_used().year == 2000  # within the minute: no write


def test_a_missing_or_malformed_key_is_401_with_what_to_send(client):
    for headers, says in [({}, "Authorization: Bearer"), ({"Authorization": "Basic abc"}, "Authorization: Bearer"),
                          (bearer("nope"), "unknown or revoked")]:  # fmt: skip
        response = client.get("/keys", headers=headers)
        assert response.status_code == 401 and says in response.get_json()["error"]["message"]
    nowhere = Pool(parse_database_url("postgresql://postgres@127.0.0.1:1/none"))  # a malformed key needs no lookup
    with pytest.raises(Unauthorized):
        authenticate(nowhere, "Bearer kn_short")


# -- the operator ---------------------------------------------------------------------------------------------------------


OPERATOR = bearer(OPERATOR_TOKEN)


def test_the_operator_manages_any_churchs_keys_and_reads_its_audit(client, tenant, other, pool):
    made = client.post(f"/churches/{tenant.church_id}/keys", json={"name": "support"}, headers=OPERATOR)
    assert made.status_code == 201, made.get_json()
    new = made.get_json()
    assert authenticate(pool, f"Bearer {new['key']}").church_id == tenant.church_id
    listed = client.get(f"/churches/{tenant.church_id}/keys", headers=OPERATOR).get_json()["data"]
    assert {k["id"] for k in listed} == {new["id"], own_key_id(pool, tenant)}
    assert new["key"] not in json.dumps(listed)

    assert client.delete(f"/churches/{other.church_id}/keys/{new['id']}", headers=OPERATOR).status_code == 404
    revoked = client.delete(f"/churches/{tenant.church_id}/keys/{new['id']}", headers=OPERATOR)
    assert revoked.status_code == 200 and revoked.get_json()["active"] is False
    last = client.delete(f"/churches/{tenant.church_id}/keys/{own_key_id(pool, tenant)}", headers=OPERATOR)
    assert last.status_code == 409 and last.get_json()["error"]["code"] == "last_active_key"

    trail = client.get(f"/churches/{tenant.church_id}/audit", headers=OPERATOR).get_json()["data"]
    assert [(e["action"], e["actor"], e["target"]) for e in trail] == [
        ("api_key.revoked", "operator", new["id"]), ("api_key.created", "operator", new["id"])
    ]
    assert client.get(f"/churches/{other.church_id}/audit", headers=OPERATOR).get_json()["data"] == []

    missing = str(uuid.uuid4())
    for response in (client.post(f"/churches/{missing}/keys", json={}, headers=OPERATOR),
                     client.get(f"/churches/{missing}/keys", headers=OPERATOR),
                     client.get("/churches/nope/keys", headers=OPERATOR),
                     client.delete(f"/churches/{missing}/keys/{own_key_id(pool, tenant)}", headers=OPERATOR)):  # fmt: skip
        assert response.status_code == 404 and response.get_json()["error"]["code"] == "not_found"


def test_operator_routes_refuse_church_keys_and_church_routes_refuse_the_operator(client, tenant, pool):
    key_id = own_key_id(pool, tenant)
    operator_routes = [("POST", f"/churches/{tenant.church_id}/keys"), ("GET", f"/churches/{tenant.church_id}/keys"),
                       ("DELETE", f"/churches/{tenant.church_id}/keys/{key_id}"),
                       ("GET", f"/churches/{tenant.church_id}/audit")]  # fmt: skip
    for method, path in operator_routes:
        response = client.open(path, method=method, json={}, headers=tenant.auth)
        assert response.status_code == 403 and response.get_json()["error"]["code"] == "operator_only", path
        for headers in ({}, bearer(OPERATOR_TOKEN[:-1] + "x"), bearer("kn_000000000000_" + "A" * 32)):
            assert client.open(path, method=method, json={}, headers=headers).status_code == 401
    for method, path in [("POST", "/keys"), ("GET", "/keys"), ("DELETE", f"/keys/{key_id}"), ("GET", "/audit")]:
        response = client.open(path, method=method, json={}, headers=OPERATOR)
        assert response.status_code == 403 and response.get_json()["error"]["code"] == "church_key_required", path
    assert works(client, tenant.api_key)
    assert audit_rows(pool, tenant.church_id) == []


def test_without_an_operator_token_configured_there_is_no_operator(client, tenant, monkeypatch):
    monkeypatch.delenv("OPERATOR_TOKEN")
    rebuild_singletons()
    assert client.get(f"/churches/{tenant.church_id}/keys", headers=OPERATOR).status_code == 401
    assert client.get("/keys", headers=OPERATOR).status_code == 401


# -- koinonia keys ------------------------------------------------------------------------------------------------------


def test_the_keys_command_creates_lists_and_revokes(client, tenant, pool, capsys):
    assert common.cli.main(["keys", "create", "--church", tenant.church_id, "--name", "pastor's phone"]) == 0
    out = capsys.readouterr().out
    [key] = [word for word in out.split() if word.startswith("kn_")]
    assert out.count(key) == 1 and "shown once" in out
    assert works(client, key)
    key_id = str(pool.run("SELECT id::text FROM api_keys WHERE prefix = :p", p=key.split("_")[1])[0][0])

    assert common.cli.main(["keys", "list", "--church", tenant.church_id]) == 0
    listing = capsys.readouterr().out
    assert key_id in listing and "pastor's phone" in listing and key.split("_", 2)[2] not in listing

    assert common.cli.main(["keys", "revoke", key_id]) == 0
    assert "revoked" in capsys.readouterr().out
    assert not works(client, key)
    assert common.cli.main(["keys", "revoke", own_key_id(pool, tenant)]) == 2
    assert "create another first" in capsys.readouterr().err
    assert [(a[0], a[1], a[2]) for a in audit_rows(pool, tenant.church_id)] == [
        ("api_key.created", "cli", key_id), ("api_key.revoked", "cli", key_id)
    ]


def test_the_keys_command_says_what_is_wrong(tenant, pool, capsys):
    missing = str(uuid.uuid4())
    assert common.cli.main(["keys", "create", "--church", missing]) == 2
    assert f"no church {missing}" in capsys.readouterr().err
    assert common.cli.main(["keys", "list", "--church", missing]) == 2
    assert f"no church {missing}" in capsys.readouterr().err
    assert common.cli.main(["keys", "revoke", missing]) == 2
    assert "not the key" in capsys.readouterr().err
    assert common.cli.main(["keys", "create", "--church", tenant.church_id, "--name", " "]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        common.cli.main(["keys", "revoke", tenant.api_key])  # the key itself is not an id: refused, not echoed
    err = capsys.readouterr().err
    assert "not an id" in err and tenant.api_key not in err
    assert pool.run("SELECT count(*) FROM api_keys")[0][0] == 1
