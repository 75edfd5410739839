"""Purge (delete) and archive (move to ``dead_letters_archive``) dead letters, in bounded batches.

Neither touches ``messages``: a purged or archived dead letter's message stays ``failed`` (and can no
longer be replayed from here). Each batch is one statement, so one transaction:

- purge: ``DELETE ... WHERE id IN (the next batch of matching ids)``;
- archive: ``WITH moved AS (DELETE ... RETURNING *) INSERT INTO dead_letters_archive SELECT ... FROM
  moved``: a row is in exactly one of the two tables at every moment, whoever looks.

Bulk selections are bounded by the time the job started (purge) or a fixed cutoff (archive), so a job
ends even while new dead letters keep arriving.

Every purge batch that deleted something writes ``dead_letters.purged`` to the audit log in the same
transaction, one entry per church (target: the church; details: the dead-letter ids), with the caller
as actor (``church:<id>``, ``operator``, or what the caller passes, e.g. ``cli``). Archiving moves rows
without losing them and is not audited.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from common import audit
from common.db.pool import Connection, Pool
from common.dead_letters.access import Scope
from common.dead_letters.queries import Filter, db_now, where

logger = logging.getLogger("koinonia.dead_letters")

batch_size_default = 1000

_PURGE_IDS_SQL = """
DELETE FROM dead_letters d
WHERE d.id = ANY(CAST(:ids AS uuid[])) AND {where}
RETURNING d.id::text, d.church_id::text
"""

_PURGE_BATCH_SQL = """
WITH gone AS (
    DELETE FROM dead_letters
    WHERE id IN (
        SELECT d.id FROM dead_letters d
        WHERE {where} AND d.created_at <= CAST(:until AS timestamptz)
        ORDER BY d.created_at, d.id
        LIMIT :limit
    )
    RETURNING id::text, church_id::text
)
SELECT id, church_id FROM gone
"""

# SKIP LOCKED: a row a replay is stamping right now is archived by the next run instead of waiting.
_ARCHIVE_BATCH_SQL = """
WITH moved AS (
    DELETE FROM dead_letters
    WHERE id IN (
        SELECT d.id FROM dead_letters d
        WHERE {where} AND d.created_at < CAST(:cutoff AS timestamptz)
        ORDER BY d.created_at, d.id
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    RETURNING id, message_id, church_id, reason, error_code, attempts, created_at, replayed_at, replay_count
), archived AS (
    INSERT INTO dead_letters_archive
        (id, message_id, church_id, reason, error_code, attempts, created_at, replayed_at, replay_count)
    SELECT id, message_id, church_id, reason, error_code, attempts, created_at, replayed_at, replay_count
    FROM moved
    RETURNING 1
)
SELECT count(*) FROM archived
"""


@dataclass
class BulkReport:
    """What a purge or archive did; ``complete`` is False when a time budget cut it short."""

    action: str
    done: int = 0
    not_found: int = 0
    batches: int = 0
    complete: bool = True
    cutoff: datetime | None = None
    not_found_ids: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {self.action: self.done, "batches": self.batches, "complete": self.complete}
        if self.not_found_ids is not None:
            body["not_found"] = self.not_found
            body["ids"] = {"not_found": self.not_found_ids}
        if self.cutoff is not None:
            body["cutoff"] = self.cutoff.isoformat()
        if not self.complete:
            body["note_incomplete"] = "stopped at the time budget; run it again to continue"
        return body


Progress = Callable[[BulkReport], None]


def purge_ids(
    pool: Pool,
    scope: Scope,
    ids: Sequence[str],
    selection: Filter | None = None,
    *,
    batch_size: int = batch_size_default,
    progress: Progress | None = None,
    actor: str | None = None,
) -> BulkReport:
    """Delete these dead letters (ids outside ``scope``, or not matching ``selection``, are not found)."""
    report = BulkReport("purged", not_found_ids=[])
    condition, params = where(scope, selection or Filter())
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        with pool.transaction() as conn:
            rows = conn.run(_PURGE_IDS_SQL.format(where=condition), ids=chunk, **params)
            _audit_purged(conn, rows, actor or scope.audit_actor)
        gone = {r[0] for r in rows}
        missing = [i for i in chunk if i not in gone]
        report.done += len(gone)
        report.not_found += len(missing)
        assert report.not_found_ids is not None
        report.not_found_ids += missing
        report.batches += 1
        if progress is not None:
            progress(report)
    _log(scope, report)
    return report


def purge_matching(
    pool: Pool,
    scope: Scope,
    selection: Filter,
    *,
    batch_size: int = batch_size_default,
    budget_s: float | None = None,
    progress: Progress | None = None,
    actor: str | None = None,
) -> BulkReport:
    """Delete every dead letter matching ``selection`` that exists now (not ones arriving meanwhile)."""
    report = BulkReport("purged")
    condition, params = where(scope, selection)
    sql = _PURGE_BATCH_SQL.format(where=condition)
    until = db_now(pool)

    def one_batch() -> int:
        with pool.transaction() as conn:
            rows = conn.run(sql, until=until, limit=batch_size, **params)
            _audit_purged(conn, rows, actor or scope.audit_actor)
        return len(rows)

    _batches(report, one_batch, batch_size=batch_size, budget_s=budget_s, progress=progress)
    _log(scope, report)
    return report


def archive_older_than(
    pool: Pool,
    scope: Scope,
    older_than_days: int,
    *,
    church_id: str | None = None,
    batch_size: int = batch_size_default,
    budget_s: float | None = None,
    progress: Progress | None = None,
) -> BulkReport:
    """Move dead letters created more than ``older_than_days`` ago to ``dead_letters_archive``."""
    cutoff: datetime = pool.run("SELECT now() - make_interval(days => CAST(:d AS int))", d=older_than_days)[0][0]
    report = BulkReport("archived", cutoff=cutoff)
    condition, params = where(scope, Filter(church_id=church_id))
    sql = _ARCHIVE_BATCH_SQL.format(where=condition)
    _batches(report, lambda: int(pool.run(sql, cutoff=cutoff, limit=batch_size, **params)[0][0]),
             batch_size=batch_size, budget_s=budget_s, progress=progress)  # fmt: skip
    _log(scope, report)
    return report


def _audit_purged(conn: Connection, rows: list[list[Any]], actor: str) -> None:
    """One ``dead_letters.purged`` entry per church of this batch (rows: dead-letter id, church id)."""
    by_church: dict[str, list[str]] = {}
    for dl_id, church_id in rows:
        by_church.setdefault(str(church_id), []).append(str(dl_id))
    for church_id, purged in sorted(by_church.items()):
        audit.record(conn, "dead_letters.purged", actor=actor, church_id=church_id, target=f"church:{church_id}",
                     details={"count": len(purged), "dead_letter_ids": purged})  # fmt: skip


def _batches(
    report: BulkReport,
    one_batch: Callable[[], int],
    *,
    batch_size: int,
    budget_s: float | None,
    progress: Progress | None,
) -> None:
    deadline = time.monotonic() + budget_s if budget_s is not None else None
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            report.complete = False
            return
        done = one_batch()
        report.done += done
        report.batches += 1
        if progress is not None:
            progress(report)
        if done < batch_size:
            return


def _log(scope: Scope, report: BulkReport) -> None:
    if report.done or report.not_found:
        logger.info(
            f"dead letters {report.action}",
            extra={"fields": {"church_id": scope.church_id or "*", "count": report.done, "complete": report.complete}},
        )
