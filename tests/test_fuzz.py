"""Fuzz every operation of every HTTP function from its own OpenAPI document (schemathesis + hypothesis).

For each function: its Flask app as functions-framework serves it, its document from ``GET /openapi.json``,
then for every operation schemathesis generates valid (positive) and invalid (negative) requests. They are
sent as a real church (tests/factories.make_church), as the operator, with no or a made-up credential; the
webhooks are signed with a key the test makes (or not, or too late). Real PostgreSQL, Redis, the sandbox.

Every answer must be: not a 5xx, JSON, a status the document lists for the operation, and for an error
the documented shape with a code the document lists for that status; a negative request must be refused
(schemathesis' ``negative_data_rejection``), and answers must match their documented schemas.

Budgets are kept short so a fuzzed run is fast (a valid ``max_seconds``/``budget_s`` is capped at 0.05 s;
an invalid one is sent as generated). Bounded by default (CI: ``KOINONIA_FUZZ_EXAMPLES`` examples per
operation and mode, derandomised so CI is reproducible); ``bench/fuzz.py`` runs the long, random version.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.core import NotSet
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tests.factories import make_church
from tests.helpers import ROOT, function_client, set_env
from tests.webhook_signing import Signer

FUNCTIONS = sorted(p.parent.name for p in (ROOT / "functions").glob("*/main.py"))
EXAMPLES = int(os.environ.get("KOINONIA_FUZZ_EXAMPLES", "20"))
RANDOM = os.environ.get("KOINONIA_FUZZ_RANDOM") == "1"  # bench/fuzz.py: a fresh seed every run
STATS = os.environ.get("KOINONIA_FUZZ_STATS")  # a file to append one JSON line per function to
BUDGET_CAP_S = 0.05
_BUDGETS = ("max_seconds", "budget_s")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
ERROR_KEYS = {"code", "message", "field", "details"}


@pytest.fixture
def fuzz_env(send_env, monkeypatch):
    signer = Signer()
    operator = secrets.token_urlsafe(32)
    set_env(
        monkeypatch,
        TELNYX_PUBLIC_KEY=signer.public_key,
        OPERATOR_TOKEN=operator,
        SCHEDULER_BUDGET_S=str(BUDGET_CAP_S),
        AUTH_FAIL_LIMIT="1000000",  # the made-up credentials would soon block the address: 429 for every case
        MEDIA_CHECK_TIMEOUT_S="0.2",  # generated MMS media URLs name made-up hosts: give up on them quickly
    )
    return signer, operator


@pytest.mark.parametrize("name", FUNCTIONS)
def test_fuzz_function(name, fuzz_env, pool):
    signer, operator = fuzz_env
    tenant = make_church(pool)
    client = function_client(name)
    app = client.application
    document = client.get("/openapi.json").get_json()
    schema = schemathesis.openapi.from_dict(document)
    credentials = {
        "church": tenant.auth["Authorization"],
        "operator": f"Bearer {operator}",
        "bogus": "Bearer kk_live_" + "x" * 40,
        "none": None,
    }
    statuses: Counter[str] = Counter()
    started = time.perf_counter()
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _fuzz_operation(operation, mode, app, credentials, signer, statuses)
    seconds = time.perf_counter() - started
    if STATS:
        line = {"function": name, "operations": operations, "cases": sum(statuses.values()), "seconds": round(seconds, 2),
                "statuses": dict(sorted(statuses.items()))}  # fmt: skip
        with Path(STATS).open("a") as out:
            out.write(json.dumps(line) + "\n")
    assert sum(statuses.values()) >= operations  # every operation was exercised


def _fuzz_operation(operation, mode, app, credentials, signer, statuses: Counter[str]) -> None:
    spec = operation.definition.raw
    who = st.sampled_from(["signed", "signed", "signed", "unsigned", "stale"] if "/webhooks/" in operation.path
                          else ["church", "church", "church", "operator", "none", "bogus"])  # fmt: skip

    @given(case=operation.as_strategy(generation_mode=mode), caller=who)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=not RANDOM,
        suppress_health_check=list(HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate, hypothesis.Phase.shrink],
    )
    def run(case, caller):
        # Credentials go into the case itself (not the call), so schemathesis re-judges whether the request it
        # sends is still the invalid one it generated (a removed Authorization header put back is not).
        kwargs: dict[str, Any] = {}
        _cap_budgets(case)
        if case.headers is None:
            case.headers = {}
        if _headers_negated(case):
            pass  # the invalid part is the credential (or a signature header) itself: send it as generated
        elif caller in credentials:
            if credentials[caller] is None:
                case.headers.pop("Authorization", None)
            else:
                case.headers["Authorization"] = credentials[caller]
        elif not isinstance(case.body, NotSet):  # a webhook: sign exactly the bytes sent
            raw = case.body if isinstance(case.body, bytes) else json.dumps(case.body).encode()
            stamp = int(time.time()) - (3600 if caller == "stale" else 0)
            if caller != "unsigned":
                case.headers.update({k: v for k, v in signer.headers(raw, timestamp=stamp).items() if k != "Content-Type"})
            kwargs["data"] = raw
        response = case.call(app=app, **kwargs)
        statuses[str(response.status_code)] += 1
        _check_answer(spec, response)
        case.validate_response(response, checks=CHECKS, transport_kwargs=kwargs)

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # nothing to make invalid (a route without input)
        run()


def _headers_negated(case) -> bool:
    components = getattr(case.meta, "components", None) or {}
    info = components.get(ParameterLocation.HEADER)
    return info is not None and info.mode is schemathesis.GenerationMode.NEGATIVE


def _cap_budgets(case) -> None:
    body = case.body
    if not isinstance(body, dict):
        return
    for key in _BUDGETS:
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 900:
            body[key] = min(value, BUDGET_CAP_S)
    if body.get("stop_when_idle") is False and "max_seconds" not in body:  # else a drain runs the default 50 s
        body["max_seconds"] = BUDGET_CAP_S


def _check_answer(spec: dict[str, Any], response) -> None:
    status = response.status_code
    request = response.request
    sent = f"{request.method} {request.url} {(request.body or b'')[:300]!r} -> {status} {response.text[:300]}"
    assert status < 500, sent
    documented = spec["responses"]
    assert str(status) in documented, f"undocumented status: {sent}"
    assert response.headers.get("content-type", [""])[0].startswith("application/json"), f"not JSON: {sent}"
    body = json.loads(response.content)
    if status >= 400:
        assert isinstance(body, dict) and set(body) == {"error"}, sent
        error = body["error"]
        assert set(error) <= ERROR_KEYS and isinstance(error["code"], str) and isinstance(error["message"], str), sent
        codes = documented[str(status)].get("x-error-codes", [])
        assert error["code"] in codes, f"{error['code']} is not among the documented {codes}: {sent}"
