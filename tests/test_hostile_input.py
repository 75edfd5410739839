"""Hostile input at the HTTP edge (issue #6): body limits, strict JSON, strict types, unknown fields,
parameterised SQL, and no header injection into carrier calls.

Everything goes through the functions as deployed (functions-framework apps) against real PostgreSQL,
Redis and our Telnyx sandbox; nothing of ours is mocked.
"""

from __future__ import annotations

import ast
import json
import re
import time
from decimal import Decimal
from pathlib import Path

import pytest

from common import web
from common.privacy import crypto
from tests.factories import make_church
from tests.helpers import ROOT, function_client

JSON = {"Content-Type": "application/json"}
SMS = {"channel": "sms", "to": "+13125550142", "text": "Choir practice moved to 7pm"}


def _post(client, path: str, raw: bytes, headers: dict[str, str] | None = None):
    return client.post(path, data=raw, headers={**JSON, **(headers or {})})


def _error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    assert set(body["error"]) <= {"code", "message", "field", "details"}
    return body["error"]


def _nothing_written(pool) -> None:
    assert pool.run("SELECT count(*) FROM broadcasts")[0][0] == 0
    assert pool.run("SELECT count(*) FROM messages")[0][0] == 0


# -- the JSON itself ------------------------------------------------------------------------------------------


def test_malformed_bodies_are_documented_4xx_and_write_nothing(env, pool):
    tenant = make_church(pool)
    send = function_client("send")
    cases: list[tuple[bytes, int, str]] = [
        (b"[" * 33 + b"]" * 33, 400, "json_too_deep"),
        (json.dumps({**SMS, "x": json.loads("[" * 40 + "]" * 40)}).encode(), 400, "json_too_deep"),
        (b'{"channel": "sms", "to": "+13125550142", "text": NaN}', 400, "invalid_json"),
        (b'{"channel": "sms", "to": "+13125550142", "max_attempts": Infinity, "text": "x"}', 400, "invalid_json"),
        (b'{"channel": "sms", "to": "+13125550142", "deadline_s": 1e999, "text": "x"}', 400, "invalid_json"),
        (b'{"channel": "sms", "to": "+13125550142", "deadline_s": ' + b"9" * 5000 + b', "text": "x"}', 400, "invalid_json"),
        (b'{"channel": "sms", "channel": "mms", "to": "+13125550142", "text": "x"}', 400, "duplicate_key"),
        ('{"channel": "sms", "to": "+13125550142", "text": "caf\u00e9"}'.encode("latin-1"), 400, "invalid_json"),
        (json.dumps(SMS).encode("utf-16"), 400, "invalid_json"),
        (b"\xef\xbb\xbf" + json.dumps(SMS).encode(), 400, "invalid_json"),
        (b'{"channel": "sms", "to": "+13125550142", "text": "a\\ud800b"}', 422, "invalid_string"),
        (b'{"channel": "sms", "to": "+13125550142", "text": "a\\udfffb"}', 422, "invalid_string"),
        (b'{"channel": "sms", "to": "+13125550142", "text": "nul\\u0000here"}', 422, "invalid_string"),
        (b'{"channel": "sms", "to": ["+13125550142", "\\ud83d"], "text": "x"}', 422, "invalid_string"),
        (b'{"channel": "sms", "to": "+13125550142", "text": "x", "\\udc00": 1}', 422, "invalid_string"),
        (b'{"channel": "sms", "to": "+13125550142", "text": "x"', 400, "invalid_json"),
        (b"", 400, "invalid_json"),
    ]
    for raw, status, code in cases:
        error = _error(_post(send, "/messages", raw, tenant.auth), status, code)
        assert error["message"]
    # Where a string is at fault, the answer names it.
    bad = _post(send, "/messages", b'{"channel": "sms", "to": ["+13125550142", "\\ud83d"], "text": "x"}', tenant.auth)
    assert bad.get_json()["error"]["field"] == "to[1]"
    _nothing_written(pool)
    # A real surrogate pair (an emoji written as escapes) is fine, and so is a string that merely looks like one.
    amen = b'{"channel": "sms", "to": "+13125550142", "text": "Amen \\ud83d\\ude4f \\\\ud800"}'
    ok = _post(send, "/messages", amen, tenant.auth)
    assert ok.status_code == 202, ok.get_json()


def test_size_and_depth_limits_are_checked_before_the_work(env, pool):
    tenant = make_church(pool)
    send = function_client("send")
    big = b'{"channel": "sms", "to": "+13125550142", "text": "' + b"x" * (web.max_body_bytes + 1) + b'"}'
    _error(_post(send, "/messages", big, tenant.auth), 413, "payload_too_large")
    # 2 MiB of brackets: refused quickly and without recursion (json.loads alone would raise RecursionError).
    deep = b"[" * (web.max_body_bytes // 2) + b"]" * (web.max_body_bytes // 2)
    started = time.perf_counter()
    _error(_post(send, "/messages", deep, tenant.auth), 400, "json_too_deep")
    assert time.perf_counter() - started < 2.0
    # Wide but shallow is not deep; the depth count ignores brackets inside strings.
    assert web.parse_json(b"[" + b"[]," * 100_000 + b"[]]") is not None
    assert web.parse_json(json.dumps({"text": "[" * 100}).encode()) == {"text": "[" * 100}
    assert web.parse_json(b"[" * web.max_json_depth + b"]" * web.max_json_depth) is not None
    _nothing_written(pool)


def test_what_the_fuzzing_found_stays_fixed(env, pool, monkeypatch):
    """Each of these was a 500 (tests/test_fuzz.py found them): now a documented 4xx in the JSON shape."""
    from tests.helpers import set_env
    from tests.webhook_signing import Signer

    tenant = make_church(pool)
    send = function_client("send")
    # A non-ASCII cursor: base64 raised ValueError, not binascii.Error.
    for path in ("/messages?cursor=%C2%80", "/messages?broadcast_id=0190b0a2-0000-7000-8000-000000000000&cursor=%C2%80",
                 "/conversations?cursor=%C2%80"):  # fmt: skip
        _error(send.get(path, headers=tenant.auth), 400, "invalid_cursor")
    # Unicode digits: "²".isdigit() is true and int("²") raises (found reading the code after the fuzzer's hints).
    _error(send.get("/messages?limit=%C2%B2", headers=tenant.auth), 400, "invalid_limit")
    _error(function_client("dlq-drain").get("/dead-letters?limit=%C2%B2", headers=tenant.auth), 400, "invalid_limit")
    # NUL in a query value reached PostgreSQL.
    dlq = function_client("dlq-drain")
    _error(dlq.get("/dead-letters?error_code=%00", headers=tenant.auth), 400, "invalid_parameter")
    # A body of JSON null (or any non-object) was taken as "no body"; the scheduler's tick took any bytes.
    _error(_post(dlq, "/dead-letters/archive", b"null", tenant.auth), 422, "validation_failed")
    _error(_post(dlq, "/events", b"\x00"), 400, "invalid_json")
    _error(_post(dlq, "/events", b"[]"), 422, "validation_failed")
    assert dlq.post("/events").status_code == 200 and _post(dlq, "/events", b'{"source": "aws.events"}').status_code == 200
    # A path no Flask rule matches (a line break) and functions-framework's own /favicon.ico answered HTML.
    for path in ("/messages/%0A", "/favicon.ico"):
        assert _error(send.get(path, headers=tenant.auth), 404, "not_found")
    # A signed webhook with \u0000 in a string reached PostgreSQL (and a 500 is redelivered by Telnyx forever).
    signer = Signer()
    set_env(monkeypatch, TELNYX_PUBLIC_KEY=signer.public_key)
    raw = b'{"data": {"event_type": "message.other", "id": "ev\\u0000"}}'
    answer = function_client("webhooks").post("/webhooks/telnyx", data=raw, headers=signer.headers(raw))
    _error(answer, 422, "invalid_string")
    assert pool.run("SELECT count(*) FROM webhook_events")[0][0] == 0
    # Signed receipts with a made-up message id in webhook_url, or a cost PostgreSQL's numeric(12, 5) cannot hold:
    # the receipt is kept (by the carrier's id; without the cost), not refused with a 500.
    from tests.webhook_signing import envelope, outbound_payload

    for provider_id, payload, cost in [
        ("p1", outbound_payload("p1", "zzzzzzzz-zzzz-zzzz-zzzz-zzzzzzzzzzzz", "delivered"), Decimal("0.004")),
        ("p2", {**outbound_payload("p2", None, "delivered"), "cost": {"amount": "abc", "currency": "USD"}}, None),
        ("p3", {**outbound_payload("p3", None, "delivered"), "cost": {"amount": "12345678.5", "currency": "USD"}}, None),
    ]:
        body = envelope("message.finalized", payload)
        answer = function_client("webhooks").post("/webhooks/telnyx", data=body, headers=signer.headers(body))
        assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
        kept = pool.run("SELECT message_id, cost_amount FROM carrier_receipts WHERE provider_message_id = :p", p=provider_id)
        assert kept == [[None, cost]]
    stamp = {**signer.headers(raw), "telnyx-timestamp": "\u00b2"}  # before any signature check: was a 500
    _error(function_client("webhooks").post("/webhooks/telnyx", data=raw, headers=stamp), 401, "timestamp_invalid")


# -- strict types, unknown fields -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_attempts": "3"}, "max_attempts"),
        ({"max_attempts": 3.0}, "max_attempts"),
        ({"max_attempts": True}, "max_attempts"),
        ({"deadline_s": "3600"}, "deadline_s"),
        ({"skip_invalid": "true"}, "skip_invalid"),
        ({"skip_invalid": 1}, "skip_invalid"),
        ({"smart_encoding": "false"}, "smart_encoding"),
        ({"to": 13125550142}, "to"),
        ({"groups": [42]}, "groups[0]"),
        ({"send_at": 1893456000}, "send_at"),
        ({"send_at": "1893456000"}, "send_at"),
        ({"send_at": "2030-01-01T09:00:00"}, "send_at"),
        ({"channel": "mms", "media_urls": ["https://example.org/a.jpg\r\nX-Injected: 1"]}, "media_urls"),
        ({"text": "x", "priority": "high"}, "priority"),
    ],
)
def test_send_types_are_strict_and_unknown_fields_refused(env, pool, change, field):
    tenant = make_church(pool)
    response = function_client("send").post("/messages", json={**SMS, **change}, headers=tenant.auth)
    assert _error(response, 422, "validation_failed")["field"] == field
    _nothing_written(pool)


def test_dead_letter_bodies_are_strict(env, pool):
    tenant = make_church(pool)
    dlq = function_client("dlq-drain")
    for path, body, field in [
        ("/dead-letters/purge", {"older_than_days": "5"}, "older_than_days"),
        ("/dead-letters/purge", {"older_than_days": True}, "older_than_days"),
        ("/dead-letters/purge", {"older_than_days": 5.0}, "older_than_days"),
        ("/dead-letters/purge", {"ids": [123]}, "ids[0]"),
        ("/dead-letters/purge", {"ids": []}, "ids"),
        ("/dead-letters/replay", {"filter": {"error_code": 40310}}, "filter.error_code"),
        ("/dead-letters/replay", {"filter": {"status": "failed"}}, "filter.status"),
        ("/dead-letters/replay", {"filter": {"from": 1893456000}}, "filter.from"),
        ("/dead-letters/replay", {"filter": {}, "extra": 1}, "extra"),
        ("/dead-letters/archive", {"church_id": 7}, "church_id"),
        ("/dead-letters/archive", {"older_than_days": -1}, "older_than_days"),
    ]:
        response = dlq.post(path, json=body, headers=tenant.auth)
        assert _error(response, 422, "validation_failed")["field"] == field, (path, body)


def test_budgets_are_strict_on_direct_calls_and_envelopes_are_accepted_on_events(env):
    consume = function_client("queue-consume")
    for body, field in [
        ({"max_messages": "5"}, "max_messages"),
        ({"max_messages": 5.5}, "max_messages"),
        ({"max_seconds": "1"}, "max_seconds"),
        ({"max_seconds": 0}, "max_seconds"),
        ({"stop_when_idle": "false"}, "stop_when_idle"),
        ({"stop_when_idle": 0}, "stop_when_idle"),
        ({"max_seconds": 1, "Records": []}, "Records"),  # POST / is not the SQS entry point
    ]:
        assert _error(consume.post("/", json=body), 422, "validation_failed")["field"] == field, body
    assert _error(consume.post("/events", json={"max_messages": True}), 422, "validation_failed")["field"] == "max_messages"
    sqs = {"Records": [{"messageId": "m1", "body": "{}", "eventSource": "aws:sqs", "awsRegion": "us-east-1"}]}
    woke = consume.post("/events", json={**sqs, "max_seconds": 0.5})
    assert woke.status_code == 200 and woke.get_json()["batchItemFailures"] == []

    scheduler = function_client("retry-scheduler")
    for body in ({"budget_s": "1"}, {"budget_s": True}, {"budget_s": 901}, {"budget_s": 0.1, "surprise": 1}):
        _error(scheduler.post("/", json=body), 422, "validation_failed")
    eventbridge = {
        "version": "0", "id": "e1", "detail-type": "Scheduled Event", "source": "aws.events", "account": "123456789012",
        "time": "2026-01-01T00:00:00Z", "region": "us-east-1", "resources": [], "detail": {}, "budget_s": 0.05,
    }  # fmt: skip
    assert scheduler.post("/events", json=eventbridge).status_code == 200
    assert _error(scheduler.post("/events", json={**eventbridge, "budget_s": "0.05"}), 422, "validation_failed")


# -- no header injection into carrier calls --------------------------------------------------------------------

_INJECTIONS = ["\r\nX-Injected: 1", "\nX-Injected: 1", "\rX-Injected: 1", "\x0bX", "\x1b[31m", "\x7f", "\x85", "\t1", "\x00"]


def test_control_characters_in_numbers_are_refused(send_env, pool):
    tenant = make_church(pool)
    send = function_client("send")
    for bad in _INJECTIONS:
        inside = f"+1312555{bad}0142"
        after = f"+13125550142{bad}1" if bad.isspace() else f"+13125550142{bad}"
        code = "invalid_string" if bad == "\x00" else "invalid_recipients"  # NUL never gets past the JSON reader
        for number in (inside, after):
            answer = send.post("/messages", json={**SMS, "to": number}, headers=tenant.auth)
            expected = "to[0]" if code == "invalid_recipients" else "to"
            assert _error(answer, 422, code)["field"] == expected, repr(number)
        answer = send.post("/messages", json={**SMS, "from": tenant.sender[:-2] + bad + tenant.sender[-2:]}, headers=tenant.auth)
        assert _error(answer, 422, "invalid_from" if bad != "\x00" else "invalid_string")["field"] == "from", repr(bad)
    _nothing_written(pool)
    # Whitespace around a pasted number (a spreadsheet's trailing CR/LF) is trimmed; what is stored and sent is E.164.
    answer = send.post("/messages", json={**SMS, "to": ["+13125550142\r\n"], "from": f" {tenant.sender}\n"}, headers=tenant.auth)
    assert answer.status_code == 202, answer.get_json()
    [[to_enc, from_address]] = pool.run("SELECT to_enc, from_address FROM messages")
    assert (crypto.unseal(to_enc, "address"), from_address) == ("+13125550142", tenant.sender)


def test_a_text_with_crlf_reaches_the_carrier_only_inside_the_json_body(send_env, pool, sandbox, monkeypatch):
    seen: list[dict[bytes, bytes]] = []
    handle = sandbox.app.handle

    def observe(request):  # the sandbox as it is, recording what arrived
        seen.append(dict(request.headers))
        return handle(request)

    monkeypatch.setattr(sandbox.app, "handle", observe)
    tenant = make_church(pool)
    text = "Vigil tonight\r\nX-Injected: 1\r\n\r\nPOST /v2/messages HTTP/1.1\r\nHost: evil\u2028\x0b end"
    accepted = function_client("send").post("/messages", json={**SMS, "text": text}, headers=tenant.auth)
    assert accepted.status_code == 202, accepted.get_json()
    message_id = accepted.get_json()["recipients"][0]["message_id"]
    drained = function_client("queue-consume").post("/", json={"max_seconds": 30, "stop_when_idle": True})
    assert drained.get_json()["report"]["sent"] == 1

    assert sandbox.ledger.accepted == 1  # one request: nothing smuggled behind it
    (entry,) = sandbox.ledger.entries()
    assert entry.text == text and entry.to == "+13125550142"
    assert json.loads(sandbox.ledger.message_body(entry.id))["data"]["text"] == text
    assert len(seen) == 1
    names = set(seen[0])
    assert b"x-injected" not in names and b"host" in names
    assert all(b"\r" not in v and b"\n" not in v for v in seen[0].values())
    assert seen[0][b"host"] != b"evil"
    [[body_enc, status]] = pool.run("SELECT body_enc, status FROM messages WHERE id = CAST(:id AS uuid)", id=message_id)
    assert status == "sent" and crypto.unseal(body_enc, "text") == text  # stored as it came, sealed


# -- SQL is parameterised ---------------------------------------------------------------------------------------

# SQL text built by formatting is allowed when it is built only from constants: literals and names bound at
# module level (assigned or imported), e.g. ``f"SELECT {_COLUMNS} FROM ..."`` at import. Anything else that
# formats SQL, or passes a statement built in place to a database call, must be listed here with the reason
# it is safe: only fixed fragments of our own go into the text; every value is a bind parameter (``:name``).
SQL_FORMATTING_ALLOWED: dict[tuple[str, str], str] = {
    # Conditions assembled by queries.where() from fixed clause strings; every value is a :param.
    ("common/dead_letters/queries.py", "list_page"): "_LIST_SQL with where() and the constant _BEFORE",
    ("common/dead_letters/queries.py", "id_page"): "_ID_PAGE_SQL with where() and the constant _AFTER",
    ("common/dead_letters/queries.py", "count_matching"): "where() only",
    ("common/dead_letters/replay.py", "_replay_batch"): "_REPLAY_SQL with the constant _SCOPE or nothing",
    ("common/dead_letters/retention.py", "purge_ids"): "_PURGE_IDS_SQL with where()",
    ("common/dead_letters/retention.py", "purge_matching"): "_PURGE_BATCH_SQL with where()",
    ("common/dead_letters/retention.py", "archive_older_than"): "_ARCHIVE_BATCH_SQL with where()",
    # Table names read from the catalogue (information_schema), quoted as identifiers; the church id is bound.
    ("common/privacy/deletion.py", "church_summary"): "catalogue table names, quoted; :c bound",
    ("common/privacy/deletion.py", "_delete_batch_sql"): "catalogue table names, quoted; :c and :limit bound",
    # Table and column names from the module's own constant lists (sealed columns); every value is bound.
    ("common/db/migrations/0008_sealed_pii.py", "apply"): "_TABLES names and :params only",
    ("common/privacy/rotation.py", "key_counts"): "SEALED_TABLES names and the header length, a constant",
    ("common/privacy/rotation.py", "_table"): "SEALED_TABLES names, a condition from them; values bound",
    ("common/privacy/rotation.py", "_batch"): "SEALED_TABLES names and key columns; values bound",
    ("common/privacy/rotation.py", "_write"): "SEALED_TABLES names; keys and values bound as arrays",
}
_SQL_WORDS = re.compile(r"\b(SELECT|INSERT INTO|UPDATE|DELETE FROM|WHERE|VALUES|CREATE|ALTER|DROP|TRUNCATE)\b")
_DB_CALLS = {"run", "execute", "executemany", "execute_unnamed", "execute_simple"}


def _sql_formatting_sites(path: Path, rel: str | None = None) -> set[tuple[str, str]]:
    """(file, enclosing def, or the module-level name assigned) of every SQL text built by f-string, .format,
    % or + from anything but constants, and of every database call whose statement is built so."""
    tree = ast.parse(path.read_text(), filename=str(path))
    module_names: set[str] = set()
    constants: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            module_names.update((a.asname or a.name).split(".")[0] for a in node.names)
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            module_names.add(node.name)
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        for t in targets:
            if isinstance(t, ast.Name):
                module_names.add(t.id)
                value = getattr(node, "value", None)
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    constants[t.id] = value.value

    def text_of(node: ast.AST) -> str:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if isinstance(node, ast.Name):
            return constants.get(node.id, "")
        if isinstance(node, ast.JoinedStr):
            return "".join(text_of(v) for v in node.values)
        if isinstance(node, ast.BinOp):
            return text_of(node.left) + text_of(node.right)
        return ""

    def formatted(node: ast.AST) -> bool:
        return (
            isinstance(node, ast.JoinedStr)
            or (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add))
            or (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format")
        )

    def builds_sql(node: ast.AST) -> bool:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "format":
            return bool(_SQL_WORDS.search(text_of(node.func.value)))
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod):
            return bool(_SQL_WORDS.search(text_of(node.left)))
        return formatted(node) and bool(_SQL_WORDS.search(text_of(node)))

    def constant_built(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return True
        if isinstance(node, ast.Name):
            return node.id in module_names
        if isinstance(node, ast.JoinedStr):
            return all(constant_built(v.value) if isinstance(v, ast.FormattedValue) else True for v in node.values)
        if isinstance(node, ast.BinOp):
            return constant_built(node.left) and constant_built(node.right)
        if isinstance(node, ast.Attribute):  # MessageStatus.failed
            return constant_built(node.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute | ast.Name):  # x.format(...), _sql_list(...)
            return constant_built(node.func) and all(constant_built(a) for a in [*node.args, *(k.value for k in node.keywords)])
        return False

    found: set[tuple[str, str]] = set()
    rel = rel or path.relative_to(ROOT).as_posix()

    def visit(node: ast.AST, scope: str) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            scope = node.name
        elif isinstance(node, ast.Assign) and scope == "<module>":
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
            scope = names[0] if names else scope
        if builds_sql(node) and not constant_built(node):
            found.add((rel, scope))
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _DB_CALLS
            and node.args
            and formatted(node.args[0])
            and not constant_built(node.args[0])
        ):
            found.add((rel, scope))
        for child in ast.iter_child_nodes(node):
            visit(child, scope)

    visit(tree, "<module>")
    return found


def test_sql_is_built_only_from_constants():
    sources = sorted(p for d in ("common", "functions") for p in (ROOT / d).rglob("*.py"))
    found: set[tuple[str, str]] = set()
    for path in sources:
        found |= _sql_formatting_sites(path)
    unexpected = sorted(found - set(SQL_FORMATTING_ALLOWED))
    assert not unexpected, f"SQL built by string formatting (bind values as :params, or allowlist with a reason): {unexpected}"
    present = {rel for rel, _ in found} | {k[0] for k in SQL_FORMATTING_ALLOWED if not (ROOT / k[0]).exists()}
    stale = sorted(k for k in SQL_FORMATTING_ALLOWED if k[0] in present and k not in found)
    assert not stale, f"allowlist entries that no longer match anything: {stale}"


def test_the_sql_scan_catches_what_it_is_for(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "COLS = 'id, body'\n"
        "OK = f'SELECT {COLS} FROM messages WHERE id = :id'\n"
        "def a(conn, name):\n    return conn.run(f\"SELECT * FROM messages WHERE to_address = '{name}'\")\n"
        "def b(conn, name):\n    return conn.run(\"DELETE FROM messages WHERE id = '%s'\" % name)\n"
        "Q = 'SELECT * FROM t WHERE a = {a}'\n"
        "def c(conn, value):\n    return conn.run(Q.format(a=value))\n"
        "def d(conn, a):\n    return conn.run('SELECT 1 WHERE :a', a=a)\n"
        "def e(conn, a):\n    return conn.run(OK + ' LIMIT 1', id=a)\n"
        "def f(conn, table):\n    return conn.run('TRUNCATE ' + table)\n"
        "def q(v):\n    return ', '.join(v)\n"
        "IN = f'SELECT 1 WHERE s IN ({q(COLS)})'\n"
        "def g(conn, values):\n    return conn.run(f'SELECT 1 WHERE s IN ({q(values)})')\n"
    )
    found = _sql_formatting_sites(probe, "probe.py")
    assert found == {("probe.py", "a"), ("probe.py", "b"), ("probe.py", "c"), ("probe.py", "f"), ("probe.py", "g")}
