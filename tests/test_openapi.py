"""Every HTTP function serves a valid OpenAPI 3.1 document that lists every route it has, documented."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest
from openapi_spec_validator import validate

from common import openapi
from common.consume import ConsumeRequest
from common.metrics.route import METRICS_PATH
from common.send.models import SendRequest
from tests.helpers import ROOT, function_client

FUNCTIONS = sorted(p.parent.name for p in (ROOT / "functions").glob("*/main.py"))


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_openapi_{name.replace('-', '_')}", ROOT / "functions" / name / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _routes(module: ModuleType) -> set[tuple[str, str]]:
    """The routes a document must list: all but GET /metrics (Prometheus text for scrapers, not part of the API:
    common/metrics/route.py; tests/test_metrics.py checks every function has it)."""
    routes = module.ROUTES
    # the health function: path -> check, GET only
    found = {("GET", path) for path in routes} if isinstance(routes, dict) else set(openapi.route_list(routes))
    return found - {("GET", METRICS_PATH)}


def _operations(doc: dict) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item}


def test_every_function_is_covered():
    assert {"send", "queue-consume", "retry-scheduler", "dlq-drain", "health", "webhooks"} <= set(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_serves_a_valid_document_of_all_its_routes(env, name):
    response = function_client(name).get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    doc = response.get_json()
    validate(doc)  # OpenAPI 3.1 (openapi-spec-validator: the document and every JSON Schema in it)
    assert doc["openapi"].startswith("3.1")

    routes = _routes(_load(name))
    assert ("GET", "/openapi.json") in routes
    assert _operations(doc) == routes, "the document lists exactly the routes in ROUTES"
    undocumented = sorted((m.upper(), p) for p, item in doc["paths"].items() for m, op in item.items() if "x-undocumented" in op)
    assert not undocumented, f"describe these routes in common/openapi.py OPERATIONS: {undocumented}"

    error_ref = {"$ref": "#/components/schemas/Error"}
    for path, item in doc["paths"].items():
        for method, op in item.items():
            statuses = {int(s) for s in op["responses"]}
            assert any(200 <= s < 300 for s in statuses), (method, path)
            errors = {s: r for s, r in op["responses"].items() if 400 <= int(s) < 500}
            if op.get("security") or op.get("parameters") or "requestBody" in op:  # input can be wrong
                assert errors, f"{method} {path} documents no 4xx"
            for status, answer in errors.items():
                assert answer["content"]["application/json"]["schema"] == error_ref, (method, path, status)
                assert answer["x-error-codes"], (method, path, status)
            if "requestBody" in op:
                assert {"400", "413", "422"} <= set(op["responses"]), (method, path)
            if op.get("security"):
                assert "401" in op["responses"], (method, path)
            for param in [p for p in op.get("parameters", []) if p["in"] == "path"]:
                assert "{" + param["name"] + "}" in path


def test_bodies_are_the_pydantic_models_themselves():
    doc = openapi.document("send", [("POST", "/messages")])
    schema = SendRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    assert doc["components"]["schemas"]["SendRequest"] == schema
    assert schema["additionalProperties"] is False and "from" in schema["properties"]
    consume = openapi.document("queue-consume", [("POST", "/")])["components"]["schemas"]["ConsumeRequest"]
    assert consume == ConsumeRequest.model_json_schema()
    assert consume["properties"]["stop_when_idle"]["type"] == "boolean"


def test_a_route_without_docs_is_flagged():
    doc = openapi.document("send", [("GET", "/messages"), ("PATCH", "/messages/{message_id}")])
    assert doc["paths"]["/messages/{message_id}"]["patch"]["x-undocumented"] is True
    assert "x-undocumented" not in doc["paths"]["/messages"]["get"]
    validate(doc)


def test_route_templates_round_trip():
    from common.web import route

    for path in ("/", "/messages", "/messages/{message_id}", "/churches/{church_id}/keys/{key_id}"):
        assert openapi.route_template(route("GET", path, lambda _r: None)) == path  # type: ignore[arg-type, return-value]


def test_the_health_function_keeps_its_answers_for_other_methods_and_paths(env):
    health = function_client("health")
    assert health.get("/openapi.json").status_code == 200
    assert health.post("/openapi.json").status_code == 404  # as for every path there: GET/HEAD only, else 404
    assert health.get("/nope").status_code == 404
    assert function_client("send").post("/openapi.json").status_code == 405  # the dispatch functions: 405
