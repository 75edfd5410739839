"""An unexpected exception (a bug) answers in our JSON error shape, with the request's id, and is logged once.

The function under test is this file's own: a functions-framework module written to a temporary folder and
served by ``functions_framework.create_app`` exactly as ours are (its crash handler included), built from the
same ``json_http_errors()`` and ``dispatch`` as every function; its handler raises. Nothing of ours is mocked.
"""

from __future__ import annotations

import json
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
from functions_framework import create_app

from common import log_context
from common.logs import JsonFormatter

SECRET = "+13125550142 said: meet me at 9"  # data a bug's exception text quotes: never answered, never logged

FUNCTION = textwrap.dedent("""
    import logging

    import flask
    import functions_framework

    from common.web import Reply, dispatch, json_http_errors, route

    json_http_errors()
    logger = logging.getLogger("koinonia.test_unexpected")


    def broken(request: flask.Request) -> Reply:
        logger.info("about to fail")
        return Reply({"total": {}[request.args.get("note", "")]})  # a KeyError quoting the request's data


    def fine(request: flask.Request) -> Reply:
        return Reply({"ok": True})


    ROUTES = [route("GET", "/broken", broken), route("GET", "/fine", fine)]


    @functions_framework.http
    def buggy(request: flask.Request) -> flask.Response:
        return dispatch(request, ROUTES)
""")


@pytest.fixture
def client(env, tmp_path: Path):  # -> flask.testing.FlaskClient
    source = tmp_path / "main.py"
    source.write_text(FUNCTION)
    return create_app("buggy", str(source)).test_client()


@pytest.fixture
def lines(caplog: pytest.LogCaptureFixture):
    log_context.install_record_factory()  # as configure_logging does in every function's main.py
    caplog.set_level(logging.INFO)
    formatter = JsonFormatter()

    def read() -> list[dict[str, Any]]:
        return [json.loads(formatter.format(record)) for record in caplog.records]

    return read


def test_a_bug_answers_500_in_our_shape_with_the_request_id_and_no_exception_text(client, lines):
    answer = client.get("/broken", query_string={"note": SECRET}, headers={"X-Request-Id": "bug-1"})

    assert answer.status_code == 500
    assert answer.mimetype == "application/json" and answer.headers["X-Request-Id"] == "bug-1"
    assert "X-Google-Status" not in answer.headers  # functions-framework's crash handler did not answer
    error = answer.get_json()["error"]
    assert error["code"] == "internal_error"
    assert "retry" in error["message"] and "bug-1" in error["message"]
    assert SECRET not in answer.get_data(as_text=True) and "KeyError" not in answer.get_data(as_text=True)

    logged = lines()
    errors = [line for line in logged if line["level"] in ("ERROR", "CRITICAL")]
    assert len(errors) == 1, errors  # once: ours, not Flask's own as well
    [line] = errors
    assert (line["request_id"], line["function"], line["error"]) == ("bug-1", "buggy", "KeyError")
    assert "in broken" in line["stack"]  # where it happened, for whoever fixes it
    assert SECRET not in json.dumps(logged)  # the exception's text may quote data: not logged either
    assert client.get("/fine").status_code == 200  # the process serves on


def test_without_a_sane_x_request_id_the_answer_names_the_id_the_request_logged_under(client, lines):
    answer = client.get("/broken", headers={"X-Request-Id": "not sane!"})
    assert answer.status_code == 500
    made = answer.headers["X-Request-Id"]
    assert made != "not sane!" and made in answer.get_json()["error"]["message"]
    logged = lines()
    before = [line for line in logged if line["msg"] == "about to fail"]
    failed = [line for line in logged if line["level"] == "ERROR"]
    assert [line["request_id"] for line in before + failed] == [made, made]  # one id for the whole request
