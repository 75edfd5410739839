"""Replay dead letters: put their messages back on the queue, once.

For each selected dead letter whose message is still ``failed`` (the state machine's ``failed ->
queued``), one statement (one transaction) resets the message (``queued``, no attempts, due now, a fresh
4-hour deadline, no error, no claim) and stamps the dead letter (``replayed_at``, ``replay_count + 1``).
Only after COMMIT are the messages enqueued in Redis; if Redis is off or down they simply stay
``queued`` in PostgreSQL and the retry-scheduler's reconcile enqueues them (or sends them inline).

Idempotent and race-safe: the message rows are locked in id order and re-checked under the lock, so a
second replay (or two at once) finds the message no longer ``failed`` and skips it. Replaying twice
sends once. A message whose recipient was erased (``to_enc`` NULL, common/privacy) is
skipped too: it has nobody to go to.

Each batch that replays something writes ``dead_letters.replayed`` to the audit log in its own
transaction, one entry per church (target: the church; details: the dead-letter ids), with the caller
as actor (``church:<id>``, ``operator``, or what the caller passes, e.g. ``cli``).

Filters are walked in pages of ``batch_size`` ids (one transaction each, oldest first, bounded by the
start time), with a progress callback after every batch, and an optional time budget: a replay cut
short by its budget is simply run again (already replayed messages are skipped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from common import audit
from common.analytics import Event, EventType, emit
from common.dead_letters.access import Scope
from common.dead_letters.queries import Filter, db_now, id_page
from common.queue import Channel, Lane, QueueItem, SenderKey, SenderLimit
from common.redis_client import RedisUnavailable
from common.runtime import Runtime
from common.send.models import default_deadline_s
from common.wake import wake_consumers

logger = logging.getLogger("koinonia.dead_letters")

batch_size_default = 1000

# The replay itself: lock the still-failed messages in id order (two replays at once cannot deadlock,
# and the lock re-checks the status), reset them, stamp their dead letters. Every selected dead letter
# comes back, with NULLs for the ones whose message was not failed (skipped); unknown ids (and another
# church's) do not come back at all.
_REPLAY_SQL = """
WITH target AS (
    SELECT d.id AS dl_id, d.message_id
    FROM dead_letters d
    WHERE d.id = ANY(CAST(:ids AS uuid[])){scope}
), locked AS (
    SELECT m.id
    FROM messages m JOIN target t ON t.message_id = m.id
    WHERE m.status = 'failed' AND m.to_enc IS NOT NULL
    ORDER BY m.id
    FOR UPDATE OF m
), reset AS (
    UPDATE messages m SET
        status = 'queued', attempts = 0, next_attempt_at = now(),
        deadline_at = now() + CAST(:deadline_s AS double precision) * interval '1 second',
        last_error_code = NULL, last_error_detail = NULL, claim_token = NULL, lease_until = NULL,
        finalized_at = NULL, updated_at = now()
    FROM locked l
    WHERE m.id = l.id AND m.status = 'failed'
    RETURNING m.id, m.church_id, m.lane, m.channel, m.from_address
), stamped AS (
    UPDATE dead_letters d SET replayed_at = now(), replay_count = d.replay_count + 1
    FROM target t JOIN reset r ON r.id = t.message_id
    WHERE d.id = t.dl_id
    RETURNING d.id
)
SELECT t.dl_id::text, r.id::text, r.church_id::text, r.lane, r.channel, r.from_address,
       s.sms_per_second, s.mms_per_second
FROM target t
LEFT JOIN reset r ON r.id = t.message_id
LEFT JOIN sender_numbers s ON s.church_id = r.church_id AND s.phone = r.from_address
"""
_SCOPE = " AND d.church_id = CAST(:scope_church AS uuid)"


@dataclass
class ReplayReport:
    replayed: int = 0
    skipped: int = 0  # the message was no longer 'failed' (already replayed, or sent since)
    not_found: int = 0  # unknown ids, and another church's (indistinguishable on purpose)
    enqueued: int = 0
    left_queued: int = 0  # committed as 'queued' but not put on Redis: the retry-scheduler takes them
    batches: int = 0
    complete: bool = True
    redis_error: str | None = None
    ids: dict[str, list[str]] | None = None  # by id requests only: replayed / skipped / not_found

    @property
    def processed(self) -> int:
        return self.replayed + self.skipped + self.not_found

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "replayed": self.replayed,
            "skipped": self.skipped,
            "not_found": self.not_found,
            "enqueued": self.enqueued,
            "left_queued": self.left_queued,
            "batches": self.batches,
            "complete": self.complete,
        }
        if self.left_queued:
            reason = self.redis_error or "queues disabled"
            body["note"] = (
                f"{self.left_queued} replayed message(s) are queued in PostgreSQL but not on Redis ({reason});"
                " the retry-scheduler will enqueue or send them"
            )
        if not self.complete:
            body["note_incomplete"] = "stopped at the time budget; run the same replay again to continue"
        if self.ids is not None:
            body["ids"] = self.ids
        return body


Progress = Callable[[ReplayReport], None]


@dataclass(frozen=True)
class _Replayed:
    message_id: str
    church_id: str
    lane: str
    channel: str
    sender: str
    rate: float | None  # the sending number's rate for this channel, if the number still exists


@dataclass
class _Batch:
    replayed: list[_Replayed] = field(default_factory=list)
    replayed_ids: list[str] = field(default_factory=list)
    skipped_ids: list[str] = field(default_factory=list)
    found: set[str] = field(default_factory=set)


def replay_ids(
    rt: Runtime,
    scope: Scope,
    ids: Sequence[str],
    *,
    batch_size: int = batch_size_default,
    progress: Progress | None = None,
    actor: str | None = None,
) -> ReplayReport:
    """Replay these dead letters (ids outside ``scope`` count as not found)."""
    report = ReplayReport(ids={"replayed": [], "skipped": [], "not_found": []})
    unique = list(dict.fromkeys(ids))
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        batch = _replay_batch(rt, scope, chunk, actor or scope.audit_actor)
        missing = [i for i in chunk if i not in batch.found]
        report.not_found += len(missing)
        assert report.ids is not None
        report.ids["replayed"] += batch.replayed_ids
        report.ids["skipped"] += batch.skipped_ids
        report.ids["not_found"] += missing
        _account(rt, report, batch)
        if progress is not None:
            progress(report)
    _log(scope, report)
    return report


def replay_matching(
    rt: Runtime,
    scope: Scope,
    selection: Filter,
    *,
    batch_size: int = batch_size_default,
    budget_s: float | None = None,
    progress: Progress | None = None,
    actor: str | None = None,
) -> ReplayReport:
    """Replay every dead letter matching ``selection`` (created up to now), a batch per transaction."""
    report = ReplayReport()
    until = db_now(rt.pool)
    deadline = time.monotonic() + budget_s if budget_s is not None else None
    after = None
    while True:
        if deadline is not None and time.monotonic() >= deadline:
            report.complete = False
            break
        page = id_page(rt.pool, scope, selection, until=until, after=after, limit=batch_size)
        if not page:
            break
        after = page[-1]
        batch = _replay_batch(rt, scope, [dl_id for _, dl_id in page], actor or scope.audit_actor)
        report.not_found += len(page) - len(batch.found)  # purged between the page read and the replay
        _account(rt, report, batch)
        if progress is not None:
            progress(report)
        if len(page) < batch_size:
            break
    _log(scope, report)
    return report


def _replay_batch(rt: Runtime, scope: Scope, dl_ids: list[str], actor: str) -> _Batch:
    params: dict[str, Any] = {"ids": dl_ids, "deadline_s": float(default_deadline_s)}
    scope_sql = ""
    if scope.church_id is not None:
        scope_sql = _SCOPE
        params["scope_church"] = scope.church_id
    with rt.pool.transaction() as conn:
        rows = conn.run(_REPLAY_SQL.format(scope=scope_sql), **params)
        by_church: dict[str, list[str]] = {}
        for dl_id, message_id, church_id, *_rest in rows:
            if message_id is not None:
                by_church.setdefault(church_id, []).append(dl_id)
        for church_id, replayed_ids in sorted(by_church.items()):
            audit.record(conn, "dead_letters.replayed", actor=actor, church_id=church_id, target=f"church:{church_id}",
                         details={"count": len(replayed_ids), "dead_letter_ids": replayed_ids})  # fmt: skip
    batch = _Batch()
    for dl_id, message_id, church_id, lane, channel, sender, sms_rate, mms_rate in rows:
        batch.found.add(dl_id)
        if message_id is None:
            batch.skipped_ids.append(dl_id)
            continue
        batch.replayed_ids.append(dl_id)
        rate = mms_rate if channel == "mms" else sms_rate
        batch.replayed.append(
            _Replayed(message_id, church_id, lane, channel, sender or "", float(rate) if rate is not None else None)
        )
    return batch


def _account(rt: Runtime, report: ReplayReport, batch: _Batch) -> None:
    report.batches += 1
    report.replayed += len(batch.replayed)
    report.skipped += len(batch.skipped_ids)
    if not batch.replayed:
        return
    emit(rt, [Event.messages(EventType.replayed, [r.message_id for r in batch.replayed])])  # common/analytics
    error = _enqueue(rt, batch.replayed)
    if error is None:
        report.enqueued += len(batch.replayed)
    else:
        report.left_queued += len(batch.replayed)
        report.redis_error = error


def _enqueue(rt: Runtime, replayed: list[_Replayed]) -> str | None:
    """Put the replayed messages on Redis; ``None`` on success, else why not (they stay queued in PG)."""
    if not rt.settings.enable_queues:
        return "queues disabled"
    items = [
        QueueItem(
            message_id=r.message_id, church_id=r.church_id, lane=cast(Lane, r.lane), sender=r.sender,
            channel=cast(Channel, r.channel),
        )
        for r in replayed
    ]  # fmt: skip
    # As `send` does: the number's rate on the message's channel, in that (channel, number)'s own bucket; a
    # mail's From address at the SES account's rate.
    ses = rt.settings.ses_max_send_rate
    limits: dict[SenderKey, SenderLimit] = {
        (cast(Channel, r.channel), r.sender): SenderLimit.for_rate(ses if r.channel == "mail" else r.rate or ses)
        for r in replayed if r.sender and (r.rate or r.channel == "mail")
    }  # fmt: skip
    try:
        rt.redis.call(lambda _client: rt.queue.enqueue(items, limits))
    except (RedisUnavailable, redis.RedisError) as exc:
        logger.warning(
            "replayed messages not enqueued; they stay queued for the retry-scheduler",
            extra={"fields": {"count": len(items), "error": type(exc).__name__}},
        )
        return f"Redis unavailable: {type(exc).__name__}"
    wake_consumers(rt)
    return None


def _log(scope: Scope, report: ReplayReport) -> None:
    logger.info(
        "dead letters replayed",
        extra={"fields": {
            "church_id": scope.church_id or "*", "replayed": report.replayed, "skipped": report.skipped,
            "not_found": report.not_found, "enqueued": report.enqueued, "left_queued": report.left_queued,
            "complete": report.complete,
        }},
    )  # fmt: skip
