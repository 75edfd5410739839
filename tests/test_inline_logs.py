"""Inline sends log their outcomes as the consumer does (issue #8): when Redis is unreachable (or
``ENABLE_QUEUES=false``) ``send`` delivers at once (common/inline.py), and each outcome still gets its
``delivery outcome`` line with the message's correlation id, so one query follows a message whichever path sent it.

The send function runs as functions-framework serves it (real PostgreSQL, the sandbox carrier); Redis is a closed
port or switched off. Lines are read from ``caplog`` through our ``JsonFormatter``, as production writes them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from common import constants, log_context
from common.logs import JsonFormatter
from tests.factories import make_church
from tests.helpers import function_client, set_env

SENT, REFUSED, FLAKY = "+13125550142", "+13125550143", "+13125550144"
BODY = "Choir practice moved to Thursday 7pm"
CORRELATION_ID = "app-7:inline.1"


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    formatter = JsonFormatter()
    return [json.loads(formatter.format(record)) for record in caplog.records]


def _outcome(lines: list[dict[str, Any]], message_id: str) -> dict[str, Any]:
    found = [line for line in lines if line["msg"] == "delivery outcome" and line.get("message_id") == message_id]
    assert len(found) == 1, f"expected one outcome line for {message_id}, got {found}"
    return found[0]


@pytest.mark.parametrize(
    "redis_off",
    [
        {constants.REDIS_URL_ENV: "redis://127.0.0.1:1/0"},  # nothing listens there: the enqueue fails, send goes inline
        {constants.ENABLE_QUEUES_ENV: "false"},
    ],
    ids=["redis-unreachable", "queues-disabled"],
)
def test_an_inline_send_logs_one_outcome_line_per_message_with_its_correlation_id(
    send_env, pool, sandbox, caplog, monkeypatch, redis_off
):
    log_context.install_record_factory()  # as configure_logging does in every function's main.py
    caplog.set_level(logging.INFO)
    tenant = make_church(pool)
    set_env(monkeypatch, **redis_off)
    sandbox.configure(rules={REFUSED: "invalid", FLAKY: "fail_first:1"})  # a 400 (dead letter) and a 503 (retry)

    answer = function_client("send").post(
        "/messages", json={"channel": "sms", "to": [SENT, REFUSED, FLAKY], "text": BODY},
        headers={**tenant.auth, "X-Request-Id": CORRELATION_ID},
    )  # fmt: skip

    assert answer.status_code == 202, answer.get_json()
    body = answer.get_json()
    assert body["mode"] == "inline"
    ids = {r["to"]: r["message_id"] for r in body["recipients"]}
    lines = _lines(caplog)
    sent, refused, flaky = (_outcome(lines, ids[number]) for number in (SENT, REFUSED, FLAKY))
    for line in (sent, refused, flaky):
        assert (line["correlation_id"], line["request_id"], line["function"]) == (CORRELATION_ID, CORRELATION_ID, "send")
        assert (line["mode"], line["attempt"], line["level"]) == ("inline", 1, "INFO")
        assert isinstance(line["latency_ms"], int) and line["latency_ms"] >= 0
    assert (sent["status"], sent["outcome"]) == ("sent", "sent") and sent["provider_message_id"]
    assert (refused["status"], refused["dead_letter"], refused["error_code"]) == ("failed", True, "40310")
    assert (flaky["status"], flaky["outcome"]) == ("retrying", "retry") and "dead_letter" not in flaky
    stored = pool.run("SELECT status, count(*) FROM messages GROUP BY status ORDER BY status")
    assert stored == [["failed", 1], ["retrying", 1], ["sent", 1]]  # the lines say what PostgreSQL holds

    text = "\n".join(json.dumps(line) for line in lines)
    for secret in (BODY, *(n.removeprefix("+1") for n in (SENT, REFUSED, FLAKY))):
        assert secret not in text, f"{secret!r} was logged"
