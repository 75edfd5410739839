"""The dlq-drain HTTP API: parse and validate what a caller sent, call the work, shape the answer.

    GET  /dead-letters?church_id=&error_code=&from=&to=&limit=&cursor=
    POST /dead-letters/replay   {"ids": [...]} | {"filter": {"error_code", "from", "to", "church_id"}}
    POST /dead-letters/purge    {"ids": [...]} | {"filter": {...}}, and/or {"older_than_days": N}
    POST /dead-letters/archive  {"older_than_days": N, "church_id": ...}   (all optional)
    POST /events                the scheduler's tick: archive past retention, then the alert check

Query-string mistakes are 400s (as the messages read API); body mistakes are 422 ``validation_failed``
naming the field. ``from``/``to`` are ISO-8601 times with a zone; ``from`` is inclusive, ``to`` exclusive.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any
from uuid import UUID

from common.api_errors import BadRequest, Unprocessable
from common.dead_letters import alerts, queries, replay, retention
from common.dead_letters.access import Scope
from common.dead_letters.queries import Filter
from common.runtime import Runtime

logger = logging.getLogger("koinonia.dead_letters")

max_ids = 10_000
http_budget_s = 25.0  # bulk work per request; past it the answer says "complete": false (run it again)
tick_archive_budget_s = 20.0
_FILTER_KEYS = frozenset({"error_code", "from", "to", "church_id"})
# '+' in a query string decodes to a space: '...T10:00:00 00:00' was meant as '...T10:00:00+00:00'.
_SPACED_OFFSET = re.compile(r" (\d{2}(?::?\d{2})?)$")


# -- GET /dead-letters ----------------------------------------------------------------------------------


def list_dead_letters(rt: Runtime, scope: Scope, args: Mapping[str, str]) -> dict[str, Any]:
    unknown = sorted(set(args) - {"church_id", "error_code", "from", "to", "limit", "cursor"})
    if unknown:
        raise BadRequest("invalid_parameter", f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    selection = Filter(
        church_id=_uuid(args["church_id"], "church_id", BadRequest, "invalid_id") if args.get("church_id") else None,
        error_code=args.get("error_code") or None,
        created_from=_time(args["from"], "from", BadRequest, "invalid_time") if args.get("from") else None,
        created_to=_time(args["to"], "to", BadRequest, "invalid_time") if args.get("to") else None,
    )
    page = queries.list_page(rt.pool, scope, selection, limit=_limit(args.get("limit")), cursor=args.get("cursor") or None)
    return page.as_json()


def _limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return queries.default_limit
    if not raw.isdigit() or not 1 <= int(raw) <= queries.max_limit:
        raise BadRequest("invalid_limit", f"limit must be a whole number from 1 to {queries.max_limit}", field="limit")
    return int(raw)


# -- POST /dead-letters/replay | purge | archive ------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    ids: list[str] | None
    filter: Filter | None


def replay_request(rt: Runtime, scope: Scope, payload: Any) -> dict[str, Any]:
    body = _object(payload, {"ids", "filter"})
    selection = _selection(body)
    if selection.ids is not None:
        report = replay.replay_ids(rt, scope, selection.ids)
    elif selection.filter is not None:
        report = replay.replay_matching(rt, scope, selection.filter, budget_s=http_budget_s)
    else:
        raise Unprocessable("validation_failed", "give 'ids' (a list of dead-letter ids) or 'filter' ({} for all)", field="ids")
    return report.as_dict()


def purge_request(rt: Runtime, scope: Scope, payload: Any) -> dict[str, Any]:
    body = _object(payload, {"ids", "filter", "older_than_days"})
    selection = _selection(body)
    older = _days(body["older_than_days"], "older_than_days") if body.get("older_than_days") is not None else None
    if selection.ids is not None:
        report = retention.purge_ids(rt.pool, scope, selection.ids, Filter(older_than_days=older))
    elif selection.filter is not None or older is not None:
        chosen = replace(selection.filter or Filter(), older_than_days=older)
        report = retention.purge_matching(rt.pool, scope, chosen, budget_s=http_budget_s)
    else:
        raise Unprocessable(
            "validation_failed", "say which dead letters: 'ids', 'filter' ({} for all) or 'older_than_days'", field="ids"
        )
    return report.as_dict()


def archive_request(rt: Runtime, scope: Scope, payload: Any) -> dict[str, Any]:
    body = _object(payload if payload is not None else {}, {"older_than_days", "church_id"})
    older = rt.settings.dlq_retention_days
    if body.get("older_than_days") is not None:
        older = _days(body["older_than_days"], "older_than_days")
    church = _uuid(body["church_id"], "church_id", Unprocessable, "validation_failed") if body.get("church_id") else None
    report = retention.archive_older_than(rt.pool, scope, older, church_id=church, budget_s=http_budget_s)
    return report.as_dict()


# -- POST /events ----------------------------------------------------------------------------------------------


def scheduled_tick(rt: Runtime) -> dict[str, Any]:
    """Archive what is past retention, then measure and alert if needed; the report either way."""
    archived = retention.archive_older_than(
        rt.pool, Scope.operator(), rt.settings.dlq_retention_days, budget_s=tick_archive_budget_s
    )
    checked = alerts.check(rt.pool, rt.settings)
    report = {
        "archived": archived.done,
        "archive_complete": archived.complete,
        "retention_days": rt.settings.dlq_retention_days,
        **checked.as_dict(),
    }
    logger.info("dead-letter tick", extra={"fields": {k: v for k, v in report.items() if k != "top_error_codes"}})
    return report


# -- parsing -------------------------------------------------------------------------------------------------------


def _object(payload: Any, allowed: frozenset[str] | set[str]) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise Unprocessable("validation_failed", "the body must be a JSON object", field="")
    unknown = sorted(set(payload) - set(allowed))
    if unknown:
        raise Unprocessable("validation_failed", f"unknown field {unknown[0]!r}", field=unknown[0])
    return payload


def _selection(body: dict[str, Any]) -> Selection:
    if "ids" in body and "filter" in body:
        raise Unprocessable("validation_failed", "give 'ids' or 'filter', not both", field="filter")
    if "ids" in body:
        raw = body["ids"]
        if not isinstance(raw, list) or not raw:
            raise Unprocessable("validation_failed", "ids must be a non-empty list of dead-letter ids", field="ids")
        if len(raw) > max_ids:
            raise Unprocessable("validation_failed", f"at most {max_ids:,} ids per request; got {len(raw):,}", field="ids")
        return Selection([_uuid(v, f"ids[{i}]", Unprocessable, "validation_failed") for i, v in enumerate(raw)], None)
    if "filter" in body:
        return Selection(None, parse_filter(body["filter"]))
    return Selection(None, None)


def parse_filter(raw: Any) -> Filter:
    if not isinstance(raw, dict):
        raise Unprocessable("validation_failed", 'filter must be an object such as {"error_code": "40310"}', field="filter")
    unknown = sorted(set(raw) - _FILTER_KEYS)
    if unknown:
        raise Unprocessable("validation_failed", f"unknown filter field {unknown[0]!r}", field=f"filter.{unknown[0]}")
    code = raw.get("error_code")
    if code is not None and not isinstance(code, str):
        raise Unprocessable("validation_failed", 'error_code must be a string such as "40310"', field="filter.error_code")

    def when(key: str) -> datetime | None:
        value = raw.get(key)
        return _time(value, f"filter.{key}", Unprocessable, "validation_failed") if value is not None else None

    church = raw.get("church_id")
    return Filter(
        church_id=_uuid(church, "filter.church_id", Unprocessable, "validation_failed") if church is not None else None,
        error_code=code or None,
        created_from=when("from"),
        created_to=when("to"),
    )


def _uuid(value: Any, field: str, error: type[BadRequest | Unprocessable], code: str) -> str:
    if isinstance(value, str):
        try:
            return str(UUID(value))
        except ValueError:
            pass
    raise error(code, f"{field} is not a valid id", field=field)


def _time(value: Any, field: str, error: type[BadRequest | Unprocessable], code: str) -> datetime:
    message = f"{field} must be an ISO-8601 time with a zone, e.g. 2026-12-06T09:00:00-06:00"
    if not isinstance(value, str):
        raise error(code, message, field=field)
    try:
        parsed = datetime.fromisoformat(_SPACED_OFFSET.sub(r"+\1", value.strip()))
    except ValueError:
        raise error(code, message, field=field) from None
    if parsed.tzinfo is None:
        raise error(code, message, field=field)
    return parsed


def _days(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 36_500:
        raise Unprocessable("validation_failed", f"{field} must be a whole number of days (0 or more)", field=field)
    return value
