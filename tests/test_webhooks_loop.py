"""The whole loop over real HTTP: send → consumer → sandbox → signed webhooks → webhooks function.

The webhooks function is served by werkzeug on a free port (as functions-framework's app); the sandbox
posts its signed ``message.sent`` / ``message.finalized`` / ``message.received`` there, with the faults
it can inject (duplicates, reordering, dropped deliveries that it retries).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from common.consume import ConsumeBudget, run_consumer
from common.privacy.crypto import lookup_hash, unseal
from common.runtime import get_runtime
from tests.factories import make_church, numbers
from tests.helpers import function_client


@pytest.fixture
def tenant(hooks_url, pool):
    return make_church(pool, members=numbers(5, area="415"))


def broadcast(tenant, text: str = "Potluck at 6") -> dict:
    answer = function_client("send").post(
        "/messages", json={"channel": "sms", "groups": [tenant.group_id], "text": text}, headers=tenant.auth
    )
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()


def drain_and_settle(sandbox) -> None:
    asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=30, stop_when_idle=True)))
    assert sandbox.wait_webhooks_idle(20), "the sandbox still had webhooks to deliver after 20 s"


def statuses(pool) -> dict[str, int]:
    return dict(pool.run("SELECT status, count(*) FROM messages WHERE purpose = 'normal' GROUP BY status"))


def member_texts(sandbox, text: str, frm: str, to: str) -> None:
    answer = httpx.post(f"{sandbox.url}/_sandbox/inbound", json={"from": frm, "to": to, "text": text}, timeout=10)
    assert answer.status_code == 200, answer.text
    assert sandbox.wait_webhooks_idle(20)


@pytest.mark.smoke
def test_send_sandbox_webhook_delivered(tenant, pool, sandbox):
    broadcast(tenant)
    drain_and_settle(sandbox)
    assert statuses(pool) == {"delivered": 5}
    assert pool.run("SELECT count(*) FROM webhook_events")[0][0] == 10  # sent + finalized each
    assert pool.run("SELECT count(*) FROM messages WHERE carrier IS NULL OR cost_amount IS NULL")[0][0] == 0
    assert sandbox.ledger.accepted == 5 and sandbox.ledger.duplicates == 0


def test_duplicated_reordered_and_dropped_receipts_still_end_right(tenant, pool, sandbox):
    # Enough redelivery attempts that a dropped delivery always gets through in the end (with Telnyx's
    # 3, an event lost three times leaves its message at its last known state: see the next test).
    sandbox.configure(webhook_duplicate_rate=0.5, webhook_reorder_rate=0.5, webhook_fail_rate=0.2,
                      webhook_attempts=12, webhook_retry_base_ms=5, seed=11)  # fmt: skip
    more = make_church(pool, "Big Church", sender="+13125550200", members=numbers(60, area="646"))
    broadcast(more)
    drain_and_settle(sandbox)
    summary = httpx.get(f"{sandbox.url}/_sandbox/ledger", timeout=10).json()["webhooks"]
    assert summary["duplicates"] > 10 and summary["reordered"] > 10 and summary["failed"] > 5, summary
    assert summary["undelivered"] == 0, summary
    assert statuses(pool) == {"delivered": 60}
    assert pool.run("SELECT count(*) FROM webhook_events")[0][0] == 120  # each event applied once
    assert pool.run("SELECT count(*) FROM carrier_receipts WHERE applied_at IS NULL")[0][0] == 0


def test_a_receipt_telnyx_gives_up_on_leaves_the_last_known_state(tenant, pool, sandbox):
    """Every delivery of every event fails: the messages stay `sent` (true as far as we know), nothing breaks."""
    sandbox.configure(webhook_fail_rate=1.0, webhook_retry_base_ms=1)
    broadcast(tenant)
    drain_and_settle(sandbox)
    assert statuses(pool) == {"sent": 5}
    assert httpx.get(f"{sandbox.url}/_sandbox/ledger", timeout=10).json()["webhooks"]["undelivered"] == 10


def test_a_failed_delivery_receipt_records_the_carrier_code(tenant, pool, sandbox):
    sandbox.configure(rules={tenant.members[0]: "dlr:delivery_failed"})
    broadcast(tenant)
    drain_and_settle(sandbox)
    assert statuses(pool) == {"delivered": 4, "delivery_failed": 1}
    assert pool.run("SELECT last_error_code FROM messages WHERE status = 'delivery_failed'") == [["40008"]]


def test_a_member_texts_stop_and_the_next_broadcast_skips_them(tenant, pool, sandbox):
    stopper = tenant.members[0]
    member_texts(sandbox, "STOP", stopper, tenant.sender)
    source = "SELECT source FROM opt_outs WHERE address_hash = :h"
    assert pool.run(source, h=lookup_hash(tenant.church_id, stopper)) == [["keyword"]]
    thread = [[d, unseal(b, "text")] for d, b in pool.run("SELECT direction, body_enc FROM conversation_messages")]
    assert thread == [["inbound", "STOP"]]  # the carrier confirmed it (autoresponse_type): we do not again
    body = broadcast(tenant)
    assert body["counts"]["suppressed"] == 1
    drain_and_settle(sandbox)
    assert stopper not in sandbox.ledger.by_to()
    assert statuses(pool) == {"delivered": 4, "suppressed": 1}


def test_yes_opts_in_with_us_but_the_carrier_still_blocks_until_start(tenant, pool, sandbox):
    """Telnyx lifts its block on START/UNSTOP only: after YES our next text meets a 40300, which re-records
    the opt-out, so nothing is sent against the carrier's block and the state stays consistent."""
    member = tenant.members[0]
    member_texts(sandbox, "STOP", member, tenant.sender)
    member_texts(sandbox, "yes", member, tenant.sender)
    assert pool.run("SELECT count(*) FROM opt_outs")[0][0] == 0
    broadcast(tenant)
    drain_and_settle(sandbox)
    source = "SELECT source FROM opt_outs WHERE address_hash = :h"
    assert pool.run(source, h=lookup_hash(tenant.church_id, member)) == [["carrier_40300"]]
    member_texts(sandbox, "START", member, tenant.sender)
    broadcast(tenant, "Choir at 7")
    drain_and_settle(sandbox)
    assert sandbox.ledger.by_to()[member] == 1  # the Choir text; the Potluck one was refused by the carrier
