"""The audit log: who did what security-relevant thing, when; append-only (a trigger refuses changes).

Actions are dotted names (``api_key.created``, ``api_key.revoked``, ``data.deleted``,
``dead_letters.replayed``, ``dead_letters.purged``, ``opt_out.recorded``, ``opt_in.recorded``).
``target`` and ``details`` never carry a phone number, an email address or a message body: ids and
counts only. Write inside the transaction of the action itself, so the record exists if and only if the
action happened.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common.db.pool import Connection, Pool

_RECORD_SQL = """
INSERT INTO audit_log (church_id, action, actor, target, details)
VALUES (CAST(:church_id AS uuid), :action, :actor, :target, CAST(:details AS jsonb))
"""

_LIST_FIRST_SQL = """
SELECT id, church_id::text, action, actor, target, details, created_at FROM audit_log
WHERE church_id = CAST(:church_id AS uuid)
ORDER BY created_at DESC, id DESC LIMIT :limit
"""

_LIST_NEXT_SQL = """
SELECT id, church_id::text, action, actor, target, details, created_at FROM audit_log
WHERE church_id = CAST(:church_id AS uuid) AND (created_at, id) < (:before_at, :before_id)
ORDER BY created_at DESC, id DESC LIMIT :limit
"""


@dataclass(frozen=True)
class AuditEntry:
    id: int
    church_id: str | None
    action: str
    actor: str
    target: str | None
    details: dict[str, Any]
    created_at: datetime


def record(conn: Connection | Pool, action: str, *, actor: str, church_id: str | None = None,
           target: str | None = None, details: dict[str, Any] | None = None) -> None:  # fmt: skip
    """Append one entry (in the caller's transaction when ``conn`` is a connection inside one)."""
    conn.run(_RECORD_SQL, church_id=church_id, action=action, actor=actor, target=target,
             details=json.dumps(details or {}))  # fmt: skip


def list_for_church(pool: Pool, church_id: str, *, limit: int, before: tuple[datetime, int] | None = None) -> list[AuditEntry]:
    """A church's audit trail, newest first (keyset pages on ``audit_log_church_time``)."""
    if before is None:
        rows = pool.run(_LIST_FIRST_SQL, church_id=church_id, limit=limit)
    else:
        rows = pool.run(_LIST_NEXT_SQL, church_id=church_id, limit=limit, before_at=before[0], before_id=before[1])
    return [AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5] if isinstance(r[5], dict) else json.loads(r[5]), r[6]) for r in rows]
