"""Tenant isolation, endpoint by endpoint: church B's key with church A's ids finds nothing and changes nothing.

Churches A and B each have messages (one a broadcast, sent with the same Idempotency-Key), a conversation
with messages, a dead letter, a second API key and audit entries. For every route of every function
(read from each ``functions/<name>/main.py``'s ``ROUTES``, so a new route without a case here fails
``test_every_route_of_every_function_has_an_isolation_case``) B calls with A's ids: a 404 (an empty list
or zero counts where the route is a list or a bulk action; 403 on operator routes), a body with none of
A's ids, numbers or texts, B's own data still visible (the case can fail), and A's rows the same
afterwards. Routes that hold no church's data (health, the workers' ticks, carrier webhooks) are listed
in ``NOT_CHURCH_SCOPED`` with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from common.analytics.rebuild import rebuild
from common.auth.authenticate import authenticate
from common.ids import uuid7
from common.privacy import crypto
from tests.factories import Tenant, make_church, numbers
from tests.helpers import ROOT, function_client

FUNCTIONS = sorted(p.parent.name for p in (ROOT / "functions").glob("*/main.py"))
RouteKey = tuple[str, str, str]  # (function, method, path template)


# -- the two churches ---------------------------------------------------------------------------------------


@dataclass
class Church:
    tenant: Tenant
    text: str
    number: str  # a one-to-one recipient
    thread_text: str
    member_number: str  # texted the church: the conversation
    broadcast_id: str = ""
    message_ids: list[str] = field(default_factory=list)
    conversation_id: str = ""
    thread_message_ids: list[str] = field(default_factory=list)
    dead_letter_id: str = ""
    key_ids: list[str] = field(default_factory=list)
    key_prefixes: list[str] = field(default_factory=list)

    @property
    def church_id(self) -> str:
        return self.tenant.church_id

    @property
    def auth(self) -> dict[str, str]:
        return self.tenant.auth

    def secrets(self) -> set[str]:
        """Everything of this church another church must never be shown."""
        return {
            self.church_id, self.tenant.api_key, self.tenant.group_id, self.tenant.sender, self.text, self.number,
            self.thread_text, self.member_number, self.broadcast_id, self.conversation_id, self.dead_letter_id,
            *self.tenant.members, *self.message_ids, *self.thread_message_ids, *self.key_ids, *self.key_prefixes,
        }  # fmt: skip


@dataclass
class World:
    a: Church
    b: Church
    pool: Any
    clients: dict[str, Any]

    def client(self, function: str) -> Any:
        if function not in self.clients:
            self.clients[function] = function_client(function)
        return self.clients[function]


IDEMPOTENCY_KEY = "sunday-2026-12-06"


def _populate(world_clients: dict[str, Any], pool, church: Church) -> None:
    send = world_clients["send"]
    group = send.post("/messages", json={"channel": "sms", "groups": [church.tenant.group_id], "text": church.text},
                      headers={**church.auth, "Idempotency-Key": IDEMPOTENCY_KEY})  # fmt: skip
    assert group.status_code == 202, group.get_json()
    one = send.post("/messages", json={"channel": "sms", "to": church.number, "text": church.text}, headers=church.auth)
    assert one.status_code == 202, one.get_json()
    church.broadcast_id = group.get_json()["broadcast_id"]
    church.message_ids = [r["message_id"] for r in group.get_json()["recipients"] + one.get_json()["recipients"]]

    # A member texted the church (what the webhooks function writes), and the church answered.
    church.conversation_id = str(uuid7())
    church.thread_message_ids = [str(uuid7()), str(uuid7())]
    with pool.transaction() as conn:
        conn.run(
            "INSERT INTO conversations (id, church_id, church_number, contact_enc, contact_hash, unread_count)"
            " VALUES (CAST(:id AS uuid), CAST(:c AS uuid), :n, :m, :h, 1)",
            id=church.conversation_id, c=church.church_id, n=church.tenant.sender,
            m=crypto.seal(church.member_number, "address"), h=crypto.lookup_hash(church.church_id, church.member_number),
        )  # fmt: skip
        for mid, direction in zip(church.thread_message_ids, ("inbound", "outbound"), strict=True):
            conn.run(
                "INSERT INTO conversation_messages (id, conversation_id, direction, body_enc)"
                " VALUES (CAST(:id AS uuid), CAST(:conv AS uuid), :d, :b)",
                id=mid, conv=church.conversation_id, d=direction, b=crypto.seal(f"{church.thread_text} ({direction})", "text"),
            )  # fmt: skip
        # The one-to-one message failed for good: a dead letter (what the consumer writes).
        church.dead_letter_id = str(uuid7())
        failed = church.message_ids[-1]
        conn.run("UPDATE messages SET status = 'failed', last_error_code = '40310' WHERE id = CAST(:id AS uuid)", id=failed)
        conn.run(
            "INSERT INTO dead_letters (id, message_id, church_id, reason, error_code)"
            " VALUES (CAST(:id AS uuid), CAST(:m AS uuid), CAST(:c AS uuid), 'permanent carrier error 40310', '40310')",
            id=church.dead_letter_id, m=failed, c=church.church_id,
        )  # fmt: skip

    # Keys: the factory's, one made through the API (an audit entry), one made and revoked (another).
    for name in ("office", "old laptop"):
        made = send.post("/keys", json={"name": name}, headers=church.auth)
        assert made.status_code == 201, made.get_json()
        church.key_ids.append(made.get_json()["id"])
        church.key_prefixes.append(made.get_json()["prefix"])
    assert send.delete(f"/keys/{church.key_ids[-1]}", headers=church.auth).status_code == 200
    own_prefix = church.tenant.api_key.split("_")[1]
    church.key_prefixes.append(own_prefix)
    church.key_ids.append(str(pool.run("SELECT id::text FROM api_keys WHERE prefix = :p", p=own_prefix)[0][0]))


@pytest.fixture
def world(send_env, pool) -> World:
    a = Church(make_church(pool, "Alpha Church", sender="+13125550100", members=numbers(3, area="415")),
               text="Alpha choir rehearsal moved to 6:15", number="+16465550181",
               thread_text="Alpha prayer request for my mother", member_number="+17735550122")  # fmt: skip
    b = Church(make_church(pool, "Beta Church", sender="+13125550199", members=numbers(2, area="628")),
               text="Beta youth group pizza night", number="+12125550177",
               thread_text="Beta can I bring a friend", member_number="+13475550133")  # fmt: skip
    clients: dict[str, Any] = {}
    clients["send"] = function_client("send")
    _populate(clients, pool, a)
    _populate(clients, pool, b)  # the same Idempotency-Key as A: B's own new broadcast, not A's answer
    assert b.broadcast_id != a.broadcast_id and not set(b.message_ids) & set(a.message_ids)
    return World(a, b, pool, clients)


def snapshot(pool, church_id: str) -> dict[str, Any]:
    """Church A's rows, as they must stay (``last_used_at`` aside: A's own use is not B's doing).

    Sealed values are compared as stored: any rewrite (even of the same plaintext) shows as a change.
    """
    queries = {
        "church": "SELECT name, deleted_at FROM churches WHERE id = CAST(:c AS uuid)",
        "messages": "SELECT id::text, status, attempts, body_enc, to_enc, to_hash, updated_at, next_attempt_at FROM messages"
                    " WHERE church_id = CAST(:c AS uuid) ORDER BY id",
        "broadcasts": "SELECT id::text, response_enc, response_has_invalid FROM broadcasts WHERE church_id = CAST(:c AS uuid)"
                      " ORDER BY id",
        "conversations": "SELECT id::text, contact_enc, unread_count, last_message_at, needs_review FROM conversations"
                         " WHERE church_id = CAST(:c AS uuid) ORDER BY id",
        "thread": "SELECT m.id::text, m.body_enc FROM conversation_messages m JOIN conversations c ON c.id = m.conversation_id"
                  " WHERE c.church_id = CAST(:c AS uuid) ORDER BY m.id",
        "dead_letters": "SELECT id::text, replay_count, replayed_at FROM dead_letters WHERE church_id = CAST(:c AS uuid)",
        "archive": "SELECT id::text FROM dead_letters_archive WHERE church_id = CAST(:c AS uuid)",
        "keys": "SELECT id::text, name, revoked_at FROM api_keys WHERE church_id = CAST(:c AS uuid) ORDER BY id",
        "audit": "SELECT id, action, actor, target FROM audit_log WHERE church_id = CAST(:c AS uuid) ORDER BY id",
        "contacts": "SELECT id::text, phone_enc, phone_hash, email_enc, first_name_enc, last_name_enc FROM contacts"
                    " WHERE church_id = CAST(:c AS uuid) ORDER BY id",
        "opt_outs": "SELECT channel, address_enc, address_hash FROM opt_outs WHERE church_id = CAST(:c AS uuid)"
                    " ORDER BY address_hash",
    }  # fmt: skip
    return {name: json.dumps(pool.run(sql, c=church_id), default=str) for name, sql in queries.items()}


# -- calling, and checking for leaks ----------------------------------------------------------------------------------


@dataclass
class Call:
    function: str
    method: str
    path: str
    response: Any
    sent: str  # path, query and body as sent: ids B itself supplied may be echoed back ("no message <id>")

    @property
    def status(self) -> int:
        return int(self.response.status_code)

    @property
    def body(self) -> Any:
        return self.response.get_json()


def call(world: World, function: str, method: str, path: str, *, body: Any = None,
         query: dict[str, str] | None = None, headers: dict[str, str] | None = None) -> Call:  # fmt: skip
    response = world.client(function).open(path, method=method, json=body, query_string=query,
                                           headers=world.b.auth if headers is None else headers)  # fmt: skip
    return Call(function, method, path, response, json.dumps([path, query, body]))


def assert_no_leak(world: World, calls: list[Call]) -> None:
    for c in calls:
        text = c.response.get_data(as_text=True)
        leaked = sorted(s for s in world.a.secrets() if s and s not in c.sent and s in text)
        assert not leaked, f"{c.method} {c.path} answered {c.status} with church A's {leaked}: {text[:500]}"


def error_code(c: Call) -> str:
    return str(c.body["error"]["code"])


# -- the cases: one per route --------------------------------------------------------------------------------------------

Case = Callable[[World], list[Call]]


def send_messages(w: World) -> list[Call]:
    into_group = call(w, "send", "POST", "/messages", body={"channel": "sms", "groups": [w.a.tenant.group_id], "text": "hi"})
    assert into_group.status == 422 and error_code(into_group) == "unknown_group"
    from_theirs = call(w, "send", "POST", "/messages", body={"channel": "sms", "to": w.b.number, "text": "hi",
                                                              "from": w.a.tenant.sender})  # fmt: skip
    assert from_theirs.status == 422 and error_code(from_theirs) == "unknown_sender"
    # A's Idempotency-Key is B's too (both used it): B's replay is B's own first answer, never A's.
    replayed = call(w, "send", "POST", "/messages", body={"channel": "sms", "groups": [w.b.tenant.group_id], "text": w.b.text},
                    headers={**w.b.auth, "Idempotency-Key": IDEMPOTENCY_KEY})  # fmt: skip
    assert replayed.status == 202 and replayed.response.headers.get("Idempotent-Replayed") == "true"
    assert replayed.body["broadcast_id"] == w.b.broadcast_id
    other_body = call(w, "send", "POST", "/messages", body={"channel": "sms", "to": w.b.number, "text": "Beta again"},
                      headers={**w.b.auth, "Idempotency-Key": IDEMPOTENCY_KEY})  # fmt: skip
    assert other_body.status == 409 and error_code(other_body) == "idempotency_conflict"
    return [into_group, from_theirs, replayed, other_body]


def list_messages(w: World) -> list[Call]:
    own = call(w, "send", "GET", "/messages")
    assert own.status == 200 and {m["id"] for m in own.body["data"]} == set(w.b.message_ids)
    by_broadcast = call(w, "send", "GET", "/messages", query={"broadcast_id": w.a.broadcast_id})
    assert by_broadcast.status == 200 and by_broadcast.body["data"] == []
    return [own, by_broadcast]


def get_message(w: World) -> list[Call]:
    calls = [call(w, "send", "GET", f"/messages/{mid}") for mid in w.a.message_ids]
    assert all(c.status == 404 and error_code(c) == "not_found" for c in calls)
    own = call(w, "send", "GET", f"/messages/{w.b.message_ids[0]}")
    assert own.status == 200
    return [*calls, own]


def list_conversations(w: World) -> list[Call]:
    own = call(w, "send", "GET", "/conversations")
    assert own.status == 200 and [c["id"] for c in own.body["data"]] == [w.b.conversation_id]
    return [own]


def conversation_thread(w: World) -> list[Call]:
    theirs = call(w, "send", "GET", f"/conversations/{w.a.conversation_id}/messages")
    assert theirs.status == 404 and error_code(theirs) == "not_found"
    own = call(w, "send", "GET", f"/conversations/{w.b.conversation_id}/messages", query={"limit": "1"})
    assert own.status == 200 and own.body["next_cursor"]
    # B's own cursor on A's conversation: a page of nothing, not A's thread.
    paged = call(w, "send", "GET", f"/conversations/{w.a.conversation_id}/messages",
                 query={"cursor": own.body["next_cursor"]})  # fmt: skip
    assert paged.status in (200, 404) and (paged.status == 404 or paged.body["data"] == [])
    return [theirs, own, paged]


def create_key(w: World) -> list[Call]:
    made = call(w, "send", "POST", "/keys", body={"name": "isolation"})
    assert made.status == 201
    assert authenticate(w.pool, f"Bearer {made.body['key']}").church_id == w.b.church_id
    return [made]


def list_keys(w: World) -> list[Call]:
    own = call(w, "send", "GET", "/keys")
    assert own.status == 200 and {k["id"] for k in own.body["data"]} == set(w.b.key_ids)
    return [own]


def revoke_key(w: World) -> list[Call]:
    calls = [call(w, "send", "DELETE", f"/keys/{key_id}") for key_id in w.a.key_ids]
    assert all(c.status == 404 and error_code(c) == "not_found" for c in calls)
    return calls


def own_audit(w: World) -> list[Call]:
    own = call(w, "send", "GET", "/audit")
    assert own.status == 200
    assert {e["target"] for e in own.body["data"]} == set(w.b.key_ids[:2])  # B's two API-made keys, nothing of A's
    return [own]


def operator_only(method: str, template: str) -> Case:
    def case(w: World) -> list[Call]:
        path = template.format(church_id=w.a.church_id, key_id=w.a.key_ids[0])
        refused = call(w, "send", method, path, body={} if method == "POST" else None)
        assert refused.status == 403 and error_code(refused) == "operator_only"
        return [refused]

    return case


def privacy_deletion(w: World) -> list[Call]:
    # A's member's number: B may only erase what B holds about it (nothing here), never A's data.
    erased = call(w, "send", "POST", "/privacy/deletions", body={"phone": w.a.member_number})
    assert erased.status in (200, 202), erased.body
    return [erased]


def usage(w: World) -> list[Call]:
    own = call(w, "send", "GET", "/usage")
    assert own.status == 200 and own.body["plan"] == "test", own.body
    return [own]


def broadcast_report(w: World) -> list[Call]:
    theirs = call(w, "send", "GET", f"/broadcasts/{w.a.broadcast_id}/report")
    assert theirs.status == 404 and error_code(theirs) == "not_found"
    own = call(w, "send", "GET", f"/broadcasts/{w.b.broadcast_id}/report")
    assert own.status == 200 and own.body["total"] == len(w.b.tenant.members)
    return [theirs, own]


def analytics_daily(w: World) -> list[Call]:
    rebuild(w.pool)  # both churches' aggregates exist: B must be shown its own only
    own = call(w, "send", "GET", "/analytics/daily")
    assert own.status == 200 and sum(r["accepted"] for r in own.body["data"]) == len(w.b.message_ids), own.body
    return [own]


def dead_letters_list(w: World) -> list[Call]:
    own = call(w, "dlq-drain", "GET", "/dead-letters")
    assert own.status == 200 and [d["id"] for d in own.body["data"]] == [w.b.dead_letter_id]
    filtered = call(w, "dlq-drain", "GET", "/dead-letters", query={"church_id": w.a.church_id})
    assert filtered.status == 200 and filtered.body["data"] == []
    return [own, filtered]


def dead_letters_replay(w: World) -> list[Call]:
    by_id = call(w, "dlq-drain", "POST", "/dead-letters/replay", body={"ids": [w.a.dead_letter_id]})
    assert by_id.status == 200 and (by_id.body["replayed"], by_id.body["not_found"]) == (0, 1)
    by_church = call(w, "dlq-drain", "POST", "/dead-letters/replay", body={"filter": {"church_id": w.a.church_id}})
    assert by_church.status == 200 and by_church.body["replayed"] == 0
    return [by_id, by_church]


def dead_letters_purge(w: World) -> list[Call]:
    by_id = call(w, "dlq-drain", "POST", "/dead-letters/purge", body={"ids": [w.a.dead_letter_id]})
    assert by_id.status == 200 and (by_id.body["purged"], by_id.body["not_found"]) == (0, 1)
    by_church = call(w, "dlq-drain", "POST", "/dead-letters/purge", body={"filter": {"church_id": w.a.church_id}})
    assert by_church.status == 200 and by_church.body["purged"] == 0
    return [by_id, by_church]


def dead_letters_archive(w: World) -> list[Call]:
    archived = call(w, "dlq-drain", "POST", "/dead-letters/archive", body={"church_id": w.a.church_id, "older_than_days": 0})
    assert archived.status == 200 and archived.body["archived"] == 0
    return [archived]


def read_only(function: str, method: str, path: str) -> Case:
    """A route with no church data: whatever it answers B must hold nothing of A's."""

    def case(w: World) -> list[Call]:
        return [call(w, function, method, path)]

    return case


def same_for_everyone(function: str, path: str) -> Case:
    """A public route with no church's data (GET /metrics: counts of the whole system): every caller, with a
    church's key, another's or none, gets the same answer (but for the queue's age, which moves with the clock)."""

    def case(w: World) -> list[Call]:
        calls = [call(w, function, "GET", path, headers=headers) for headers in (w.b.auth, w.a.auth, {})]
        assert all(c.status == 200 for c in calls), [c.status for c in calls]
        answers = {re.sub(r"(?m)^koinonia_queue_oldest_age_seconds .*$", "", c.response.get_data(as_text=True))
                   for c in calls}  # fmt: skip
        assert len(answers) == 1, "the answer depends on the caller"
        return calls

    return case


CASES: dict[RouteKey, Case] = {
    ("send", "POST", "/messages"): send_messages,
    ("send", "GET", "/messages"): list_messages,
    ("send", "GET", "/messages/{message_id}"): get_message,
    ("send", "GET", "/conversations"): list_conversations,
    ("send", "GET", "/conversations/{conversation_id}/messages"): conversation_thread,
    ("send", "POST", "/keys"): create_key,
    ("send", "GET", "/keys"): list_keys,
    ("send", "DELETE", "/keys/{key_id}"): revoke_key,
    ("send", "GET", "/audit"): own_audit,
    ("send", "POST", "/privacy/deletions"): privacy_deletion,
    ("send", "GET", "/usage"): usage,
    ("send", "GET", "/broadcasts/{broadcast_id}/report"): broadcast_report,
    ("send", "GET", "/analytics/daily"): analytics_daily,
    **{("send", m, t): operator_only(m, t) for m, t in [
        ("POST", "/churches/{church_id}/keys"), ("GET", "/churches/{church_id}/keys"),
        ("DELETE", "/churches/{church_id}/keys/{key_id}"), ("GET", "/churches/{church_id}/audit")]},
    ("dlq-drain", "GET", "/dead-letters"): dead_letters_list,
    ("dlq-drain", "POST", "/dead-letters/replay"): dead_letters_replay,
    ("dlq-drain", "POST", "/dead-letters/purge"): dead_letters_purge,
    ("dlq-drain", "POST", "/dead-letters/archive"): dead_letters_archive,
    # The scheduler's tick: cross-church by design, it answers counts and error codes only.
    ("dlq-drain", "POST", "/events"): read_only("dlq-drain", "POST", "/events"),
    **{("health", "GET", p): read_only("health", "GET", p)
       for p in ("/", "/health", "/health/detailed", "/ready", "/alive")},
    **{(f, "GET", "/openapi.json"): read_only(f, "GET", "/openapi.json") for f in FUNCTIONS},
    **{(f, "GET", "/alive"): same_for_everyone(f, "/alive") for f in FUNCTIONS if f != "health"},
    **{(f, "GET", "/metrics"): same_for_everyone(f, "/metrics") for f in FUNCTIONS},
}  # fmt: skip

NOT_CHURCH_SCOPED: dict[RouteKey, str] = {
    ("queue-consume", "POST", "/"): "the worker: drains every church's queue by design; no church credential",
    ("queue-consume", "POST", "/events"): "the worker's wake-up (SQS/scheduler); no church credential",
    ("retry-scheduler", "POST", "/"): "the scheduler's tick over every church; no church credential",
    ("retry-scheduler", "POST", "/events"): "the scheduler's tick over every church; no church credential",
    ("webhooks", "POST", "/webhooks/telnyx"): "carrier events, authenticated by Telnyx's signature, not a church key",
}


# -- the routes each function really has --------------------------------------------------------------------------------


def _load(function: str) -> Any:
    path = ROOT / "functions" / function / "main.py"
    spec = importlib.util.spec_from_file_location(f"isolation_{function.replace('-', '_')}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _template(pattern: str) -> str:
    body = pattern.removeprefix("^").removesuffix("$").removesuffix("/?")
    return re.sub(r"\(\?P<(\w+)>\[\^/\]\+\)", r"{\1}", body) or "/"


def routes_of(function: str) -> set[RouteKey]:
    routes = _load(function).ROUTES
    if isinstance(routes, dict):  # health: path -> check, GET (and HEAD) only
        return {(function, "GET", path) for path in routes}
    return {(function, r.method, _template(r.pattern.pattern)) for r in routes}


def test_every_route_of_every_function_has_an_isolation_case(env):
    present = set().union(*(routes_of(f) for f in FUNCTIONS))
    missing = sorted(present - set(CASES) - set(NOT_CHURCH_SCOPED))
    assert not missing, f"routes without a tenant-isolation case (add one to CASES in tests/test_isolation.py): {missing}"
    assert ("send", "DELETE", "/keys/{key_id}") in present and ("dlq-drain", "GET", "/dead-letters") in present


@pytest.mark.parametrize("key", sorted(CASES), ids=lambda k: f"{k[0]} {k[1]} {k[2]}")
def test_church_b_with_church_a_ids_finds_nothing_and_changes_nothing(key: RouteKey, world: World):
    function, method, template = key
    if key not in routes_of(function):
        pytest.skip(f"{method} {template} is not a route of {function} (yet)")
    before = snapshot(world.pool, world.a.church_id)
    calls = CASES[key](world)
    assert calls, "a case must make at least one call"
    assert_no_leak(world, calls)
    assert snapshot(world.pool, world.a.church_id) == before, f"{method} {template} by church B changed church A's data"
    # A is still served as before (the case did not, say, revoke A's key or erase its data).
    assert world.client("send").get(f"/messages/{world.a.message_ids[0]}", headers=world.a.auth).status_code == 200


def test_a_church_key_of_a_deleted_or_unknown_church_reaches_nothing(world: World):
    unknown = f"kn_{uuid.uuid4().hex[:12]}_{'A' * 32}"
    response = world.client("send").get(f"/messages/{world.a.message_ids[0]}", headers={"Authorization": f"Bearer {unknown}"})
    assert response.status_code == 401
    assert_no_leak(world, [Call("send", "GET", "/messages/{id}", response, json.dumps([world.a.message_ids[0]]))])
