"""Reads on ``dead_letters``: a filtered keyset page for people, id pages and counts for bulk work.

Filters (``Filter``) and the caller's ``Scope`` become one ``WHERE`` made of fixed fragments with bound
parameters (no value is ever spliced into SQL), so every statement that selects dead letters (list,
replay, purge, archive) selects exactly the same rows for the same filter.

People page newest first on ``(created_at, id)`` (``id`` breaks ties: one outcome batch writes many
dead letters with one ``now()``); the cursor is opaque (base64 of the last row's key). Bulk jobs walk
oldest first in pages of ids, bounded by the time they started, so rows that arrive meanwhile (or
that fail again after a replay, which refreshes ``created_at``) are never visited twice.
Indexes: ``dead_letters_church_created (church_id, created_at, id)``, ``dead_letters_created
(created_at, id)``, ``dead_letters_code (error_code, created_at)``.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from common.api_errors import BadRequest
from common.db.pool import Pool
from common.dead_letters.access import Scope
from common.privacy import crypto

default_limit = 50
max_limit = 500
_BAD_CURSOR = "cursor is not one this API returned; start again without it"
ERASED = "erased"  # the "to" of a message whose recipient was erased (its to_enc is NULL)


@dataclass(frozen=True)
class Filter:
    """Which dead letters: every given field must match (``created_to`` is exclusive)."""

    church_id: str | None = None
    error_code: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None
    older_than_days: int | None = None

    def is_empty(self) -> bool:
        return self == Filter()


def where(scope: Scope, selection: Filter, alias: str = "d") -> tuple[str, dict[str, Any]]:
    """SQL condition (on ``alias``) and its parameters for ``selection`` within ``scope``."""
    clauses = ["TRUE"]
    params: dict[str, Any] = {}
    if scope.church_id is not None:
        clauses.append(f"{alias}.church_id = CAST(:scope_church AS uuid)")
        params["scope_church"] = scope.church_id
    if selection.church_id is not None:  # within a church's scope another church's id selects nothing
        clauses.append(f"{alias}.church_id = CAST(:church_id AS uuid)")
        params["church_id"] = selection.church_id
    if selection.error_code is not None:
        clauses.append(f"{alias}.error_code = :error_code")
        params["error_code"] = selection.error_code
    if selection.created_from is not None:
        clauses.append(f"{alias}.created_at >= CAST(:created_from AS timestamptz)")
        params["created_from"] = selection.created_from
    if selection.created_to is not None:
        clauses.append(f"{alias}.created_at < CAST(:created_to AS timestamptz)")
        params["created_to"] = selection.created_to
    if selection.older_than_days is not None:
        clauses.append(f"{alias}.created_at < now() - make_interval(days => CAST(:older_than_days AS int))")
        params["older_than_days"] = selection.older_than_days
    return " AND ".join(clauses), params


# -- the list people read -----------------------------------------------------------------------------

_LIST_SQL = """
SELECT d.id::text, d.message_id::text, d.church_id::text, d.reason, d.error_code, d.attempts, d.created_at,
       d.replayed_at, d.replay_count, m.to_enc, m.status
FROM dead_letters d JOIN messages m ON m.id = d.message_id
WHERE {where}{after}
ORDER BY d.created_at DESC, d.id DESC
LIMIT :limit
"""
_BEFORE = " AND (d.created_at, d.id) < (CAST(:before_at AS timestamptz), CAST(:before_id AS uuid))"


@dataclass(frozen=True)
class DeadLetterRow:
    id: str
    message_id: str
    church_id: str
    reason: str
    error_code: str | None
    attempts: list[dict[str, Any]]
    created_at: datetime
    replayed_at: datetime | None
    replay_count: int
    to_address: str
    status: str  # the message's current status ('failed' until a replay moves it on)

    @property
    def cursor(self) -> str:
        return encode_cursor(self.created_at, self.id)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "message_id": self.message_id,
            "church_id": self.church_id,
            "reason": self.reason,
            "error_code": self.error_code,
            "attempts": self.attempts,
            "created_at": self.created_at.isoformat(),
            "replayed_at": self.replayed_at.isoformat() if self.replayed_at else None,
            "replay_count": self.replay_count,
            "to": self.to_address,
            "status": self.status,
        }


@dataclass(frozen=True)
class Page:
    rows: list[DeadLetterRow]
    next_cursor: str | None

    def as_json(self) -> dict[str, Any]:
        return {"data": [row.as_json() for row in self.rows], "next_cursor": self.next_cursor}


def list_page(pool: Pool, scope: Scope, selection: Filter, *, limit: int = default_limit, cursor: str | None = None) -> Page:
    """One page, newest first; ``cursor`` is the previous page's ``next_cursor``."""
    condition, params = where(scope, selection)
    after = ""
    if cursor:
        before_at, before_id = decode_cursor(cursor)
        after = _BEFORE
        params.update(before_at=before_at, before_id=before_id)
    ring = crypto.keyring()
    rows = [_row(r, ring) for r in pool.run(_LIST_SQL.format(where=condition, after=after), limit=limit, **params)]
    return Page(rows, rows[-1].cursor if len(rows) == limit else None)


def _row(raw: list[Any], ring: crypto.Keyring) -> DeadLetterRow:
    attempts = raw[5]
    if isinstance(attempts, str | bytes):
        attempts = json.loads(attempts)
    return DeadLetterRow(
        id=raw[0], message_id=raw[1], church_id=raw[2], reason=raw[3], error_code=raw[4], attempts=list(attempts or []),
        created_at=raw[6], replayed_at=raw[7], replay_count=int(raw[8]),
        to_address=ERASED if raw[9] is None else ring.open(raw[9], "address"), status=raw[10],
    )  # fmt: skip


def encode_cursor(created_at: datetime, dead_letter_id: str) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{dead_letter_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, dead_letter_id = text.partition("|")
        created_at = datetime.fromisoformat(at)
        UUID(dead_letter_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadRequest("invalid_cursor", _BAD_CURSOR, field="cursor") from None
    if created_at.tzinfo is None:
        raise BadRequest("invalid_cursor", _BAD_CURSOR, field="cursor")
    return created_at, dead_letter_id


# -- what bulk work walks -----------------------------------------------------------------------------

_ID_PAGE_SQL = """
SELECT d.created_at, d.id::text
FROM dead_letters d
WHERE {where} AND d.created_at <= CAST(:until AS timestamptz){after}
ORDER BY d.created_at, d.id
LIMIT :limit
"""
_AFTER = " AND (d.created_at, d.id) > (CAST(:after_at AS timestamptz), CAST(:after_id AS uuid))"


def id_page(
    pool: Pool, scope: Scope, selection: Filter, *, until: datetime, after: tuple[datetime, str] | None, limit: int
) -> list[tuple[datetime, str]]:
    """Keys ``(created_at, id)`` of the next ``limit`` matching dead letters created up to ``until``, oldest
    first, after the key ``after``."""
    condition, params = where(scope, selection)
    extra = ""
    if after is not None:
        extra = _AFTER
        params.update(after_at=after[0], after_id=after[1])
    sql = _ID_PAGE_SQL.format(where=condition, after=extra)
    return [(r[0], r[1]) for r in pool.run(sql, until=until, limit=limit, **params)]


def count_matching(pool: Pool, scope: Scope, selection: Filter) -> int:
    condition, params = where(scope, selection)
    return int(pool.run(f"SELECT count(*) FROM dead_letters d WHERE {condition}", **params)[0][0])


def db_now(pool: Pool) -> datetime:
    """PostgreSQL's clock (the one ``created_at`` was written with)."""
    now: datetime = pool.run("SELECT now()")[0][0]
    return now
