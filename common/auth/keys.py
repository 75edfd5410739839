"""A church's API keys: create (the key is shown once), list (never a secret or hash), revoke.

Several keys per church make rotation painless: create the new key, move the apps over, revoke the old
one. Each create and revoke writes its audit entry (``api_key.created`` / ``api_key.revoked``, target
the key id) in the same transaction. Every statement names the church in its ``WHERE``: another church's
key id is exactly as unknown as one that never existed.

Concurrency: create and revoke lock the church row (``FOR NO KEY UPDATE``: it does not block the
foreign-key checks of ordinary inserts), so two revokes at once cannot both see "another key is still
active" and leave the church with none, and no key is made for a church being deleted meanwhile.
A revoke deletes the key's cache entry after its commit (``common.auth.cache`` explains the order).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from common import audit
from common.api_errors import Conflict, NotFound
from common.auth.api_keys import issue_key
from common.auth.cache import KeyCache
from common.db.pool import Connection, Pool
from common.ids import uuid7

logger = logging.getLogger("koinonia.auth")

max_active_keys = 10
max_name_length = 100
default_name = "default"

_COLUMNS = "id::text, name, prefix, created_at, last_used_at, revoked_at"

_LOCK_CHURCH_SQL = "SELECT 1 FROM churches WHERE id = CAST(:church_id AS uuid) AND deleted_at IS NULL FOR NO KEY UPDATE"
_CHURCH_EXISTS_SQL = "SELECT 1 FROM churches WHERE id = CAST(:church_id AS uuid) AND deleted_at IS NULL"
_COUNT_ACTIVE_SQL = "SELECT count(*) FROM api_keys WHERE church_id = CAST(:church_id AS uuid) AND revoked_at IS NULL"
_INSERT_SQL = f"""
INSERT INTO api_keys (id, church_id, prefix, key_hash, name)
VALUES (CAST(:id AS uuid), CAST(:church_id AS uuid), :prefix, :key_hash, :name)
RETURNING {_COLUMNS}
"""
_LIST_SQL = f"SELECT {_COLUMNS} FROM api_keys WHERE church_id = CAST(:church_id AS uuid) ORDER BY created_at DESC, id DESC"
_GET_SQL = f"SELECT {_COLUMNS} FROM api_keys WHERE id = CAST(:id AS uuid) AND church_id = CAST(:church_id AS uuid)"
_CHURCH_OF_KEY_SQL = "SELECT church_id::text FROM api_keys WHERE id = CAST(:id AS uuid)"
_REVOKE_SQL = f"""
UPDATE api_keys SET revoked_at = now()
WHERE id = CAST(:id AS uuid) AND church_id = CAST(:church_id AS uuid) AND revoked_at IS NULL
RETURNING {_COLUMNS}
"""
_PREFIXES_SQL = "SELECT prefix FROM api_keys WHERE church_id = CAST(:church_id AS uuid)"


@dataclass(frozen=True)
class KeyInfo:
    """What anyone may see of a key: never the key, never its hash."""

    id: str
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row: list[Any]) -> KeyInfo:
        return cls(row[0], row[1], row[2], row[3], row[4], row[5])

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "active": self.active,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass(frozen=True)
class CreatedKey:
    info: KeyInfo
    key: str  # the whole key: returned to the caller once, stored nowhere

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.info.id,
            "name": self.info.name,
            "prefix": self.info.prefix,
            "key": self.key,
            "created_at": self.info.created_at.isoformat(),
        }


@dataclass(frozen=True)
class RevokeResult:
    info: KeyInfo
    changed: bool  # False: it was already revoked (nothing written)
    cache_dropped: bool  # False: Redis could not be told; the entry lives at most AUTH_CACHE_TTL_S more


def is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True


def church_exists(pool: Pool, church_id: str) -> bool:
    return is_uuid(church_id) and bool(pool.run(_CHURCH_EXISTS_SQL, church_id=church_id))


def create_key(pool: Pool, church_id: str, *, name: str = default_name, actor: str) -> CreatedKey:
    """A new active key for the church; ``NotFound`` for an unknown church, ``Conflict`` past the cap."""
    issued = issue_key()
    with pool.transaction() as conn:
        _lock_church(conn, church_id)
        active = conn.run(_COUNT_ACTIVE_SQL, church_id=church_id)[0][0]
        if active >= max_active_keys:
            raise Conflict(
                "too_many_keys",
                f"this church already has {active} active keys (the most is {max_active_keys});"
                " revoke one it no longer uses first",
            )
        key_id = str(uuid7())
        row = conn.run(_INSERT_SQL, id=key_id, church_id=church_id, prefix=issued.prefix, key_hash=issued.key_hash, name=name)[0]
        audit.record(conn, "api_key.created", actor=actor, church_id=church_id, target=key_id, details={"prefix": issued.prefix})
    return CreatedKey(KeyInfo.from_row(row), issued.key)


def list_keys(pool: Pool, church_id: str) -> list[KeyInfo]:
    """The church's keys, newest first, revoked ones included (``active: false``)."""
    return [KeyInfo.from_row(r) for r in pool.run(_LIST_SQL, church_id=church_id)]


def church_of_key(pool: Pool, key_id: str) -> str | None:
    """The church a key belongs to (operator tools that are given only a key id)."""
    if not is_uuid(key_id):
        return None
    rows = pool.run(_CHURCH_OF_KEY_SQL, id=key_id)
    return str(rows[0][0]) if rows else None


def revoke_key(pool: Pool, church_id: str, key_id: str, *, actor: str, cache: KeyCache | None) -> RevokeResult:
    """Revoke one of the church's keys (idempotent). ``NotFound`` if it is not the church's key;
    ``Conflict`` if it is the church's last active key (make another first)."""
    if not is_uuid(key_id):
        raise NotFound("not_found", f"no API key {key_id}")
    with pool.transaction() as conn:
        _lock_church(conn, church_id, missing=f"no API key {key_id}")
        rows = conn.run(_GET_SQL, id=key_id, church_id=church_id)
        if not rows:
            raise NotFound("not_found", f"no API key {key_id}")
        current = KeyInfo.from_row(rows[0])
        if not current.active:
            revoked, changed = current, False
        else:
            if conn.run(_COUNT_ACTIVE_SQL, church_id=church_id)[0][0] <= 1:
                raise Conflict(
                    "last_active_key",
                    "this is the church's last active API key; create another first (POST /keys, or koinonia keys"
                    " create), move your apps to it, then revoke this one",
                )
            revoked, changed = KeyInfo.from_row(conn.run(_REVOKE_SQL, id=key_id, church_id=church_id)[0]), True
            audit.record(conn, "api_key.revoked", actor=actor, church_id=church_id, target=key_id,
                         details={"prefix": current.prefix})  # fmt: skip
    # After COMMIT, never before: see common.auth.cache. Repeated on an idempotent revoke, so running it
    # again also clears an entry a first revoke could not reach (Redis was down).
    dropped = cache.forget(current.prefix) if cache is not None else True
    if not dropped:
        logger.warning("api key revoked but its cache entry could not be dropped; it expires within the cache TTL",
                       extra={"fields": {"key_id": key_id}})  # fmt: skip
    return RevokeResult(revoked, changed, dropped)


def forget_church(pool: Pool, church_id: str, cache: KeyCache | None) -> bool:
    """Drop every cached key of a church (call after committing its deletion); ``False`` if Redis was away."""
    if cache is None:
        return True
    return cache.forget(*[str(r[0]) for r in pool.run(_PREFIXES_SQL, church_id=church_id)])


def _lock_church(conn: Connection, church_id: str, *, missing: str | None = None) -> None:
    if not is_uuid(church_id) or not conn.run(_LOCK_CHURCH_SQL, church_id=church_id):
        raise NotFound("not_found", missing or f"no church {church_id}")
