"""The checks behind ``/health``, ``/health/detailed``, ``/ready`` and ``/alive``.

Every check runs in parallel on a small thread pool under one deadline (``HEALTH_TIMEOUT_MS``), so a
dependency that hangs makes its check report ``timeout`` instead of making the answer late. Nothing
secret goes into an answer: no URLs, no credentials, no numbers or bodies.

Status: ``unhealthy`` when PostgreSQL (the source of truth) is unreachable; ``degraded`` when only
Redis is, because sending then falls back inline; ``healthy`` otherwise.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import common
from common.config import Settings
from common.db.pool import Pool
from common.dead_letters.counters import counter_key
from common.messages.states import MessageStatus
from common.queue import MessageQueue
from common.redis_client import RedisGate, RedisUnavailable

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"

_started_monotonic = time.monotonic()
_started_at = datetime.now(UTC)
# Threads outlive a hung check; a few are enough because every check also has socket timeouts.
_executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health")

_WAITING = (MessageStatus.scheduled, MessageStatus.queued, MessageStatus.retrying, MessageStatus.sending)
# Also the queue gauges' query (common/metrics/gauges.py): the last column is how long the most overdue waiting
# message of each status has been due (NULL: none is due yet).
PENDING_SQL = """
SELECT status, count(*), EXTRACT(EPOCH FROM now() - min(created_at)),
       EXTRACT(EPOCH FROM now() - min(coalesce(next_attempt_at, created_at))
                            FILTER (WHERE coalesce(next_attempt_at, created_at) <= now()))
FROM messages
WHERE status IN ('scheduled', 'queued', 'retrying') OR status = 'sending'
GROUP BY status
"""
DEAD_LETTERS_SQL = "SELECT count(*) FROM dead_letters WHERE replayed_at IS NULL"  # waiting: not replayed


@dataclass(frozen=True)
class Report:
    body: dict[str, Any]
    http_status: int


class HealthChecker:
    def __init__(self, settings: Settings, pool: Pool, redis_gate: RedisGate) -> None:
        self.settings = settings
        self.pool = pool
        self.redis = redis_gate

    # -- endpoints -------------------------------------------------------------------------------

    def health(self) -> Report:
        return self._report({"database": self._ping_database, "redis": self._ping_redis})

    def detailed(self) -> Report:
        return self._report(
            {"database": self._database_detail, "redis": self._ping_redis, "queues": self._queues},
            detailed=True,
        )

    def ready(self) -> Report:
        report = self.health()
        ready = report.body["checks"]["database"]["status"] == "ok"
        body = {**report.body, "ready": ready}
        return Report(body, 200 if ready else 503)

    @staticmethod
    def alive() -> Report:
        return Report({"status": "alive", "timestamp": _now_iso()}, 200)

    # -- checks (each returns a JSON-able dict with a "status") ---------------------------------------

    def _ping_database(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.pool.run("SELECT 1")
        return {"status": "ok", "latencyMs": _ms_since(started)}

    def _database_detail(self) -> dict[str, Any]:
        result = self._ping_database()
        stats = self.pool.stats()
        result["pool"] = {
            "max": stats.max_size,
            "open": stats.open,
            "inUse": stats.in_use,
            "idle": stats.idle,
            "waiting": stats.waiting,
            "replaced": stats.replaced,
        }
        return result

    def _ping_redis(self) -> dict[str, Any]:
        if not self.settings.enable_queues:
            return {"status": "disabled", "detail": "ENABLE_QUEUES=false: messages are sent inline"}
        started = time.perf_counter()
        self.redis.call(lambda client: client.ping())
        return {"status": "ok", "latencyMs": _ms_since(started)}

    def _queues(self) -> dict[str, Any]:
        pending = {str(status): 0 for status in _WAITING}
        oldest_s: float | None = None
        for status, count, age_s, _overdue_s in self.pool.run(PENDING_SQL):
            pending[status] = int(count)
            if status != MessageStatus.sending and age_s is not None:
                oldest_s = max(oldest_s or 0.0, float(age_s))
        dead = int(self.pool.run(DEAD_LETTERS_SQL)[0][0])
        return {
            "redis": self._redis_depths(),
            "status": "ok",
            "enabled": self.settings.enable_queues,
            "pending": pending,
            "retrying": pending[MessageStatus.retrying],
            "deadLetters": dead,
            "oldestWaitingAgeS": round(oldest_s, 3) if oldest_s is not None else None,
        }

    def _redis_depths(self) -> dict[str, Any] | None:
        """What Redis holds (transport); ``None`` when queues are off or Redis is down."""
        if not self.settings.enable_queues:
            return None
        queue = MessageQueue(self.redis.client, self.redis.prefix)
        try:
            depths = self.redis.call(lambda _client: queue.depths())
            dead_by_code = self.redis.call(lambda client: client.hgetall(counter_key(self.redis.prefix)))
        except RedisUnavailable:
            return None
        return {
            "deadLettersByCode": {str(code): int(n) for code, n in sorted(dead_by_code.items())},
            "readyConversational": depths.ready_conv,
            "readyBulk": depths.ready_bulk,
            "delayed": depths.delayed,
            "inflight": depths.inflight,
            "churchesWaiting": depths.churches_waiting,
        }

    # -- assembly ----------------------------------------------------------------------------------

    def _report(self, checks: dict[str, Callable[[], dict[str, Any]]], *, detailed: bool = False) -> Report:
        started = time.perf_counter()
        deadline = started + self.settings.health_timeout_ms / 1000
        futures: dict[str, Future[dict[str, Any]]] = {
            name: _executor.submit(check) for name, check in checks.items()
        }
        results: dict[str, Any] = {}
        for name, future in futures.items():
            try:
                results[name] = future.result(timeout=max(0.0, deadline - time.perf_counter()))
            except FutureTimeout:
                future.cancel()
                results[name] = {"status": "timeout", "timeoutMs": self.settings.health_timeout_ms}
            except Exception as exc:  # a failed check is an answer, not a crash
                results[name] = {"status": "error", "error": type(exc).__name__}
        results["environment"] = {
            "status": "ok",
            "appEnv": str(self.settings.app_env),
            # How `send` delivers right now: through the queue, or inline (queues off, or Redis down).
            "sendMode": "queued" if self.settings.enable_queues and results["redis"]["status"] == "ok" else "inline",
        }
        if detailed:
            results["environment"].update(
                {"version": common.__version__, "python": platform.python_version()}
            )
        results["uptime"] = {
            "status": "ok",
            "seconds": round(time.monotonic() - _started_monotonic, 3),
            "startedAt": _started_at.isoformat(timespec="milliseconds"),
        }
        status = _overall(results)
        body = {
            "status": status,
            "timestamp": _now_iso(),
            "responseTime": _ms_since(started),
            "checks": results,
        }
        return Report(body, 503 if status == UNHEALTHY else 200)


def _overall(results: dict[str, Any]) -> str:
    if results["database"]["status"] != "ok":
        return UNHEALTHY
    if results["redis"]["status"] not in ("ok", "disabled"):
        return DEGRADED
    if "queues" in results and results["queues"]["status"] != "ok":
        return DEGRADED
    return HEALTHY


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
