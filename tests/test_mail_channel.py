"""``channel: mail`` end to end: POST /messages, the real consumer (and the inline path), moto's server as SES.

Real PostgreSQL, Redis and moto over HTTP (``mail_env`` in conftest.py); nothing of ours is mocked. SES
throttling is injected at the HTTP layer as in tests/test_mail_ses.py: a botocore ``before-send`` handler
on the mailer the consumer is handed (``run_consumer(..., mailer=)``) answers the first calls with SES's
Throttling error, which botocore parses as it would a real one. No sleeps: the retry is driven by consumer
rounds polled under a deadline, as the other retry tests do.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from common import constants
from common.compliance import opt_outs
from common.config import get_settings
from common.consume import ConsumeBudget, ConsumeReport, run_consumer
from common.dead_letters.access import Scope
from common.dead_letters.replay import replay_ids
from common.mail import SesMailer, sent_mail
from common.privacy import crypto
from common.runtime import get_runtime
from common.scheduler import Scheduler
from tests.conftest import MAIL_SENDER
from tests.factories import Tenant, add_contact, make_church, numbers
from tests.helpers import function_client, set_env
from tests.test_mail_ses import Faults, fault

EMAILS = ["ann.lee@example.org", "boaz.okafor@example.net", "chloe.marsh@example.com", "dov.stein@example.org"]
SUBJECT = "Advent newsletter: Sunday schedule"
TEXT = "Advent services start Sunday at 10am. Bring a friend!"
HTML = "<p>Advent services start <b>Sunday at 10am</b>.</p>"
THROTTLED = fault(400, "Throttling", "Maximum sending rate exceeded.")


@pytest.fixture
def send(mail_env):
    return function_client("send")


@pytest.fixture
def tenant(mail_env, pool) -> Tenant:
    """A church whose group has four members with an email address and one with a number only."""
    church = make_church(pool, members=numbers(1, area="415"))  # the number-only member: no mail for them
    with pool.transaction() as conn:
        for email in EMAILS:
            contact = add_contact(conn, church.church_id, None, email=email)
            conn.run("INSERT INTO group_members (group_id, contact_id) VALUES (CAST(:g AS uuid), CAST(:c AS uuid))",
                     g=church.group_id, c=contact)  # fmt: skip
    return church


def post(send, tenant: Tenant, headers: dict[str, str] | None = None, **body: Any):
    payload = {"channel": "mail", "subject": SUBJECT, "text": TEXT, **body}
    return send.post("/messages", json=payload, headers={**tenant.auth, **(headers or {})})


def rows(pool) -> dict[str, tuple[str, int, str | None]]:
    """email -> (status, attempts, last error code)."""
    found = pool.run("SELECT to_enc, status, attempts, last_error_code FROM messages WHERE channel = 'mail'")
    return {crypto.unseal(to, "address"): (status, attempts, code) for to, status, attempts, code in found}


def drain(mailer: SesMailer | None = None, **budget: Any) -> ConsumeReport:
    budget = {"max_seconds": 30.0, "stop_when_idle": True, **budget}
    return asyncio.run(run_consumer(get_runtime(), ConsumeBudget(**budget), mailer=mailer))


def drain_until(condition: Callable[[], bool], *, mailer: SesMailer | None = None, timeout_s: float = 30.0) -> None:
    """Consumer rounds until ``condition`` holds: a round stops when nothing is due within a second, so a
    retry due later is taken by the next one (a round that found nothing waits for work, briefly)."""
    deadline = time.monotonic() + timeout_s
    idle = False
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s:g}s"
        report = drain(mailer, max_seconds=0.5, stop_when_idle=False) if idle else drain(mailer)
        idle = report.dequeued == 0


@pytest.fixture
def outbox(mail_env) -> Callable[[], list[dict[str, Any]]]:
    """What moto's SES has accepted so far (recipients unmasked), oldest first."""
    endpoint = mail_env.ses_endpoint_url
    assert endpoint
    return lambda: [dict(m) for m in sent_mail(endpoint, show_recipients=True)]


def counts(pool) -> tuple[int, int]:
    return pool.run("SELECT count(*) FROM broadcasts")[0][0], pool.run("SELECT count(*) FROM messages")[0][0]


# -- delivery ---------------------------------------------------------------------------------------------


def test_a_group_mail_is_retried_after_ses_throttling_and_each_mail_reaches_ses_once(send, tenant, pool, outbox):
    answer = post(send, tenant, groups=[tenant.group_id], html=HTML)
    assert answer.status_code == 202, answer.get_json()
    body = answer.get_json()
    assert (body["channel"], body["encoding"], body["segments"], body["mode"]) == ("mail", None, 0, "queued")
    assert body["counts"] == {"accepted": 4, "suppressed": 0, "invalid": 0, "duplicates_removed": 0}
    assert sorted(r["to"] for r in body["recipients"]) == sorted(EMAILS)  # the number-only member gets no mail
    assert pool.run("SELECT DISTINCT from_address, encoding, segments, lane FROM messages") == [
        [f"Grace Church <{MAIL_SENDER}>", None, 0, "bulk"]
    ]

    mailer = SesMailer.from_settings(get_settings())
    faults = Faults(mailer, [THROTTLED, THROTTLED])  # the first two SendEmail calls: SES's Throttling
    try:
        # Round one takes the four mails and nothing more: the two throttled ones wait for their retry.
        first = drain(mailer, max_messages=4, stop_when_idle=False)
        assert (first.dequeued, first.sent, first.retrying) == (4, 2, 2), first
        after_first = rows(pool)
        throttled = sorted(email for email, (status, _, _) in after_first.items() if status == "retrying")
        assert len(throttled) == 2 and all(after_first[e] == ("retrying", 1, "ses:Throttling") for e in throttled)
        assert len(outbox()) == 2

        drain_until(lambda: all(status == "sent" for status, _, _ in rows(pool).values()), mailer=mailer)
    finally:
        asyncio.run(mailer.aclose())

    final = rows(pool)
    assert {e: s[:2] for e, s in final.items()} == {e: ("sent", 2 if e in throttled else 1) for e in EMAILS}
    history = pool.run(
        "SELECT m.to_enc, a.attempt, a.outcome, a.error_code, a.http_status, a.finished_at, a.next_attempt_at"
        " FROM message_attempts a JOIN messages m ON m.id = a.message_id ORDER BY a.message_id, a.attempt"
    )
    by_email: dict[str, list[list[Any]]] = {}
    for to, *attempt in history:
        by_email.setdefault(crypto.unseal(to, "address"), []).append(attempt)
    for email in throttled:
        (n1, outcome1, code1, http1, _, retry_at), (n2, outcome2, code2, _, finished2, _) = by_email[email]
        assert (n1, outcome1, code1, http1) == (1, "rate_limited", "ses:Throttling", 400)
        assert (n2, outcome2, code2) == (2, "sent", None)
        assert retry_at is not None and finished2 >= retry_at  # the retry waited for its backoff
    # SES saw six SendEmail calls (4 + 2 retries), each with both parts; moto recorded every mail exactly once.
    assert faults.requests == 6
    assert all(b"Message.Body.Text.Data=" in wire and b"Message.Body.Html.Data=" in wire for wire in faults.bodies)
    recorded = outbox()
    assert sorted(m["to"][0] for m in recorded) == sorted(EMAILS) and len(recorded) == 4
    assert {(m["source"], m["subject"]) for m in recorded} == {(f"Grace Church <{MAIL_SENDER}>", SUBJECT)}
    provider_ids = {row[0] for row in pool.run("SELECT provider_message_id FROM messages")}
    assert provider_ids == {m["message_id"] for m in recorded}
    assert pool.run("SELECT count(*) FROM dead_letters")[0][0] == 0


def test_an_unverified_from_is_a_permanent_failure_and_a_dead_letter_that_replays(send, tenant, pool, outbox, monkeypatch):
    set_env(monkeypatch, **{constants.MAIL_FROM_ENV: "stranger@unverified.example"})
    answer = post(send, tenant, to="ann.lee@example.org")
    assert answer.status_code == 202, answer.get_json()
    report = drain()
    assert (report.failed, report.retrying, report.sent) == (1, 0, 0), report
    assert rows(pool) == {"ann.lee@example.org": ("failed", 1, "ses:MessageRejected")}
    [[dead_letter, reason, code]] = pool.run("SELECT id::text, reason, error_code FROM dead_letters")
    assert (reason, code) == ("permanent carrier error ses:MessageRejected", "ses:MessageRejected")
    assert outbox() == []

    # The operator fixes MAIL_FROM and replays the dead letter: it goes out once, through the same queue.
    set_env(monkeypatch, **{constants.MAIL_FROM_ENV: f"Grace Church <{MAIL_SENDER}>"})
    assert replay_ids(get_runtime(), Scope.church(tenant.church_id), [dead_letter]).enqueued == 1
    assert drain().sent == 1
    assert rows(pool) == {"ann.lee@example.org": ("sent", 1, None)}  # a replay starts its attempts again
    assert [m["to"] for m in outbox()] == [["ann.lee@example.org"]]


def test_without_redis_the_mail_is_sent_inline(send, tenant, pool, outbox, monkeypatch):
    set_env(monkeypatch, **{constants.ENABLE_QUEUES_ENV: "false"})
    answer = post(send, tenant, to=["Ann.Lee@EXAMPLE.org", "boaz.okafor@example.net"], html=HTML)
    assert answer.status_code == 202, answer.get_json()
    body = answer.get_json()
    assert body["mode"] == "inline" and {r["status"] for r in body["recipients"]} == {"sent"}
    assert [r["to"] for r in body["recipients"]] == ["Ann.Lee@example.org", "boaz.okafor@example.net"]  # domain lower-cased
    assert sorted(m["to"][0] for m in outbox()) == [
        "Ann.Lee@example.org", "boaz.okafor@example.net"
    ]  # fmt: skip


def test_with_redis_off_the_scheduler_sends_a_due_scheduled_mail_inline(send, tenant, pool, outbox, monkeypatch):
    set_env(monkeypatch, **{constants.ENABLE_QUEUES_ENV: "false"})
    send_at = datetime.now(UTC) + timedelta(seconds=2)
    answer = post(send, tenant, to="ann.lee@example.org", send_at=send_at.isoformat())
    assert answer.status_code == 202 and answer.get_json()["mode"] == "scheduled", answer.get_json()
    scheduler = Scheduler(get_runtime())
    deadline = time.monotonic() + 30
    while rows(pool)["ann.lee@example.org"][0] != "sent":  # polled under a deadline: due in about 2 s
        assert time.monotonic() < deadline, rows(pool)
        scheduler.send_inline()
        time.sleep(0.05)
    assert scheduler.report.inline_sent == 1
    assert [m["to"] for m in outbox()] == [["ann.lee@example.org"]]


# -- accept -------------------------------------------------------------------------------------------------


def test_an_idempotent_replay_answers_the_same_and_sends_nothing_new(send, tenant, pool, outbox):
    key = {"Idempotency-Key": "advent-newsletter-1"}
    first = post(send, tenant, key, groups=[tenant.group_id])
    again = post(send, tenant, key, groups=[tenant.group_id])
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json() and again.headers["Idempotent-Replayed"] == "true"
    conflict = post(send, tenant, key, groups=[tenant.group_id], subject="Another subject")
    assert conflict.status_code == 409 and conflict.get_json()["error"]["code"] == "idempotency_conflict"
    assert counts(pool) == (1, 4)
    drain()
    post(send, tenant, key, groups=[tenant.group_id])  # after delivery too
    drain()
    assert sorted(m["to"][0] for m in outbox()) == sorted(EMAILS)


def test_opted_out_addresses_are_suppressed_at_accept_and_at_claim(send, tenant, pool, outbox):
    with pool.transaction() as conn:
        opt_outs.opt_out(conn, tenant.church_id, EMAILS[0], source="api", channel="mail")
        # An SMS opt-out of the same address stops nothing on mail: channels are apart.
        opt_outs.opt_out(conn, tenant.church_id, EMAILS[1], source="api", channel="sms")
    body = post(send, tenant, groups=[tenant.group_id]).get_json()
    assert body["counts"]["accepted"] == 3 and body["counts"]["suppressed"] == 1
    assert {r["to"]: r["status"] for r in body["recipients"]}[EMAILS[0]] == "suppressed"
    with pool.transaction() as conn:  # opts out after the send was accepted: the claim suppresses it
        opt_outs.opt_out(conn, tenant.church_id, EMAILS[2], source="api", channel="mail")
    report = drain()
    assert (report.sent, report.suppressed) == (2, 1), report
    assert sorted(m["to"][0] for m in outbox()) == sorted([EMAILS[1], EMAILS[3]])
    only = post(send, tenant, to=EMAILS[0])
    assert only.status_code == 422 and only.get_json()["error"]["code"] == "recipients_opted_out"


@pytest.mark.parametrize(
    ("payload", "code", "field"),
    [
        ({"channel": "mail", "to": "ann.lee@example.org", "text": "x"}, "validation_failed", "subject"),
        ({"channel": "mail", "to": "ann.lee@example.org", "text": "x", "subject": "  "}, "validation_failed", "subject"),
        ({"channel": "mail", "to": "ann.lee@example.org", "text": "x", "subject": "Hi\r\nBcc: x@y.org"}, "validation_failed",
         "subject"),
        ({"channel": "mail", "to": "ann.lee@example.org", "text": "x", "subject": "s" * 999}, "validation_failed", "subject"),
        ({"channel": "mail", "to": "ann.lee@example.org", "subject": "Hi"}, "validation_failed", "text"),
        ({"channel": "mail", "to": ["ann.lee@example.org", "ann@@x.org"], "text": "x", "subject": "Hi"}, "invalid_recipients",
         "to[1]"),
        ({"channel": "mail", "to": "+13125550142", "text": "x", "subject": "Hi"}, "invalid_recipients", "to[0]"),
        ({"channel": "mail", "to": "ann.lee@example.org", "text": "x", "subject": "Hi", "html": "a" * 200_001},
         "validation_failed", "html"),
        ({"channel": "mail", "to": "ann.lee@example.org", "text": "x", "subject": "Hi",
          "media_urls": ["https://example.org/a.jpg"]}, "validation_failed", "media_urls"),
        ({"channel": "mail", "to": "ann.lee@example.org", "text": "x", "subject": "Hi", "from": "+13125550100"},
         "validation_failed", "from"),
        ({"channel": "sms", "to": "+13125550142", "text": "x", "html": "<p>x</p>"}, "validation_failed", "html"),
        ({"channel": "sms", "to": "+13125550142", "text": "x", "subject": "Hi"}, "validation_failed", "subject"),
        ({"channel": "mms", "to": "+13125550142", "text": "x", "subject": "Hi"}, "validation_failed", "subject"),
    ],
)  # fmt: skip
def test_bad_mail_requests_are_422_naming_the_field_and_store_nothing(send, tenant, pool, payload, code, field):
    answer = send.post("/messages", json=payload, headers=tenant.auth)
    assert answer.status_code == 422, answer.get_json()
    error = answer.get_json()["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert error["message"]
    assert counts(pool) == (0, 0)


def test_mail_without_mail_from_is_503_naming_it_and_stores_nothing(send, tenant, pool, monkeypatch):
    monkeypatch.delenv(constants.MAIL_FROM_ENV)
    set_env(monkeypatch)
    answer = post(send, tenant, to="ann.lee@example.org")
    assert answer.status_code == 503, answer.get_json()
    error = answer.get_json()["error"]
    assert error["code"] == "mail_not_configured" and "MAIL_FROM" in error["message"]
    assert counts(pool) == (0, 0)


def test_the_address_subject_and_bodies_are_sealed_at_rest(send, tenant, pool):
    assert post(send, tenant, to="ann.lee@example.org", html=HTML).status_code == 202
    [[to_enc, subject_enc, body_enc, html_enc]] = pool.run("SELECT to_enc, subject_enc, body_enc, html_body_enc FROM messages")
    assert (crypto.unseal(to_enc, "address"), crypto.unseal(subject_enc, "text")) == ("ann.lee@example.org", SUBJECT)
    assert (crypto.unseal(body_enc, "text"), crypto.unseal(html_enc, "text")) == (TEXT, HTML)
    dump = " ".join(
        str(value) for row in pool.run("SELECT encode(m::text::bytea, 'escape') FROM messages m") for value in row
    ) + " ".join(str(v) for row in pool.run("SELECT response_enc::text FROM broadcasts") for v in row)
    for secret in ("ann.lee", "Advent", "Sunday", "<p>"):
        assert secret not in dump and secret.encode().hex() not in dump
