"""``koinonia analytics rebuild``: recompute the aggregates of whole days straight from the tables.

The aggregates are derived data; this is how they are made whole after anything the automatic paths
cannot repair (see aggregates.mark_recent), after a church changes its time zone, or after deploying this
feature onto existing data. Church by church, ``days_per_batch`` days per transaction (the same recompute
the processor runs, under the same per-bucket locks, so it may run while processors do), with a progress
line per batch. Without ``since`` it also removes a church's rows from before its first activity.
Interrupted, run it again: every batch is complete in itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, timedelta

from common.analytics import aggregates
from common.analytics.types import Bucket
from common.db.pool import Pool

ALL_CHURCHES_SQL = "SELECT id::text FROM churches ORDER BY id"


@dataclass
class RebuildReport:
    churches: int = 0
    days: int = 0
    rows: int = 0
    removed: int = 0
    seconds: float = 0.0


def rebuild(
    pool: Pool,
    *,
    church_id: str | None = None,
    since: date | None = None,
    days_per_batch: int = 31,
    progress: Callable[[str], None] = lambda _line: None,
) -> RebuildReport:
    started = time.monotonic()
    report = RebuildReport()
    churches = [church_id] if church_id else [row[0] for row in pool.run(ALL_CHURCHES_SQL)]
    for n, church in enumerate(churches, 1):
        report.churches += 1
        first, today = aggregates.church_span(pool, church)
        if since is None:
            report.removed += aggregates.delete_before(pool, church, first)
        start = since if since is not None else first
        if start is None or start > today:
            progress(f"church {church} [{n}/{len(churches)}]: nothing to count")
            continue
        days = [start + timedelta(days=i) for i in range((today - start).days + 1)]
        batches = [days[i : i + days_per_batch] for i in range(0, len(days), days_per_batch)]
        for b, chunk in enumerate(batches, 1):
            with pool.transaction() as conn:
                done = aggregates.recompute(conn, [Bucket(church, day) for day in chunk])
            report.days += len(chunk)
            report.rows += done.rows
            report.removed += done.removed
            progress(f"church {church} [{n}/{len(churches)}]: {chunk[0]}..{chunk[-1]} ({len(chunk)} days): "
                     f"{done.rows} rows, {done.removed} removed [batch {b}/{len(batches)}]")  # fmt: skip
    report.seconds = round(time.monotonic() - started, 3)
    return report
