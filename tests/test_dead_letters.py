"""Dead letters end to end: real PostgreSQL, Redis and the sandbox carrier, the real consumer.

Messages fail for real (sandbox rules: ``invalid`` is 400/40310, permanent; ``5xx`` retries until
``max_attempts``), land in ``dead_letters`` through the consumer, and are then listed, replayed, purged,
archived and alerted on through the dlq-drain function (functions-framework) and the ``koinonia dlq``
command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from common import metrics
from common.config import get_settings
from common.consume import ConsumeBudget, run_consumer
from common.dead_letters import cli as dlq_cli
from common.dead_letters.access import Scope
from common.dead_letters.replay import replay_ids
from common.logs import JsonFormatter
from common.runtime import get_runtime
from tests.factories import Tenant, make_church, numbers
from tests.helpers import function_client, rebuild_singletons, set_env

OPERATOR_TOKEN = "op-" + "k7Qz9" * 8  # >= 32 characters, as settings require
FINAL = frozenset({"sent", "failed", "suppressed", "expired"})


# -- helpers --------------------------------------------------------------------------------------------




def drain_until(condition: Callable[[], bool], *, timeout_s: float = 30.0, what: str = "the condition") -> None:
    """Consumer rounds until ``condition`` holds; a round that found nothing waits a little for work."""
    deadline = time.monotonic() + timeout_s
    idle = False
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout_s:g}s draining until {what}")
        budget = (ConsumeBudget(max_seconds=min(0.5, remaining), stop_when_idle=False) if idle
                  else ConsumeBudget(max_seconds=remaining, stop_when_idle=True))  # fmt: skip
        report = asyncio.run(run_consumer(get_runtime(), budget))
        idle = report.dequeued == 0


def statuses(pool, message_ids) -> dict[str, str]:
    rows = pool.run("SELECT id::text, status FROM messages WHERE id = ANY(CAST(:ids AS uuid[]))", ids=list(message_ids))
    return {r[0]: r[1] for r in rows}


def fail(send, tenant: Tenant, pool, to: list[str], **body: Any) -> dict[str, str]:
    """Send to ``to`` (the sandbox's rules decide their fate) and drain until every one is settled."""
    response = send.post("/messages", json={"channel": "sms", "to": to, "text": "Choir practice moved to 7pm", **body},
                         headers=tenant.auth)  # fmt: skip
    assert response.status_code == 202, response.get_json()
    ids = {r["to"]: r["message_id"] for r in response.get_json()["recipients"]}
    drain_until(lambda: set(statuses(pool, ids.values()).values()) <= FINAL, what="every message is settled")
    return ids


def dead_letter_ids(pool, message_ids) -> list[str]:
    rows = pool.run("SELECT id::text FROM dead_letters WHERE message_id = ANY(CAST(:ids AS uuid[])) ORDER BY id",
                    ids=list(message_ids))  # fmt: skip
    return [r[0] for r in rows]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


OPERATOR = bearer(OPERATOR_TOKEN)


def list_all(dlq, headers, **params) -> list[dict[str, Any]]:
    response = dlq.get("/dead-letters", query_string=params, headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()["data"]


def run_cli(argv: list[str]) -> int:
    """``koinonia <argv>`` once common/cli.py has the dlq wiring; until then the same parser, built here."""
    import common.cli

    parser = common.cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if "dlq" in commands.choices:
        return common.cli.main(argv)
    parser = argparse.ArgumentParser(prog="koinonia")
    dlq_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture
def dlq_env(send_env, monkeypatch):
    set_env(monkeypatch, OPERATOR_TOKEN=OPERATOR_TOKEN)
    yield get_settings()
    rebuild_singletons()


@pytest.fixture
def send(dlq_env):
    return function_client("send")


@pytest.fixture
def dlq(dlq_env):
    return function_client("dlq-drain")


@pytest.fixture
def tenant(dlq_env, pool):
    return make_church(pool, "First Church", sender="+13125550100")


@pytest.fixture
def other(dlq_env, pool):
    return make_church(pool, "Second Church", sender="+13125550199")


# -- how messages become dead letters ------------------------------------------------------------------------


@pytest.mark.smoke
def test_a_permanent_carrier_error_becomes_one_dead_letter_with_reason_and_history(send, dlq, tenant, pool, sandbox):
    [to] = numbers(1, area="415")
    sandbox.configure(rules={to: "invalid"})
    ids = fail(send, tenant, pool, [to])
    assert statuses(pool, ids.values()) == {ids[to]: "failed"}

    rows = pool.run("SELECT message_id::text, church_id::text, reason, error_code, attempts, replay_count FROM dead_letters")
    assert len(rows) == 1
    message_id, church_id, reason, code, attempts, replay_count = rows[0]
    assert (message_id, church_id, code, replay_count) == (ids[to], tenant.church_id, "40310", 0)
    assert reason == "permanent carrier error 40310"
    assert [(a["attempt"], a["outcome"], a["error_code"], a["http_status"]) for a in attempts] == [(1, "failed", "40310", 400)]
    assert attempts[0]["finished_at"]

    asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=1, stop_when_idle=True)))  # nothing more to do
    assert pool.run("SELECT count(*) FROM dead_letters")[0][0] == 1
    assert sandbox.ledger.attempts == 1

    [item] = list_all(dlq, tenant.auth)
    assert item["message_id"] == ids[to] and item["church_id"] == tenant.church_id
    assert (item["reason"], item["error_code"], item["to"], item["status"]) == (reason, "40310", to, "failed")
    assert (item["replayed_at"], item["replay_count"]) == (None, 0)
    assert item["attempts"][0]["outcome"] == "failed" and item["created_at"]


def test_exhausted_retries_become_a_dead_letter_after_their_backoff(send, dlq, tenant, pool, sandbox):
    [to] = numbers(1, area="628")
    sandbox.configure(rules={to: "5xx"})
    ids = fail(send, tenant, pool, [to], max_attempts=2)
    assert statuses(pool, ids.values()) == {ids[to]: "failed"}
    assert sandbox.ledger.attempts == 2 and sandbox.ledger.accepted == 0

    [item] = list_all(dlq, tenant.auth)
    assert item["reason"] == "attempts exhausted (last error 10007)", item
    assert [(a["attempt"], a["outcome"], a["http_status"]) for a in item["attempts"]] == [(1, "retry", 500), (2, "retry", 500)]
    finished = pool.run("SELECT finished_at FROM message_attempts WHERE message_id = CAST(:m AS uuid) ORDER BY attempt",
                        m=ids[to])  # fmt: skip
    gap = (finished[1][0] - finished[0][0]).total_seconds()
    assert gap >= 0.8 - 0.05, f"the retry came {gap:.2f}s after the first attempt (backoff is 1 s less 20% jitter)"


# -- list ------------------------------------------------------------------------------------------------------


def test_list_filters_by_code_and_time_and_pages_by_keyset(send, dlq, tenant, pool, sandbox):
    invalid, flaky = numbers(6, area="415"), numbers(3, area="628")
    sandbox.configure(rules={**dict.fromkeys(invalid, "invalid"), **dict.fromkeys(flaky, "5xx")})
    fail(send, tenant, pool, invalid)
    fail(send, tenant, pool, flaky, max_attempts=1)

    everything = list_all(dlq, tenant.auth)
    assert len(everything) == 9
    keys = [(d["created_at"], d["id"]) for d in everything]
    assert keys == sorted(keys, reverse=True)  # newest first, id breaking ties

    seen: list[str] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "4", **({"cursor": cursor} if cursor else {})}
        page = dlq.get("/dead-letters", query_string=params, headers=tenant.auth).get_json()
        seen += [d["id"] for d in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [d["id"] for d in everything]  # every row once, in order, across pages of 4

    assert {d["to"] for d in list_all(dlq, tenant.auth, error_code="40310")} == set(invalid)
    exhausted = list_all(dlq, tenant.auth, error_code="10007")
    assert {d["to"] for d in exhausted} == set(flaky)
    assert all(d["reason"] == "attempts exhausted (last error 10007)" for d in exhausted)
    assert list_all(dlq, tenant.auth, error_code="99999") == []

    assert list_all(dlq, tenant.auth, **{"from": "2999-01-01T00:00:00+00:00"}) == []
    assert list_all(dlq, tenant.auth, to="2000-01-01T00:00:00Z") == []
    assert len(list_all(dlq, tenant.auth, **{"from": "2000-01-01T00:00:00-06:00", "to": "2999-01-01T00:00:00Z"})) == 9
    newest = everything[0]["created_at"]
    assert {d["id"] for d in list_all(dlq, tenant.auth, **{"from": newest})} == {
        d["id"] for d in everything if d["created_at"] == newest
    }
    # An unencoded '+' arrives as a space; the offset is still understood.
    raw = dlq.get("/dead-letters?from=2000-01-01T00:00:00+00:00", headers=tenant.auth)
    assert raw.status_code == 200 and len(raw.get_json()["data"]) == 9

    for params, code, field in [
        ({"from": "2026-01-01T00:00:00"}, "invalid_time", "from"),
        ({"to": "yesterday"}, "invalid_time", "to"),
        ({"cursor": "bm9wZQ"}, "invalid_cursor", "cursor"),
        ({"limit": "0"}, "invalid_limit", "limit"),
        ({"church_id": "42"}, "invalid_id", "church_id"),
        ({"status": "failed"}, "invalid_parameter", "status"),
    ]:
        response = dlq.get("/dead-letters", query_string=params, headers=tenant.auth)
        assert response.status_code == 400, (params, response.get_json())
        assert response.get_json()["error"]["code"] == code and response.get_json()["error"]["field"] == field


# -- replay ----------------------------------------------------------------------------------------------------


def test_replay_then_drain_delivers_each_message_once(send, dlq, tenant, pool, sandbox):
    to = numbers(3, area="415")
    sandbox.configure(rules=dict.fromkeys(to, "invalid"))
    ids = fail(send, tenant, pool, to)
    dead = dead_letter_ids(pool, ids.values())
    assert len(dead) == 3 and sandbox.ledger.accepted == 0

    sandbox.configure(rules={})  # the number was fixed at the carrier
    response = dlq.post("/dead-letters/replay", json={"ids": dead}, headers=tenant.auth)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert (body["replayed"], body["skipped"], body["not_found"], body["enqueued"], body["left_queued"]) == (3, 0, 0, 3, 0)
    assert sorted(body["ids"]["replayed"]) == dead and body["complete"] is True

    rows = pool.run("SELECT status, attempts, last_error_code, claim_token, lease_until, finalized_at,"
                    " deadline_at - now() BETWEEN interval '3 hours 59 minutes' AND interval '4 hours',"
                    " next_attempt_at <= now() FROM messages")  # fmt: skip
    assert rows == [["queued", 0, None, None, None, None, True, True]] * 3
    stamped = pool.run("SELECT replayed_at IS NOT NULL, replay_count FROM dead_letters")
    assert stamped == [[True, 1]] * 3

    drain_until(lambda: set(statuses(pool, ids.values()).values()) == {"sent"}, what="the replays are sent")
    assert sandbox.ledger.by_to() == dict.fromkeys(to, 1) and sandbox.ledger.duplicates == 0
    assert {d["status"] for d in list_all(dlq, tenant.auth)} == {"sent"}


def test_replaying_twice_sends_once(send, dlq, tenant, pool, sandbox):
    to = numbers(2, area="415")
    sandbox.configure(rules=dict.fromkeys(to, "invalid"))
    ids = fail(send, tenant, pool, to)
    sandbox.configure(rules={})

    first = dlq.post("/dead-letters/replay", json={"filter": {}}, headers=tenant.auth).get_json()
    second = dlq.post("/dead-letters/replay", json={"filter": {"error_code": "40310"}}, headers=tenant.auth).get_json()
    assert (first["replayed"], first["skipped"]) == (2, 0)
    assert (second["replayed"], second["skipped"], second["enqueued"]) == (0, 2, 0)
    drain_until(lambda: set(statuses(pool, ids.values()).values()) == {"sent"}, what="the replays are sent")
    third = dlq.post("/dead-letters/replay", json={"ids": dead_letter_ids(pool, ids.values())}, headers=tenant.auth)
    assert (third.get_json()["replayed"], third.get_json()["skipped"]) == (0, 2)
    asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=1, stop_when_idle=True)))
    assert sandbox.ledger.by_to() == dict.fromkeys(to, 1) and sandbox.ledger.accepted == 2
    assert pool.run("SELECT DISTINCT replay_count FROM dead_letters") == [[1]]


def test_a_replay_that_fails_again_refreshes_its_dead_letter(send, dlq, tenant, pool, sandbox):
    [to] = numbers(1, area="415")
    sandbox.configure(rules={to: "invalid"})
    ids = fail(send, tenant, pool, [to])
    [dead] = dead_letter_ids(pool, ids.values())
    [[first_created]] = pool.run("SELECT created_at FROM dead_letters")
    body = dlq.post("/dead-letters/replay", json={"ids": [dead]}, headers=tenant.auth).get_json()
    assert body["replayed"] == 1
    drain_until(lambda: statuses(pool, ids.values()) == {ids[to]: "failed"}, what="the replay fails again")
    assert sandbox.ledger.attempts == 2 and sandbox.ledger.accepted == 0
    [item] = list_all(dlq, tenant.auth)
    assert item["id"] == dead and item["replay_count"] == 1 and item["replayed_at"] is None  # waiting again
    assert datetime.fromisoformat(item["created_at"]) > first_created
    assert [(a["attempt"], a["outcome"], a["error_code"]) for a in item["attempts"]] == [(1, "failed", "40310")]


def test_concurrent_replays_of_the_same_dead_letters_replay_each_once(send, tenant, pool, sandbox):
    to = numbers(20, area="415")
    sandbox.configure(rules=dict.fromkeys(to, "invalid"))
    ids = fail(send, tenant, pool, to)
    dead = dead_letter_ids(pool, ids.values())
    rt = get_runtime()
    results: list[int] = []
    start = threading.Barrier(4)

    def replay(order: list[str]) -> None:
        start.wait()
        results.append(replay_ids(rt, Scope.church(tenant.church_id), order, batch_size=7).replayed)

    orders = [dead, dead[::-1], dead[7:] + dead[:7], dead]
    threads = [threading.Thread(target=replay, args=(order,)) for order in orders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4 and sum(results) == 20, results
    assert pool.run("SELECT DISTINCT replay_count FROM dead_letters") == [[1]]
    sandbox.configure(rules={})
    drain_until(lambda: set(statuses(pool, ids.values()).values()) == {"sent"}, what="the replays are sent")
    assert sandbox.ledger.accepted == 20 and sandbox.ledger.duplicates == 0


def test_replay_with_redis_down_leaves_the_messages_queued_for_the_retry_scheduler(send, dlq, tenant, pool, sandbox,
                                                                                   monkeypatch):  # fmt: skip
    to = numbers(2, area="415")
    sandbox.configure(rules=dict.fromkeys(to, "invalid"))
    ids = fail(send, tenant, pool, to)
    set_env(monkeypatch, REDIS_URL="redis://127.0.0.1:1/0")  # nothing listens there
    body = dlq.post("/dead-letters/replay", json={"filter": {}}, headers=tenant.auth).get_json()
    assert (body["replayed"], body["enqueued"], body["left_queued"]) == (2, 0, 2), body
    assert "retry-scheduler" in body["note"]
    assert set(statuses(pool, ids.values()).values()) == {"queued"}


# -- scoping -----------------------------------------------------------------------------------------------------


def test_a_church_key_sees_and_acts_on_its_own_dead_letters_only(send, dlq, tenant, other, pool, sandbox):
    mine, theirs = numbers(2, area="415"), numbers(1, area="646")
    sandbox.configure(rules=dict.fromkeys(mine + theirs, "invalid"))
    my_ids = fail(send, tenant, pool, mine)
    their_ids = fail(send, other, pool, theirs)
    my_dead = dead_letter_ids(pool, my_ids.values())
    sandbox.configure(rules={})

    assert {d["to"] for d in list_all(dlq, other.auth)} == set(theirs)
    assert list_all(dlq, other.auth, church_id=tenant.church_id) == []
    assert {d["to"] for d in list_all(dlq, tenant.auth)} == set(mine)

    # Another church's ids answer exactly like ids that never existed.
    unknown = [str(uuid.uuid4()) for _ in my_dead]
    stolen = dlq.post("/dead-letters/replay", json={"ids": my_dead}, headers=other.auth).get_json()
    made_up = dlq.post("/dead-letters/replay", json={"ids": unknown}, headers=other.auth).get_json()
    assert (stolen["replayed"], stolen["skipped"], stolen["not_found"]) == (0, 0, 2)
    assert {k: v for k, v in stolen.items() if k != "ids"} == {k: v for k, v in made_up.items() if k != "ids"}
    assert dlq.post("/dead-letters/replay", json={"filter": {"church_id": tenant.church_id}},
                    headers=other.auth).get_json()["replayed"] == 0  # fmt: skip
    purged = dlq.post("/dead-letters/purge", json={"ids": my_dead}, headers=other.auth).get_json()
    assert (purged["purged"], purged["not_found"]) == (0, 2)
    assert dlq.post("/dead-letters/archive", json={"older_than_days": 0}, headers=other.auth).get_json()["archived"] == 1
    assert set(statuses(pool, my_ids.values()).values()) == {"failed"}
    assert dead_letter_ids(pool, my_ids.values()) == my_dead
    assert pool.run("SELECT message_id::text FROM dead_letters_archive") == [[their_ids[theirs[0]]]]

    asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=1, stop_when_idle=True)))
    assert sandbox.ledger.attempts == 3  # the original three failures; nothing was replayed


def test_the_operator_token_sees_and_acts_on_every_church(send, dlq, tenant, other, pool, sandbox):
    mine, theirs = numbers(2, area="415"), numbers(1, area="646")
    sandbox.configure(rules=dict.fromkeys(mine + theirs, "invalid"))
    fail(send, tenant, pool, mine)
    their_ids = fail(send, other, pool, theirs)
    sandbox.configure(rules={})

    assert {d["to"] for d in list_all(dlq, OPERATOR)} == set(mine + theirs)
    assert {d["to"] for d in list_all(dlq, OPERATOR, church_id=other.church_id)} == set(theirs)
    body = dlq.post("/dead-letters/replay", json={"filter": {"church_id": other.church_id}}, headers=OPERATOR).get_json()
    assert (body["replayed"], body["enqueued"]) == (1, 1)
    drain_until(lambda: statuses(pool, their_ids.values()) == {their_ids[theirs[0]]: "sent"}, what="their replay is sent")
    assert sandbox.ledger.by_to() == {theirs[0]: 1}


@pytest.mark.parametrize(
    "headers",
    [{}, bearer("nope"), bearer(OPERATOR_TOKEN[:-1] + "X"), {"Authorization": f"Basic {OPERATOR_TOKEN}"}, bearer("")],
)
def test_anything_but_a_church_key_or_the_operator_token_is_401(dlq, headers):
    for response in (dlq.get("/dead-letters", headers=headers),
                     dlq.post("/dead-letters/replay", json={"filter": {}}, headers=headers),
                     dlq.post("/dead-letters/purge", json={"filter": {}}, headers=headers),
                     dlq.post("/dead-letters/archive", json={}, headers=headers)):  # fmt: skip
        assert response.status_code == 401 and response.get_json()["error"]["code"] == "unauthorized"


def test_without_an_operator_token_configured_there_is_no_operator_access(dlq, monkeypatch):
    monkeypatch.delenv("OPERATOR_TOKEN")
    rebuild_singletons()
    assert dlq.get("/dead-letters", headers=OPERATOR).status_code == 401


# -- purge and archive -------------------------------------------------------------------------------------------


def test_purge_and_archive(send, dlq, tenant, pool, sandbox):
    to = numbers(5, area="415")
    sandbox.configure(rules=dict.fromkeys(to, "invalid"))
    ids = fail(send, tenant, pool, to)
    dead = dead_letter_ids(pool, ids.values())

    body = dlq.post("/dead-letters/purge", json={"ids": dead[:1]}, headers=tenant.auth).get_json()
    assert (body["purged"], body["not_found"]) == (1, 0)
    pool.run("UPDATE dead_letters SET created_at = now() - interval '10 days' WHERE id = CAST(:d AS uuid)", d=dead[1])
    body = dlq.post("/dead-letters/purge", json={"older_than_days": 5}, headers=tenant.auth).get_json()
    assert body["purged"] == 1 and body["complete"] is True
    assert dead_letter_ids(pool, ids.values()) == dead[2:]

    pool.run("UPDATE dead_letters SET created_at = now() - interval '40 days' WHERE id = CAST(:d AS uuid)", d=dead[2])
    before = pool.run("SELECT id, message_id, church_id, reason, error_code, attempts, created_at, replayed_at, replay_count"
                      " FROM dead_letters WHERE id = CAST(:d AS uuid)", d=dead[2])  # fmt: skip
    body = dlq.post("/dead-letters/archive", json={}, headers=tenant.auth).get_json()  # retention: 30 days
    assert body["archived"] == 1, body
    after = pool.run("SELECT id, message_id, church_id, reason, error_code, attempts, created_at, replayed_at, replay_count"
                     " FROM dead_letters_archive")  # fmt: skip
    assert after == before
    assert dead_letter_ids(pool, ids.values()) == dead[3:]
    body = dlq.post("/dead-letters/archive", json={"older_than_days": 0}, headers=tenant.auth).get_json()
    assert body["archived"] == 2
    assert pool.run("SELECT count(*) FROM dead_letters")[0][0] == 0
    assert pool.run("SELECT count(*) FROM dead_letters_archive")[0][0] == 3
    assert set(statuses(pool, ids.values()).values()) == {"failed"}  # the messages stay failed

    refused = dlq.post("/dead-letters/purge", json={}, headers=tenant.auth)
    assert refused.status_code == 422 and refused.get_json()["error"]["field"] == "ids"
    bad = dlq.post("/dead-letters/purge", json={"ids": ["x"]}, headers=tenant.auth)
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "ids[0]"
    bad = dlq.post("/dead-letters/replay", json={"filter": {"from": "2026-01-01"}}, headers=tenant.auth)
    assert bad.status_code == 422 and bad.get_json()["error"]["field"] == "filter.from"


# -- the scheduled tick -------------------------------------------------------------------------------------------


def _alert_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "koinonia.alerts"]


def _emf_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{") and '"_aws"' in line:
            lines.append(json.loads(line))
    return lines


def test_the_scheduled_tick_archives_past_retention_and_alerts_past_the_threshold(send, tenant, pool, sandbox,
                                                                                  monkeypatch, caplog, capsys):  # fmt: skip
    to = numbers(3, area="415")
    sandbox.configure(rules=dict.fromkeys(to, "invalid"))
    ids = fail(send, tenant, pool, to)
    dead = dead_letter_ids(pool, ids.values())
    pool.run("UPDATE dead_letters SET created_at = now() - interval '31 days' WHERE id = CAST(:d AS uuid)", d=dead[0])
    set_env(monkeypatch, DLQ_ALERT_THRESHOLD="2", METRICS_FORMAT="emf")  # as the cloud runs it
    metrics.flush()  # what the sends above counted: the tick's own EMF output starts empty
    dlq = function_client("dlq-drain")
    capsys.readouterr()
    caplog.clear()

    response = dlq.post("/events", json={"source": "aws.events", "detail-type": "Scheduled Event"})
    assert response.status_code == 200, response.get_json()
    report = response.get_json()
    assert (report["archived"], report["alert"], report["count"], report["last_hour"]) == (1, True, 2, 2)
    assert report["top_error_codes"] == [{"code": "40310", "count": 2}]
    assert pool.run("SELECT id::text FROM dead_letters_archive") == [[dead[0]]]

    [record] = _alert_records(caplog)
    assert record.levelno == logging.WARNING
    line = json.loads(JsonFormatter().format(record))
    assert line["logger"] == "koinonia.alerts" and line["alert"] == "dead_letters"
    assert (line["count"], line["last_hour"], line["top_error_codes"]) == (2, 2, [{"code": "40310", "count": 2}])
    assert not any(number in json.dumps(line) for number in to)

    # No EMF of its own: CloudWatch alarms on DeadLetterBacklog and MessagesDead (common/metrics, dimension Stage),
    # which the retry-scheduler and the outcome writes record whether or not an alert fires.
    assert _emf_lines(capsys.readouterr().out) == []

    # Growth alone fires too: a high threshold, but 2 arrived in the last hour.
    set_env(monkeypatch, DLQ_ALERT_THRESHOLD="1000", DLQ_ALERT_GROWTH="2")
    caplog.clear()
    assert dlq.post("/events").get_json()["alert"] is True
    assert len(_alert_records(caplog)) == 1


def test_the_scheduled_tick_stays_quiet_below_the_thresholds(send, dlq, tenant, pool, sandbox, caplog, capsys):
    [to] = numbers(1, area="415")
    sandbox.configure(rules={to: "invalid"})
    fail(send, tenant, pool, [to])
    capsys.readouterr()
    caplog.clear()
    report = dlq.post("/events", json={}).get_json()
    assert (report["alert"], report["count"], report["last_hour"], report["archived"]) == (False, 1, 1, 0)
    assert (report["threshold"], report["growth"]) == (1000, 100)
    assert _alert_records(caplog) == []
    assert _emf_lines(capsys.readouterr().out) == []


# -- the operator command ----------------------------------------------------------------------------------------


def test_the_cli_lists_and_replays_with_progress(send, tenant, other, pool, sandbox, capsys, monkeypatch):
    mine, theirs = numbers(3, area="415"), numbers(1, area="646")
    sandbox.configure(rules=dict.fromkeys(mine + theirs, "invalid"))
    my_ids = fail(send, tenant, pool, mine)
    their_ids = fail(send, other, pool, theirs)
    sandbox.configure(rules={})
    capsys.readouterr()

    assert run_cli(["dlq", "list", "--church", tenant.church_id, "--code", "40310"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["created_at", "id", "church", "code"]
    assert len(lines) == 1 + 3 + 1 and lines[-1] == "3 shown"
    assert not any(number in out for number in mine + theirs)  # recipients are masked
    assert all(f"{number[-4:]}" in out for number in mine)  # ... but a hint of each is shown
    assert run_cli(["dlq", "list", "--limit", "2"]) == 0
    assert "next: " in capsys.readouterr().out.splitlines()[-1]
    assert run_cli(["dlq", "list", "--cursor", "bm9wZQ"]) == 2
    assert "cursor is not one this API returned" in capsys.readouterr().err

    assert run_cli(["dlq", "replay", "--code", "40310", "--church", tenant.church_id, "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith("replay [")]
    assert progress == [
        "replay [################--------] 2/3 (2 replayed, 0 skipped)",
        "replay [########################] 3/3 (3 replayed, 0 skipped)",
    ], out
    assert "dlq replay: 3 replayed, 0 skipped (message no longer failed), 0 not found" in out
    assert "dlq replay: 3 enqueued" in out
    drain_until(lambda: set(statuses(pool, my_ids.values()).values()) == {"sent"}, what="the replays are sent")
    assert statuses(pool, their_ids.values()) == {their_ids[theirs[0]]: "failed"}
    assert sandbox.ledger.by_to() == dict.fromkeys(mine, 1)

    assert run_cli(["dlq", "replay", "--ids", *dead_letter_ids(pool, my_ids.values())]) == 0
    assert "0 replayed, 3 skipped" in capsys.readouterr().out

    # Purge asks first; without a terminal to ask on, it needs --yes.
    assert run_cli(["dlq", "purge", "--code", "40310"]) == 1
    assert "nothing purged" in capsys.readouterr().out
    assert pool.run("SELECT count(*) FROM dead_letters")[0][0] == 4
    assert run_cli(["dlq", "purge", "--code", "40310", "--church", other.church_id, "--yes"]) == 0
    out = capsys.readouterr().out
    assert "purge [########################] 1/1" in out and "dlq purge: 1 purged" in out
    assert pool.run("SELECT count(*) FROM dead_letters")[0][0] == 3
    assert run_cli(["dlq", "archive", "--older-than-days", "0"]) == 0
    assert "dlq archive: 3 moved to dead_letters_archive" in capsys.readouterr().out


def test_the_dlq_drain_routes_answer_unknown_paths_and_methods(dlq):
    assert dlq.get("/dead-letters/replay", headers=OPERATOR).status_code == 405
    assert dlq.get("/nowhere").status_code == 404

