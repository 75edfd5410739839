"""Verified API keys cached in Redis, so the hot path reads no ``api_keys`` row.

One entry per key prefix, ``{REDIS_KEY_PREFIX}:auth:<prefix>`` → ``{"k": key id, "c": church id,
"h": sha256 of the key (hex)}``, with ``AUTH_CACHE_TTL_S`` (default 60 s) to live. An entry says "this
prefix was an active key of this church, with this hash, when it was cached"; ``authenticate``
hashes the presented key and compares in constant time, so an entry never lets a wrong key in, and
a mismatch is a 401 without touching PostgreSQL (prefixes are unique; a key's hash never changes).

Revocation (``common.auth.keys.revoke_key``): commit ``revoked_at`` in PostgreSQL, *then* delete the entry.
The race to close is a concurrent fill: a request that read the row before the revoke committed could
write the stale entry *after* the revoke's delete and keep the key alive for a TTL. We close it by
re-checking on fill, not with a generation counter:

    fill:    read row (active) ── SET entry ── re-read row ── still active? keep : DEL entry
    revoke:                    COMMIT revoked_at ── DEL entry

If the fill's re-read does not see the revoke, the revoke committed after that re-read began, hence
after the fill's SET had been acknowledged, and the revoke's DEL (issued after its COMMIT returned)
removes the entry. If the re-read does see it, the fill deletes its own entry. Either way no entry
outlives a committed revoke by more than the two round trips in flight. A fill costs one more indexed
query, only on a miss (at most once per TTL per key and process under steady load); the hot path is one
GET. We chose this over a per-prefix generation because it keeps no extra Redis state whose loss
(eviction, a flushed or replaced Redis) could let a stale fill through, and its argument rests only on
PostgreSQL's commit order.

What the TTL bounds: a revoke while Redis was unreachable (its DEL failed; the revoke still succeeds
and says so in the log), a church deleted without ``forget`` being called, an entry written by a fill
whose own DEL failed. With Redis down or its breaker open every lookup goes to PostgreSQL: keys keep
working, only slower. ``AUTH_CACHE_TTL_S=0`` (or ``ENABLE_QUEUES=false``: no Redis) turns the cache off.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis

from common.db.pool import Connection, Pool
from common.redis_client import RedisGate, RedisUnavailable

if TYPE_CHECKING:
    from common.runtime import Runtime

logger = logging.getLogger("koinonia.auth")

LOOKUP_SQL = """
SELECT k.id::text, k.church_id::text, k.key_hash
FROM api_keys k JOIN churches c ON c.id = k.church_id
WHERE k.prefix = :prefix AND k.revoked_at IS NULL AND c.deleted_at IS NULL
"""


@dataclass(frozen=True)
class ActiveKey:
    """An active key of a live church, as PostgreSQL (or the cache, on its behalf) knows it."""

    key_id: str
    church_id: str
    key_hash: bytes

    def encode(self) -> str:
        return json.dumps({"k": self.key_id, "c": self.church_id, "h": self.key_hash.hex()})

    @classmethod
    def decode(cls, raw: str) -> ActiveKey | None:
        try:
            data = json.loads(raw)
            return cls(key_id=str(data["k"]), church_id=str(data["c"]), key_hash=bytes.fromhex(data["h"]))
        except (ValueError, TypeError, KeyError):
            return None  # not ours (or an older shape): a miss, and the fill overwrites it


def lookup_active(db: Pool | Connection, prefix: str) -> ActiveKey | None:
    """The active key with this prefix, from PostgreSQL (``None``: unknown, revoked or church deleted)."""
    rows = db.run(LOOKUP_SQL, prefix=prefix) or []
    return ActiveKey(rows[0][0], rows[0][1], bytes(rows[0][2])) if rows else None


class KeyCache:
    """``auth:<prefix>`` entries in one deployment's Redis key space (see the module docstring)."""

    def __init__(self, gate: RedisGate, ttl_s: int) -> None:
        self.gate = gate
        self.ttl_s = ttl_s

    def entry_key(self, prefix: str) -> str:
        return self.gate.key("auth", prefix)

    def get(self, prefix: str) -> ActiveKey | None:
        """The cached key, or ``None`` on a miss or when Redis is unavailable (then ask PostgreSQL)."""
        key = self.entry_key(prefix)
        try:
            raw = self.gate.call(lambda client: client.get(key))
        except (RedisUnavailable, redis.RedisError):
            return None
        return ActiveKey.decode(raw) if isinstance(raw, str) else None

    def fill(self, pool: Pool, prefix: str, active: ActiveKey) -> None:
        """Cache ``active`` (just read from PostgreSQL), then re-check the row; drop the entry if it changed."""
        key, value, ttl = self.entry_key(prefix), active.encode(), self.ttl_s
        try:
            self.gate.call(lambda client: client.set(key, value, ex=ttl))
        except (RedisUnavailable, redis.RedisError):
            return  # nothing was written, nothing to re-check
        try:
            again = lookup_active(pool, prefix)
        except BaseException:
            self.forget(prefix)  # could not re-check (PostgreSQL went away): do not leave an unchecked entry
            raise
        if again is None or again != active:
            self.forget(prefix)

    def forget(self, *prefixes: str) -> bool:
        """Delete the entries; ``False`` if Redis could not be told (the TTL then bounds their life)."""
        if not prefixes:
            return True
        keys = [self.entry_key(p) for p in prefixes]
        try:
            self.gate.call(lambda client: client.delete(*keys))
        except (RedisUnavailable, redis.RedisError) as exc:
            logger.warning("auth cache: could not drop %d entr(ies): %s", len(keys), type(exc).__name__)
            return False
        return True


def key_cache(rt: Runtime) -> KeyCache | None:
    """The cache this process reads through, or ``None`` when it is off (TTL 0, or no Redis at all)."""
    if rt.settings.auth_cache_ttl_s <= 0 or not rt.settings.enable_queues:
        return None
    return KeyCache(rt.redis, rt.settings.auth_cache_ttl_s)


def invalidation_cache(rt: Runtime) -> KeyCache | None:
    """The cache to delete from after a revoke: even with the TTL set to 0 here, other processes may cache."""
    if not rt.settings.enable_queues:
        return None
    return KeyCache(rt.redis, rt.settings.auth_cache_ttl_s)
