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

from pydantic import BaseModel, ConfigDict, Field

from common.api_errors import BadRequest, Unprocessable
from common.dead_letters import alerts, queries, replay, retention
from common.dead_letters.access import Scope
from common.dead_letters.queries import Filter
from common.request_models import Id, StrictModel, Time, parse_model
from common.runtime import Runtime

logger = logging.getLogger("koinonia.dead_letters")

max_ids = 10_000
http_budget_s = 25.0  # bulk work per request; past it the answer says "complete": false (run it again)
tick_archive_budget_s = 20.0
max_days = 36_500
max_code_length = 64
_PRINTABLE = r"^[^\x00-\x1f\x7f]*$"
# '+' in a query string decodes to a space: '...T10:00:00 00:00' was meant as '...T10:00:00+00:00'.
_SPACED_OFFSET = re.compile(r" (\d{2}(?::?\d{2})?)$")


# -- GET /dead-letters ----------------------------------------------------------------------------------


def list_dead_letters(rt: Runtime, scope: Scope, args: Mapping[str, str]) -> dict[str, Any]:
    unknown = sorted(set(args) - {"church_id", "error_code", "from", "to", "limit", "cursor"})
    if unknown:
        raise BadRequest("invalid_parameter", f"unknown query parameter {unknown[0]!r}", field=unknown[0])
    code = args.get("error_code", "")
    if len(code) > max_code_length or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in code):  # NUL: PostgreSQL refuses
        raise BadRequest("invalid_parameter", 'error_code must be a short code such as "40310"', field="error_code")
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
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= queries.max_limit:  # "²".isdigit(), int("²") fails
        raise BadRequest("invalid_limit", f"limit must be a whole number from 1 to {queries.max_limit}", field="limit")
    return int(raw)


# -- POST /dead-letters/replay | purge | archive ------------------------------------------------------------


class FilterBody(StrictModel):
    """Which dead letters: all of these that are given (``{}``: every one the caller may see)."""

    error_code: str | None = Field(
        default=None, max_length=max_code_length, pattern=_PRINTABLE, description='a carrier error code such as "40310"'
    )
    from_: Time | None = Field(default=None, alias="from", description="created at or after (inclusive)")
    to: Time | None = Field(default=None, description="created before (exclusive)")
    church_id: Id | None = Field(default=None, description="one church (the operator only; a church key sees its own)")


class ReplayBody(StrictModel):
    """``{"ids": [...]}`` or ``{"filter": {...}}``, not both."""

    ids: list[Id] | None = Field(default=None, min_length=1, max_length=max_ids, description="dead-letter ids")
    filter: FilterBody | None = None


class PurgeBody(ReplayBody):
    """``ids`` or ``filter``, and/or ``older_than_days``."""

    older_than_days: int | None = Field(default=None, ge=0, le=max_days, description="created more than N days ago")


class TickEvent(BaseModel):
    """``POST /events``: the scheduler's event (EventBridge's envelope, or the dev scheduler's). Its content is
    not used: any JSON object, or no body, starts the tick (anything else is 400/422 as for every body)."""

    model_config = ConfigDict(extra="allow")


class ArchiveBody(StrictModel):
    """Everything optional: by default, what is past ``DLQ_RETENTION_DAYS``."""

    older_than_days: int | None = Field(default=None, ge=0, le=max_days, description="default: DLQ_RETENTION_DAYS")
    church_id: Id | None = None


@dataclass(frozen=True)
class Selection:
    ids: list[str] | None
    filter: Filter | None


def replay_request(rt: Runtime, scope: Scope, payload: Any) -> dict[str, Any]:
    body = parse_model(ReplayBody, payload)
    selection = _selection(body)
    if selection.ids is not None:
        report = replay.replay_ids(rt, scope, selection.ids)
    elif selection.filter is not None:
        report = replay.replay_matching(rt, scope, selection.filter, budget_s=http_budget_s)
    else:
        raise Unprocessable("validation_failed", "give 'ids' (a list of dead-letter ids) or 'filter' ({} for all)", field="ids")
    return report.as_dict()


def purge_request(rt: Runtime, scope: Scope, payload: Any) -> dict[str, Any]:
    body = parse_model(PurgeBody, payload)
    selection = _selection(body)
    older = body.older_than_days
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
    body = parse_model(ArchiveBody, payload)
    older = body.older_than_days if body.older_than_days is not None else rt.settings.dlq_retention_days
    church = str(body.church_id) if body.church_id is not None else None
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


def _selection(body: ReplayBody) -> Selection:
    if body.ids is not None and body.filter is not None:
        raise Unprocessable("validation_failed", "give 'ids' or 'filter', not both", field="filter")
    if body.ids is not None:
        return Selection([str(i) for i in body.ids], None)
    if body.filter is not None:
        raw = body.filter
        church = str(raw.church_id) if raw.church_id is not None else None
        selected = Filter(church_id=church, error_code=raw.error_code or None, created_from=raw.from_, created_to=raw.to)
        return Selection(None, selected)
    return Selection(None, None)


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
