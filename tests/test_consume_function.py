"""queue-consume over functions-framework: a budgeted drain that answers with its report."""

from __future__ import annotations

from tests.factories import make_church, numbers
from tests.helpers import function_client


def test_an_invocation_drains_and_reports(send_env, pool, sandbox):
    tenant = make_church(pool)
    send = function_client("send")
    assert send.post("/messages", json={"channel": "sms", "to": numbers(25), "text": "x"}, headers=tenant.auth).status_code == 202
    consume = function_client("queue-consume")
    response = consume.post("/", json={"max_seconds": 30, "stop_when_idle": True})
    assert response.status_code == 200
    report = response.get_json()["report"]
    assert report["sent"] == 25 and report["dequeued"] == 25
    assert sandbox.ledger.accepted == 25
    # An SQS wake-up (what the cloud sends): nothing left to do, and no record is ever redelivered.
    wake = consume.post("/events", json={"Records": [{"messageId": "m1", "body": '{"wake": true}'}]})
    assert wake.status_code == 200
    assert wake.get_json()["batchItemFailures"] == []
    assert wake.get_json()["report"]["dequeued"] == 0


def test_a_bad_budget_is_422(send_env):
    response = function_client("queue-consume").post("/", json={"max_messages": "lots"})
    assert response.status_code == 422
    assert response.get_json()["error"]["field"] == "max_messages"
