"""HTTP for keys and the audit trail (served by the ``send`` function; ``main.py`` only lists the routes).

A church, with one of its keys:

    POST   /keys              {"name": "..."}  → 201 {"id","name","prefix","key","created_at"} (the key, once)
    GET    /keys              its keys, revoked ones included; never a key or a hash
    DELETE /keys/{key_id}     revoke (idempotent); its last active key is 409 last_active_key
    GET    /audit?limit=&cursor=   its audit trail, newest first (keyset pages)

The operator (``OPERATOR_TOKEN``), for any church; a church key here is 403 ``operator_only``:

    POST|GET /churches/{church_id}/keys, DELETE /churches/{church_id}/keys/{key_id}, GET /churches/{church_id}/audit
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any

import flask
from pydantic import AfterValidator, Field

from common import audit
from common.api_errors import BadRequest, NotFound
from common.auth import keys
from common.auth.cache import invalidation_cache, key_cache
from common.auth.operator import OPERATOR_ACTOR, require_church, require_operator
from common.messages.read_api import page_limit
from common.request_models import StrictModel, parse_model
from common.runtime import Runtime, get_runtime
from common.web import Reply, json_body

_BAD_CURSOR = "cursor is not one this API returned; start again without it"
_AUDIT_PARAMS = frozenset({"limit", "cursor"})


def _printable(name: str) -> str:
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in name):
        raise ValueError("must not contain control characters")
    if not name.strip():
        raise ValueError('must not be blank; say what the key is for, e.g. "office laptop"')
    return name.strip()


class KeyCreateRequest(StrictModel):
    """A new API key; the body may be left out (the key is then named 'default')."""

    name: Annotated[str, AfterValidator(_printable)] = Field(
        default=keys.default_name,
        min_length=1,
        max_length=keys.max_name_length,
        description="what the key is for, so it can be told apart when rotating: 'office laptop', 'website'",
    )


# -- a church's own -----------------------------------------------------------------------------------------


def create_own_key(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = require_church(rt.pool, rt.settings, request.headers.get("Authorization"), cache=key_cache(rt))
    name = _key_name(_optional_body(request))
    return Reply(keys.create_key(rt.pool, caller.church_id, name=name, actor=caller.actor).as_json(), 201)


def list_own_keys(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = require_church(rt.pool, rt.settings, request.headers.get("Authorization"), cache=key_cache(rt))
    return Reply(_keys_json(rt, caller.church_id))


def revoke_own_key(request: flask.Request, key_id: str) -> Reply:
    rt = get_runtime()
    caller = require_church(rt.pool, rt.settings, request.headers.get("Authorization"), cache=key_cache(rt))
    return Reply(_revoke(rt, caller.church_id, key_id, caller.actor))


def own_audit(request: flask.Request) -> Reply:
    rt = get_runtime()
    caller = require_church(rt.pool, rt.settings, request.headers.get("Authorization"), cache=key_cache(rt))
    return Reply(audit_page(rt, caller.church_id, request.args))


# -- the operator, for any church -------------------------------------------------------------------------------


def create_church_key(request: flask.Request, church_id: str) -> Reply:
    rt = _operator(request)
    name = _key_name(_optional_body(request))
    return Reply(keys.create_key(rt.pool, church_id, name=name, actor=OPERATOR_ACTOR).as_json(), 201)


def list_church_keys(request: flask.Request, church_id: str) -> Reply:
    rt = _operator(request)
    _church_must_exist(rt, church_id)
    return Reply(_keys_json(rt, church_id))


def revoke_church_key(request: flask.Request, church_id: str, key_id: str) -> Reply:
    rt = _operator(request)
    return Reply(_revoke(rt, church_id, key_id, OPERATOR_ACTOR))


def church_audit(request: flask.Request, church_id: str) -> Reply:
    rt = _operator(request)
    _church_must_exist(rt, church_id, include_deleted=True)
    return Reply(audit_page(rt, church_id, request.args))


# -- shared ------------------------------------------------------------------------------------------------------


def audit_page(rt: Runtime, church_id: str, args: Mapping[str, str]) -> dict[str, Any]:
    """One page of a church's audit trail, newest first; ``next_cursor`` is null on the last page."""
    unknown = sorted(set(args) - _AUDIT_PARAMS)
    if unknown:
        raise BadRequest("invalid_parameter", f"unknown query parameter {unknown[0]!r}; use limit and cursor", field=unknown[0])
    limit = page_limit(args.get("limit"))
    before = _decode_cursor(args["cursor"]) if args.get("cursor") else None
    entries = audit.list_for_church(rt.pool, church_id, limit=limit, before=before)
    next_cursor = _encode_cursor(entries[-1].created_at, entries[-1].id) if len(entries) == limit else None
    data = [
        {
            "id": e.id,
            "action": e.action,
            "actor": e.actor,
            "target": e.target,
            "details": e.details,
            "created_at": e.created_at.isoformat(),
        }
        for e in entries
    ]
    return {"data": data, "next_cursor": next_cursor}


def _operator(request: flask.Request) -> Runtime:
    rt = get_runtime()
    require_operator(rt.pool, rt.settings, request.headers.get("Authorization"), cache=key_cache(rt))
    return rt


def _church_must_exist(rt: Runtime, church_id: str, *, include_deleted: bool = False) -> None:
    if include_deleted:
        if keys.is_uuid(church_id):
            return  # a deleted church's audit trail outlives it; an unknown id simply has no entries
    elif keys.church_exists(rt.pool, church_id):
        return
    raise NotFound("not_found", f"no church {church_id}")


def _keys_json(rt: Runtime, church_id: str) -> dict[str, Any]:
    return {"data": [k.as_json() for k in keys.list_keys(rt.pool, church_id)]}


def _revoke(rt: Runtime, church_id: str, key_id: str, actor: str) -> dict[str, Any]:
    result = keys.revoke_key(rt.pool, church_id, key_id, actor=actor, cache=invalidation_cache(rt))
    body = result.info.as_json()
    if not result.cache_dropped:
        body["note"] = (
            f"revoked; Redis could not be told, so servers that cached this key may accept it for up to"
            f" {rt.settings.auth_cache_ttl_s} s more"
        )
    return body


def _optional_body(request: flask.Request) -> Any:
    """The JSON body, or ``{}`` when there is none (``POST /keys`` with no body makes a key named 'default')."""
    if not request.content_length and not request.headers.get("Transfer-Encoding"):
        return {}
    return json_body(request)


def _key_name(payload: Any) -> str:
    return parse_model(KeyCreateRequest, payload).name


def _encode_cursor(at: datetime, entry_id: int) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{entry_id}".encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, int]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, entry_id = text.partition("|")
        parsed = datetime.fromisoformat(at)
        if parsed.tzinfo is None:
            raise ValueError(at)
        return parsed, int(entry_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("invalid_cursor", _BAD_CURSOR, field="cursor") from None
