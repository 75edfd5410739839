"""Metrics (common/metrics/): counted once per fact along the real pipeline, out as Prometheus text and as EMF.

Real PostgreSQL, Redis and the sandbox carrier; the functions as functions-framework serves them, the webhooks
function over real HTTP (``hooks_url``). The registry is the process's, so counters are compared before and
after (other tests in this process counted too); EMF is read from the captured stdout.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from collections import Counter
from typing import Any

import pytest

from common import metrics
from common.consume import ConsumeBudget, run_consumer
from common.ids import uuid7
from common.metrics import emf
from common.metrics.catalog import CATALOG, Metric
from common.metrics.registry import Registry
from common.runtime import get_runtime
from tests.factories import make_church, numbers
from tests.helpers import ROOT, function_client, set_env, wait_for

FUNCTIONS = sorted(p.parent.name for p in (ROOT / "functions").glob("*/main.py"))
COUNTERS = {
    "accepted": "koinonia_messages_accepted_total", "sent": "koinonia_messages_sent_total",
    "delivered": "koinonia_messages_delivered_total", "failed": "koinonia_messages_failed_total",
    "retried": "koinonia_messages_retried_total", "dead": "koinonia_messages_dead_total",
}  # fmt: skip
GAUGES = {"depth": "koinonia_queue_depth", "age": "koinonia_queue_oldest_age_seconds", "dlq": "koinonia_dead_letters"}
LATENCY = "koinonia_carrier_latency_seconds"
EMF_NAMES = {
    "MessagesAccepted", "MessagesSent", "MessagesDelivered", "MessagesFailed", "MessagesRetried", "MessagesDead",
    "QueueDepth", "QueueAgeSeconds", "DeadLetterBacklog", "CarrierLatency",
}  # fmt: skip
CLOUDWATCH_UNITS = {
    "Seconds", "Microseconds", "Milliseconds", "Bytes", "Kilobytes", "Megabytes", "Gigabytes", "Terabytes", "Bits",
    "Kilobits", "Megabits", "Gigabits", "Terabits", "Percent", "Count", "Bytes/Second", "Kilobytes/Second",
    "Megabytes/Second", "Gigabytes/Second", "Terabytes/Second", "Bits/Second", "Kilobits/Second", "Megabits/Second",
    "Gigabits/Second", "Terabits/Second", "Count/Second", "None",
}  # fmt: skip


# -- a strict reader of the Prometheus text format (0.0.4) ------------------------------------------------------------

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse_exposition(text: str) -> Samples:
    """Every sample of ``text``, checked: HELP and TYPE once per family and before its samples, names and labels
    well formed, no sample twice, histograms cumulative and ending in +Inf = _count."""
    assert text.endswith("\n") and "\n\n" not in text, "lines end with \\n; no blank lines"
    helped: set[str] = set()
    types: dict[str, str] = {}
    samples: Samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            assert re.fullmatch(_NAME, name) and help_text and name not in helped, line
            helped.add(name)
        elif line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped") and name not in types, line
            assert name in helped, f"HELP before TYPE: {line}"
            types[name] = kind
        else:
            assert not line.startswith("#"), line
            match = _SAMPLE.fullmatch(line)
            assert match, f"not a sample: {line!r}"
            name, label_text, raw = match.groups()
            family = next((f for f in (name, re.sub(r"_(bucket|sum|count)$", "", name)) if f in types), None)
            assert family is not None, f"sample before its TYPE: {line}"
            if family != name:
                assert types[family] == "histogram", line
            if types[family] == "counter":
                assert name.endswith("_total"), line
            labels = _labels(label_text or "", line)
            value = float(raw)  # also +Inf, -Inf, NaN
            assert (name, labels) not in samples, f"sample twice: {line}"
            samples[(name, labels)] = value
    for family, kind in types.items():
        if kind == "histogram":
            _check_histogram(family, samples)
    return samples


def _labels(text: str, line: str) -> Labels:
    pairs: list[tuple[str, str]] = []
    position = 0
    while position < len(text):
        match = _LABEL.match(text, position)
        assert match, f"bad labels in {line!r}"
        pairs.append((match.group(1), match.group(2)))
        position = match.end()
    assert len({n for n, _ in pairs}) == len(pairs), f"a label twice: {line}"
    return tuple(sorted(pairs))


def _check_histogram(family: str, samples: Samples) -> None:
    series: dict[Labels, list[tuple[float, float]]] = {}
    for (name, labels), value in samples.items():
        if name == f"{family}_bucket":
            le = dict(labels)["le"]
            rest = tuple(p for p in labels if p[0] != "le")
            series.setdefault(rest, []).append((float(le), value))
    assert series, f"{family} has no buckets"
    for rest, buckets in series.items():
        buckets.sort()
        counts = [c for _, c in buckets]
        assert counts == sorted(counts), f"{family}{rest} buckets are not cumulative"
        assert buckets[-1][0] == math.inf, f"{family}{rest} has no +Inf bucket"
        assert samples[(f"{family}_count", rest)] == buckets[-1][1], f"{family}{rest}: +Inf bucket != _count"
        assert (f"{family}_sum", rest) in samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape(client: Any) -> Samples:
    answer = client.get("/metrics")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert answer.headers["Cache-Control"] == "no-store"
    return parse_exposition(answer.get_data(as_text=True))


def change(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def changes(before: Samples, after: Samples) -> dict[str, float]:
    """The counters' changes (over every channel), and the carrier requests timed."""
    out = {
        key: sum(v for (n, _), v in after.items() if n == name) - sum(v for (n, _), v in before.items() if n == name)
        for key, name in COUNTERS.items()
    }
    out["latency"] = sum(v for (n, _), v in after.items() if n == f"{LATENCY}_count") - sum(
        v for (n, _), v in before.items() if n == f"{LATENCY}_count"
    )
    return out


# -- the pipeline ----------------------------------------------------------------------------------------------------------


def drain(max_seconds: float = 30.0) -> None:
    asyncio.run(run_consumer(get_runtime(), ConsumeBudget(max_seconds=max_seconds, stop_when_idle=True)))


WAITING_SQL = "SELECT count(*) FROM messages WHERE status IN ('queued', 'retrying', 'sending', 'scheduled')"


def settle(pool, *, timeout_s: float) -> None:
    """Consume until no message waits (retries come due about a second later)."""

    def nothing_waits() -> bool:
        drain(max_seconds=5)
        return pool.run(WAITING_SQL)[0][0] == 0

    wait_for(nothing_waits, timeout_s=timeout_s, what="every message settled", poll_s=0.1)


def scrape_until(client: Any, before: Samples, counter: str, expected: float) -> Samples:
    """Scrape until ``counter`` has changed by ``expected`` since ``before`` (receipts arrive over HTTP, later)."""

    def reached() -> Samples | None:
        samples = scrape(client)
        return samples if changes(before, samples)[counter] == expected else None

    found: Samples = wait_for(reached, timeout_s=20, what=f"{counter} to change by {expected}")
    return found


def post(client: Any, tenant, **body: Any) -> dict[str, Any]:
    answer = client.post("/messages", json={"channel": "sms", "text": "Choir at 6", **body}, headers=tenant.auth)
    assert answer.status_code == 202, answer.get_json()
    return dict(answer.get_json())


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_function_answers_valid_prometheus_text_outside_its_openapi_document(env, name):
    client = function_client(name)
    samples = scrape(client)
    families = {n for n, _ in samples}
    assert set(COUNTERS.values()) | set(GAUGES.values()) | {f"{LATENCY}_count", "koinonia_database_up"} <= families
    assert value(samples, "koinonia_database_up") == 1
    for channel in ("sms", "mms", "mail"):
        assert (COUNTERS["accepted"], (("channel", channel),)) in samples
        assert (f"{LATENCY}_bucket", (("channel", channel), ("le", "+Inf"))) in samples
    document = client.get("/openapi.json").get_json()
    assert "/metrics" not in document["paths"] and "/openapi.json" in document["paths"]


def test_a_send_its_carrier_requests_and_its_receipts_are_counted_once_each(hooks_url, pool, sandbox):
    tenant = make_church(pool, members=numbers(4, area="415"))
    send = function_client("send")
    before = scrape(send)

    post(send, tenant, groups=[tenant.group_id], text="Sunday at 10")
    post(send, tenant, to="+13125550142", text="See you Sunday")
    replay = send.post("/messages", json={"channel": "sms", "to": "+13125550199", "text": "Once"},
                       headers={**tenant.auth, "Idempotency-Key": "once"})  # fmt: skip
    again = send.post("/messages", json={"channel": "sms", "to": "+13125550199", "text": "Once"},
                      headers={**tenant.auth, "Idempotency-Key": "once"})  # fmt: skip
    assert replay.status_code == again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
    accepted = scrape(send)
    assert change(before, accepted, COUNTERS["accepted"], channel="sms") == 6  # the replay is not a new message
    assert change(before, accepted, COUNTERS["accepted"], channel="mms") == 0
    assert value(accepted, GAUGES["depth"]) == 6  # queued in PostgreSQL, nobody consumed yet

    drain()
    assert sandbox.wait_webhooks_idle(20), "the sandbox still had webhooks to deliver"
    after = scrape_until(send, before, "delivered", 6)
    assert changes(before, after) == {
        "accepted": 6, "sent": 6, "delivered": 6, "failed": 0, "retried": 0, "dead": 0, "latency": 6,
    }  # fmt: skip
    assert change(before, after, f"{LATENCY}_count", channel="sms") == 6
    assert change(before, after, f"{LATENCY}_sum", channel="sms") > 0
    assert pool.run("SELECT status, count(*) FROM messages GROUP BY status") == [["delivered", 6]]
    assert (value(after, GAUGES["depth"]), value(after, GAUGES["age"]), value(after, GAUGES["dlq"])) == (0, 0, 0)
    # Every function answers from the one registry of the process: here the webhooks function counted the receipts.
    assert value(scrape(function_client("health")), COUNTERS["delivered"]) == value(after, COUNTERS["delivered"])


def test_retries_failures_and_dead_letters_through_carrier_faults(hooks_url, pool, sandbox):
    retried_then_sent, refused, out_of_attempts, undelivered = numbers(4, area="628")
    sandbox.configure(rules={
        retried_then_sent: "fail_first:1",  # 503, then accepted: one retry
        refused: "invalid",  # 400/40310: permanent, a dead letter at once
        out_of_attempts: "fail_first:99",  # 503 twice with max_attempts 2: one retry, then a dead letter
        undelivered: "dlr:delivery_failed:40001",  # accepted, then the carrier's receipt says delivery_failed
    })  # fmt: skip
    tenant = make_church(pool)
    send = function_client("send")
    before = scrape(send)
    post(send, tenant, to=[retried_then_sent, refused, out_of_attempts, undelivered], max_attempts=2)

    settle(pool, timeout_s=60)
    assert sandbox.wait_webhooks_idle(20)
    after = scrape_until(send, before, "failed", 3)
    statuses = dict(pool.run("SELECT status, count(*) FROM messages GROUP BY status"))
    assert statuses == {"delivered": 1, "failed": 2, "delivery_failed": 1}, statuses
    assert changes(before, after) == {
        "accepted": 4, "sent": 2, "delivered": 1, "retried": 2, "dead": 2,
        "failed": 3,  # two dead letters, and one the carrier could not deliver
        "latency": 6,  # 2 + 1 + 2 + 1 carrier requests
    }  # fmt: skip
    assert value(after, GAUGES["dlq"]) == pool.run("SELECT count(*) FROM dead_letters")[0][0] == 2
    assert value(after, GAUGES["depth"]) == 0


def test_the_queue_gauges_follow_the_rows(send_env, pool):
    tenant = make_church(pool)
    send = function_client("send")
    now = post(send, tenant, to=numbers(3, area="415"))
    post(send, tenant, to="+14155550177", send_at="2099-12-06T10:00:00Z")  # scheduled: waits, but is not late
    samples = scrape(send)
    assert (value(samples, GAUGES["depth"]), value(samples, GAUGES["dlq"])) == (4, 0)
    assert 0 <= value(samples, GAUGES["age"]) < 60

    late, failed = now["recipients"][0]["message_id"], now["recipients"][1]["message_id"]
    pool.run("UPDATE messages SET next_attempt_at = now() - interval '120 seconds' WHERE id = CAST(:id AS uuid)", id=late)
    pool.run("UPDATE messages SET status = 'failed', next_attempt_at = NULL WHERE id = CAST(:id AS uuid)", id=failed)
    pool.run("INSERT INTO dead_letters (id, message_id, church_id, reason, error_code)"
             " VALUES (CAST(:id AS uuid), CAST(:m AS uuid), CAST(:c AS uuid), 'permanent carrier error 40310', '40310')",
             id=str(uuid7()), m=failed, c=tenant.church_id)  # fmt: skip
    samples = scrape(send)
    assert (value(samples, GAUGES["depth"]), value(samples, GAUGES["dlq"])) == (3, 1)
    assert 120 <= value(samples, GAUGES["age"]) < 180


def test_with_postgresql_away_the_scrape_still_answers_the_counters(send_env, monkeypatch):
    set_env(monkeypatch, DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere?pool_timeout=2")
    samples = scrape(function_client("send"))
    assert value(samples, "koinonia_database_up") == 0
    assert not {n for n, _ in samples} & set(GAUGES.values())
    assert (COUNTERS["sent"], ()) in samples and (f"{LATENCY}_count", (("channel", "sms"),)) in samples


# -- EMF -------------------------------------------------------------------------------------------------------------------


def emf_documents(out: str) -> list[dict[str, Any]]:
    """The EMF lines of captured stdout, each checked against the EMF specification's shape."""
    docs = []
    for line in out.splitlines():
        if '"_aws"' not in line:
            continue
        doc = json.loads(line)  # one whole object per line: nothing before or after it
        assert isinstance(doc, dict) and isinstance(doc["_aws"], dict), line
        docs.append(doc)
    for doc in docs:
        meta = doc["_aws"]
        assert isinstance(meta["Timestamp"], int) and abs(meta["Timestamp"] / 1000 - time.time()) < 300, meta
        [directive] = meta["CloudWatchMetrics"]
        assert directive["Namespace"] == "Koinonia" and directive["Dimensions"] == [["Stage"]], directive
        assert isinstance(doc["Stage"], str) and isinstance(doc["Function"], str), doc
        names = [m["Name"] for m in directive["Metrics"]]
        assert names and len(names) == len(set(names)) <= 100 and set(names) <= EMF_NAMES, names
        for metric in directive["Metrics"]:
            assert set(metric) == {"Name", "Unit"} and metric["Unit"] in CLOUDWATCH_UNITS, metric
            assert metric["Unit"] == CATALOG[Metric(metric["Name"])].unit, metric
            _check_emf_value(doc[metric["Name"]], metric["Name"])
    return docs


def _check_emf_value(value: Any, name: str) -> None:
    if isinstance(value, dict):  # a histogram: Values with their Counts, and the statistics of the samples
        assert set(value) == {"Values", "Counts", "Min", "Max", "Count", "Sum"}, (name, value)
        assert 0 < len(value["Values"]) == len(value["Counts"]) <= 100, (name, value)
        assert all(isinstance(n, int) and n > 0 for n in value["Counts"]) and value["Count"] == sum(value["Counts"])
        assert 0 < value["Min"] <= value["Max"] and value["Min"] * value["Count"] <= value["Sum"] * 1.000001
        assert value["Sum"] <= value["Max"] * value["Count"] * 1.000001
    else:
        assert isinstance(value, int | float) and not isinstance(value, bool) and value >= 0, (name, value)


def totals(docs: list[dict[str, Any]]) -> Counter[str]:
    out: Counter[str] = Counter()
    for doc in docs:
        for metric in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            found = doc[metric["Name"]]
            out[metric["Name"]] += found["Count"] if isinstance(found, dict) else found
    return out


def test_emf_one_line_per_invocation_with_what_it_counted(send_env, pool, sandbox, monkeypatch, capfd):
    set_env(monkeypatch, METRICS_FORMAT="emf", STAGE="prod-eu")
    metrics.flush()  # what earlier tests in this process counted, then the baseline is now
    capfd.readouterr()
    tenant = make_church(pool, members=numbers(3, area="415"))
    send, consume, scheduler = function_client("send"), function_client("queue-consume"), function_client("retry-scheduler")

    post(send, tenant, groups=[tenant.group_id])
    sent = capfd.readouterr().out
    [accepted] = emf_documents(sent)
    assert (accepted["Stage"], accepted["Function"], accepted["MessagesAccepted"]) == ("prod-eu", "send", 3)

    answer = consume.post("/", json={"max_seconds": 20, "stop_when_idle": True})
    assert answer.status_code == 200 and answer.get_json()["report"]["sent"] == 3
    consumed = emf_documents(capfd.readouterr().out)
    assert [d["Function"] for d in consumed] == ["queue_consume"]  # the run's flush; the request's had nothing left
    assert totals(consumed) == {"MessagesSent": 3, "CarrierLatency": 3}

    assert scheduler.post("/", json={"budget_s": 0.05}).status_code == 200
    [tick] = emf_documents(capfd.readouterr().out)
    assert tick["Function"] == "retry_scheduler"
    assert (tick["QueueDepth"], tick["QueueAgeSeconds"], tick["DeadLetterBacklog"]) == (0, 0, 0)

    assert send.get("/metrics").status_code == 404  # in the cloud the metrics are in the logs, not on a public URL
    assert send.get("/messages", headers=tenant.auth).status_code == 200
    assert emf_documents(capfd.readouterr().out) == []  # nothing counted: no line


def test_emf_spreads_more_than_100_latency_values_over_several_lines():
    registry = Registry()
    samples = [0.00002 * 1.07**i for i in range(220)]  # 0.02 ms .. ~60 s: about 180 bins of 10%
    for seconds in samples:
        registry.observe_latency(seconds, "sms")
    registry.count(Metric.sent, 220)
    docs = emf.documents(registry.take_delta(), stage="local", function="queue_consume")
    assert len(docs) == 2
    assert docs[0]["MessagesSent"] == 220 and "MessagesSent" not in docs[1]
    assert all(len(d["CarrierLatency"]["Values"]) <= 100 for d in docs)
    assert sum(d["CarrierLatency"]["Count"] for d in docs) == 220
    assert math.isclose(sum(d["CarrierLatency"]["Sum"] for d in docs), sum(samples) * 1000)
    for doc in docs:  # each value within 5% of the samples it stands for: CloudWatch's own precision
        stats = doc["CarrierLatency"]
        assert stats["Values"][0] <= stats["Min"] * 1.05 and stats["Values"][-1] >= stats["Max"] / 1.05
    emf_documents("\n".join(json.dumps(d) for d in docs))  # the shape of every line
    assert not registry.take_delta()  # taken: the next flush has nothing
