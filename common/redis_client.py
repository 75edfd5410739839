"""Redis, the transport: short timeouts and a circuit breaker around every call.

Redis is never the source of truth, so when it is slow or gone the callers fall back (send inline,
read PostgreSQL) instead of waiting. After ``failure_threshold`` consecutive failures the breaker opens
for ``open_s`` seconds: calls fail at once with ``RedisUnavailable`` without touching the network. Then
one call is let through (half-open); its success closes the breaker.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from typing import TypeVar

import redis

from common.config import get_settings

T = TypeVar("T")

socket_timeout_s = 0.5
connect_timeout_s = 0.5


class RedisUnavailable(Exception):
    """Redis did not answer in time, refused, or the breaker is open."""


class RedisGate:
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "kq",
        failure_threshold: int = 3,
        open_s: float = 2.0,
        timeout_s: float = socket_timeout_s,
    ) -> None:
        self.prefix = prefix
        self.client: redis.Redis = redis.Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=min(timeout_s, connect_timeout_s),
            health_check_interval=30,
            decode_responses=True,
        )
        self._failure_threshold = failure_threshold
        self._open_s = open_s
        self._failures = 0
        self._open_until = 0.0
        self._lock = threading.Lock()

    def key(self, *parts: str) -> str:
        """A key in this deployment's hash slot: ``{prefix}:a:b`` (Lua may touch them together)."""
        return ":".join((f"{{{self.prefix}}}", *parts))

    @property
    def breaker_open(self) -> bool:
        return time.monotonic() < self._open_until

    def call(self, operation: Callable[[redis.Redis], T]) -> T:
        """Run ``operation(client)``; ``RedisUnavailable`` if Redis fails or the breaker is open."""
        if self.breaker_open:
            raise RedisUnavailable("Redis circuit breaker is open after repeated failures")
        try:
            result = operation(self.client)
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            with self._lock:
                self._failures += 1
                if self._failures >= self._failure_threshold:
                    self._open_until = time.monotonic() + self._open_s
            raise RedisUnavailable(f"Redis unavailable: {type(exc).__name__}") from exc
        with self._lock:
            self._failures = 0
            self._open_until = 0.0
        return result

    def close(self) -> None:
        self.client.close()


@functools.cache
def get_redis() -> RedisGate:
    settings = get_settings()
    return RedisGate(settings.redis_url, prefix=settings.redis_key_prefix, timeout_s=settings.redis_timeout_ms / 1000)
