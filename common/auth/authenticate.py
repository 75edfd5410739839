"""Who is calling: a church's API key in ``Authorization: Bearer ...``."""

from __future__ import annotations

from dataclasses import dataclass

from common.api_errors import Unauthorized
from common.auth.api_keys import key_matches, parse_key
from common.db.pool import Pool

LOOKUP_SQL = """
SELECT k.church_id::text, k.key_hash
FROM api_keys k JOIN churches c ON c.id = k.church_id
WHERE k.prefix = :prefix AND k.revoked_at IS NULL AND c.deleted_at IS NULL
"""


@dataclass(frozen=True)
class Caller:
    church_id: str


def authenticate(pool: Pool, authorization: str | None) -> Caller:
    """The church behind the key, or ``Unauthorized`` (unknown, malformed and revoked keys alike)."""
    scheme, _, presented = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not presented:
        raise Unauthorized("unauthorized", "send the church's API key as 'Authorization: Bearer kn_...'")
    prefix = parse_key(presented)
    if prefix is not None:
        for church_id, key_hash in pool.run(LOOKUP_SQL, prefix=prefix):
            if key_matches(presented.strip(), bytes(key_hash)):
                return Caller(church_id=church_id)
    raise Unauthorized("unauthorized", "the API key is unknown or revoked; create a new key for this church")
