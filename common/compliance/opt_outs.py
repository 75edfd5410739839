"""A person's opt-out state per church, and its history: every change is kept with time and source.

``opt_outs`` holds the current state (one row while opted out); ``opt_out_events`` is append-only:
``opt_out``, ``opt_in`` and ``flagged`` (a reply that reads like an opt-out but is no keyword, for the
church to review). Sources: ``keyword`` (the person texted it), ``carrier_40300`` (the carrier refused
a send because the person is blocked; common/messages/store.py), ``api``, ``admin``.

Every ``opt_out`` and ``opt_in`` event is audited (``opt_out.recorded`` / ``opt_in.recorded``, target
``opt_out_event:<id>``, the source in the details, never the number) by a trigger on
``opt_out_events`` (migration 0007), in the same transaction, whichever path writes the event. An
opt-in also lifts an erasure suppression (common/privacy/suppression.py): a person erased while opted
out who texts START wants the church's texts again.

The number is never stored as it is: each row holds it sealed (``address_enc``, kind ``address``) and
its lookup hash (``address_hash``, common/privacy/crypto.py), and every lookup or delete goes by the
hash. The caller passes the address in the form it is stored everywhere (E.164 for a phone number).
"""

from __future__ import annotations

from common.db.pool import Connection
from common.privacy import crypto, suppression

_OPT_OUT_SQL = """
WITH changed AS (
    INSERT INTO opt_outs (church_id, address_enc, address_hash, channel, source)
    VALUES (CAST(:c AS uuid), :a, :h, :channel, :source)
    ON CONFLICT DO NOTHING
    RETURNING 1
), logged AS (
    INSERT INTO opt_out_events (church_id, address_enc, address_hash, channel, action, source, keyword)
    VALUES (CAST(:c AS uuid), :a, :h, :channel, 'opt_out', :source, :keyword)
)
SELECT count(*) FROM changed
"""

_OPT_IN_SQL = """
WITH changed AS (
    DELETE FROM opt_outs WHERE church_id = CAST(:c AS uuid) AND address_hash = :h AND channel = :channel
    RETURNING 1
), logged AS (
    INSERT INTO opt_out_events (church_id, address_enc, address_hash, channel, action, source, keyword)
    VALUES (CAST(:c AS uuid), :a, :h, :channel, 'opt_in', :source, :keyword)
)
SELECT count(*) FROM changed
"""

_FLAG_SQL = """
INSERT INTO opt_out_events (church_id, address_enc, address_hash, channel, action, source, keyword)
VALUES (CAST(:c AS uuid), :a, :h, :channel, 'flagged', :source, :keyword)
"""


def opt_out(conn: Connection, church_id: str, address: str, *, source: str, keyword: str | None = None,
            channel: str = "sms") -> bool:  # fmt: skip
    """Record an opt-out (always logged); ``True`` if the person was opted in until now."""
    rows = conn.run(_OPT_OUT_SQL, c=church_id, **_sealed(church_id, address), channel=channel, source=source, keyword=keyword)
    return int(rows[0][0]) > 0


def opt_in(conn: Connection, church_id: str, address: str, *, source: str, keyword: str | None = None,
           channel: str = "sms") -> bool:  # fmt: skip
    """Record an opt-in (always logged); ``True`` if the person was opted out (or erasure-suppressed) until now."""
    rows = conn.run(_OPT_IN_SQL, c=church_id, **_sealed(church_id, address), channel=channel, source=source, keyword=keyword)
    lifted = suppression.lift(conn, church_id, address, channel=channel)
    return int(rows[0][0]) > 0 or lifted


def flag(conn: Connection, church_id: str, address: str, *, reason: str | None, channel: str = "sms") -> None:
    """A reply that may mean "stop" without being a keyword: logged for the church to review."""
    conn.run(_FLAG_SQL, c=church_id, **_sealed(church_id, address), channel=channel, source="reply", keyword=reason)


def _sealed(church_id: str, address: str) -> dict[str, bytes]:
    """The address as every opt-out row holds it: sealed (``a``) and its lookup hash (``h``)."""
    ring = crypto.keyring()
    return {"a": ring.seal(address, "address"), "h": ring.lookup_hash(church_id, address)}
