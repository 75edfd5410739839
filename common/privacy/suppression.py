"""Erased people who had opted out stay unreachable: a keyed hash of their number, nothing else.

When a person who had opted out of a church asks to be erased, their opt-out rows go with everything
else, but the church may later re-add the number (a contact import, a typed ``to``). So the deletion
keeps the number's lookup hash (common/privacy/crypto.py ``lookup_hash``: ``HMAC-SHA256(LOOKUP_KEY,
"<church id>:<E.164>")``) in ``erasure_suppressions`` (migration 0007), and ``accept``
(common/send/service.py ``_opted_out``) treats a recipient whose hash is there as opted out.

- The same hash as ``contacts.phone_hash``, ``messages.to_hash`` and ``opt_outs.address_hash`` of that
  number: a suppression can be matched against those columns in SQL alone. ``LOOKUP_KEY`` is a secret
  of its own, so the table alone (a dump, a backup) cannot be brute-forced over the ~10^10 numbers of a
  country, as a plain SHA-256 could; and since it is not derived from ``ENCRYPTION_KEY``, rotating the
  encryption key (``koinonia rotate-key``) leaves every suppression in force.
- The church id is inside the hash: the same number erased from two churches gives two unrelated
  values, so the table cannot link a person across churches.
- Only people who had opted out (``opt_outs`` row for the number, ``sms``) are kept. Anyone else who
  asks for erasure leaves no trace: a church that re-adds them later is starting over, which is what
  erasure means. (Keeping everyone's hash would turn "erase me" into "remember me forever".)
- The person's own START (a keyword text to the church) lifts it, as it lifts an ordinary opt-out
  (common/compliance/opt_outs.py ``opt_in``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence

from common.db.pool import Connection
from common.privacy import crypto

_RECORD_SQL = """
INSERT INTO erasure_suppressions (church_id, channel, address_hmac)
VALUES (CAST(:c AS uuid), :channel, :h)
ON CONFLICT DO NOTHING
RETURNING 1
"""

_MATCH_SQL = """
SELECT address_hmac FROM erasure_suppressions
WHERE church_id = CAST(:c AS uuid) AND channel = :channel AND address_hmac = ANY(CAST(:hs AS bytea[]))
"""

_LIFT_SQL = """
DELETE FROM erasure_suppressions
WHERE church_id = CAST(:c AS uuid) AND channel = :channel AND address_hmac = :h
RETURNING 1
"""

_ANY_SQL = "SELECT EXISTS (SELECT 1 FROM erasure_suppressions WHERE church_id = CAST(:c AS uuid))"


def address_hmac(church_id: str, address: str, *, key: bytes | None = None) -> bytes:
    """The keyed hash this church keeps for an erased, opted-out address: its lookup hash (32 bytes).

    ``key``: a lookup key other than the configured ``LOOKUP_KEY`` (the same HMAC, under that key).
    """
    if key is None:
        return crypto.lookup_hash(church_id, address)
    return hmac.new(key, f"{church_id}:{address}".encode(), hashlib.sha256).digest()


def record(conn: Connection, church_id: str, address: str, *, channel: str = "sms") -> bool:
    """Keep the address suppressed for this church; ``True`` if it was not already."""
    return bool(conn.run(_RECORD_SQL, c=church_id, channel=channel, h=address_hmac(church_id, address)))


def matching(conn: Connection, church_id: str, addresses: Sequence[str], *, channel: str = "sms") -> set[str]:
    """Which of ``addresses`` this church erased while they were opted out."""
    if not addresses:
        return set()
    by_hash = dict(zip(crypto.lookup_hashes(church_id, addresses), addresses, strict=True))
    rows = conn.run(_MATCH_SQL, c=church_id, channel=channel, hs=list(by_hash))
    return {by_hash[bytes(row[0])] for row in rows}


def is_suppressed(conn: Connection, church_id: str, address: str, *, channel: str = "sms") -> bool:
    """Is this address kept unreachable for this church (one query, no key needed, when it has none)?"""
    if not conn.run(_ANY_SQL, c=church_id)[0][0]:
        return False
    return bool(matching(conn, church_id, [address], channel=channel))


def lift(conn: Connection, church_id: str, address: str, *, channel: str = "sms") -> bool:
    """The person opted back in themselves: forget the suppression; ``True`` if there was one."""
    if not conn.run(_ANY_SQL, c=church_id)[0][0]:
        return False  # the common case: no hash to compute (and no key needed)
    return bool(conn.run(_LIFT_SQL, c=church_id, channel=channel, h=address_hmac(church_id, address)))
