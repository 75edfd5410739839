"""Who is calling: a church's API key in ``Authorization: Bearer ...``.

With a ``KeyCache`` the hot path is one Redis GET and a constant-time hash comparison; a miss (or Redis
down) reads PostgreSQL and fills the cache (``common.auth.cache`` explains why a fill can never revive a
revoked key). ``last_used_at`` is written at most once a minute per key and process, and the statement
itself only changes a row last touched over a minute ago, so busy keys cost no write per request.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from common.api_errors import Unauthorized
from common.auth.api_keys import hash_key, parse_key
from common.auth.cache import LOOKUP_SQL, KeyCache, key_cache, lookup_active
from common.db.pool import DatabaseUnavailable, Pool

if TYPE_CHECKING:
    from common.runtime import Runtime

__all__ = ["LOOKUP_SQL", "Caller", "authenticate", "authenticate_runtime", "bearer_token"]

logger = logging.getLogger("koinonia.auth")

MISSING = "send the church's API key as 'Authorization: Bearer kn_...'"
UNKNOWN = "the API key is unknown or revoked; create a new key for this church"

touch_every_s = 60.0
_TOUCH_SQL = """
UPDATE api_keys SET last_used_at = now()
WHERE id = CAST(:id AS uuid) AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
"""
_touched: dict[str, float] = {}
_touch_lock = threading.Lock()
_touched_max = 10_000


@dataclass(frozen=True)
class Caller:
    church_id: str
    key_id: str | None = None
    prefix: str | None = None

    @property
    def actor(self) -> str:
        """How the audit log names this caller: ``church:<key prefix>`` (never the key)."""
        return f"church:{self.prefix}" if self.prefix else "church"


def bearer_token(authorization: str | None) -> str | None:
    """The credential in ``Authorization: Bearer <credential>``, or ``None``."""
    scheme, _, presented = (authorization or "").partition(" ")
    presented = presented.strip()
    if scheme.lower() != "bearer" or not presented:
        return None
    return presented


def authenticate(pool: Pool, authorization: str | None, *, cache: KeyCache | None = None) -> Caller:
    """The church behind the key, or ``Unauthorized`` (unknown, malformed and revoked keys alike)."""
    presented = bearer_token(authorization)
    if presented is None:
        raise Unauthorized("unauthorized", MISSING)
    prefix = parse_key(presented)
    if prefix is None:
        raise Unauthorized("unauthorized", UNKNOWN)
    digest = hash_key(presented)
    if cache is not None:
        cached = cache.get(prefix)
        if cached is not None:
            if not hmac.compare_digest(digest, cached.key_hash):
                raise Unauthorized("unauthorized", UNKNOWN)
            _touch(pool, cached.key_id)
            return Caller(cached.church_id, cached.key_id, prefix)
    active = lookup_active(pool, prefix)
    if active is None or not hmac.compare_digest(digest, active.key_hash):
        raise Unauthorized("unauthorized", UNKNOWN)
    if cache is not None:
        cache.fill(pool, prefix, active)
    _touch(pool, active.key_id)
    return Caller(active.church_id, active.key_id, prefix)


def authenticate_runtime(rt: Runtime, authorization: str | None) -> Caller:
    """``authenticate`` through this process's pool and key cache (what the HTTP functions call)."""
    return authenticate(rt.pool, authorization, cache=key_cache(rt))


def _touch(pool: Pool, key_id: str) -> None:
    """Record use, at most once per ``touch_every_s`` per key in this process (best effort)."""
    now = time.monotonic()
    with _touch_lock:
        last = _touched.get(key_id)
        if last is not None and now - last < touch_every_s:
            return
        if len(_touched) >= _touched_max:
            _touched.clear()
        _touched[key_id] = now
    try:
        pool.run(_TOUCH_SQL, id=key_id)
    except DatabaseUnavailable as exc:
        logger.warning("api key last_used_at not recorded: %s", type(exc).__name__)
