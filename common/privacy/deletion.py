"""Erase a person (by phone number) from one church, or delete a whole church. Idempotent, in batches.

**A person** (``delete_person``): everything that says who they are or what was said goes; what the
church is billed for stays, without them.

- Messages to them stay as billing facts (church, broadcast, channel, lane, purpose, encoding, segments,
  status, attempts, cost, times): the sealed recipient, its lookup hash, the sealed body, subject and
  HTML (``to_enc``, ``to_hash``, ``body_enc``, ``subject_enc``, ``html_body_enc``) become NULL, which is
  what "erased" means on a message (migration 0008); media, provider id, recipient's carrier, error
  detail and time zone become NULL too. Their attempt rows (codes and times only) stay. Usage
  (common/billing/usage.py) is unchanged: it reads none of these.
- Messages still pending can never go out: ``scheduled``/``queued`` become ``suppressed`` and
  ``retrying``/``sending`` become ``failed`` (the carrier was already asked, so they keep counting as
  usage exactly as before), all with ``last_error_code = 'erased'``; their ids leave Redis. A dead
  letter of an erased message is never replayed (common/dead_letters/replay.py skips a NULL ``to_enc``).
  The one window left is a batch a consumer already handed to the carrier: its outcome write is fenced
  off (status is no longer ``sending``), but the carrier request itself may be in flight.
- Dead letters (live and archived) keep their reason, code and attempt history, rebuilt from the known
  non-identifying keys only. Carrier receipts of those messages are deleted (provider id, the
  recipient's carrier). ``webhook_events`` holds only Telnyx event ids, types and times, with no link to
  a message or a person: nothing to erase there.
- Broadcasts: every string of the stored answer (``broadcasts.response_enc``, sealed JSON:
  ``recipients[].to``, ``invalid[].value``) that is their number (any format: its national digits) or
  their contact's email becomes ``'erased'``; the answer is opened, scrubbed and sealed again. Answers
  are found through the person's messages, plus one pass over the church's answers that kept invalid
  recipients (``response_has_invalid``: a mistyped number has no message to find it by); only those
  are opened. A single-recipient broadcast's ``request_hash`` (a SHA-256 of a request body that held
  the number and the text) is replaced by a fixed marker, so a retry with that Idempotency-Key gets a
  409 instead of the old answer.
- Their contact (and group memberships), conversations with every text in them, opt-out state and
  opt-out history are deleted. If they had opted out, the number's lookup hash is kept
  (common/privacy/suppression.py) so the church cannot text them again by re-adding the number.
- The audit log gets ``data.deleted`` (target ``contact:<id>`` or ``person``; details: counts only). A
  run that finds nothing (a repeat) changes nothing and writes no entry.
- Nothing is found by plaintext (there is none): the person's contact by ``contacts.phone_hash``, and
  their messages, opt-outs and conversations by the lookup hashes (common/privacy/crypto.py) of the
  number and of the contact's email addresses (opened from ``contacts.email_enc``). Messages are found
  by ``to_hash`` within the church (no index on it, on purpose: the send path inserts 20,000 rows at a
  time and a deletion is rare), one scan of the church's messages per batch.

Messages go in batches of ``batch_size`` (one transaction each, with their dead letters, receipts and
broadcasts); the rest, and a last sweep for messages accepted meanwhile, in one final transaction with
the audit entry. Interrupted, it is simply run again.

**A church** (``delete_church``, operators only): its billing facts go to ``usage_archive`` (per month
and channel: messages, segments, billed messages and segments by the usage rule), then every row of
every table with a ``church_id`` (found in the catalog, so tables added later are included) is deleted
in batches, the largest first, with progress; then its Redis state (queued ids, ready lists, ring
entries, cached API keys, its numbers' rate buckets, any key naming the church); then the church row
and the audit entry, in one transaction. ``audit_log`` and ``usage_archive`` are kept (no foreign key).
The first transaction marks the church deleted (its API keys stop working, inbound texts to its numbers
are ignored), so nothing new arrives while it runs; a run cut short is resumed by running it again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

import phonenumbers
import redis
from phonenumbers import NumberParseException

from common import audit
from common.analytics.events import emit_to
from common.analytics.types import Event, EventType
from common.api_errors import NotFound, Unprocessable
from common.auth.cache import KeyCache
from common.billing.usage import BILLED_CONDITION_SQL
from common.db.pool import Connection, Pool
from common.phones import InvalidPhone, default_region, normalize
from common.privacy import crypto, suppression
from common.queue import CHANNELS, MessageQueue, QueueKeys, sender_id
from common.redis_client import RedisGate, RedisUnavailable

logger = logging.getLogger("koinonia.privacy")

ERASED = "erased"
"""The stored answers' recipients that were an erased person, and the ``last_error_code`` of their
cancelled messages (an erased message itself is its NULL ``to_enc``)."""
ERASED_REQUEST_HASH = hashlib.sha256(b"koinonia:erased request").digest()
"""``broadcasts.request_hash`` of a single-recipient broadcast whose recipient was erased."""

batch_size_default = 1000

_PENDING = "('scheduled', 'queued', 'retrying', 'sending')"
_ATTEMPTED = "('retrying', 'sending')"

_ERASE_MESSAGES_SQL = f"""
WITH target AS (
    SELECT m.id, m.provider_message_id, m.status IN {_PENDING} AS pending,
           m.status IN {_ATTEMPTED} AS attempted
    FROM messages m
    WHERE m.church_id = CAST(:c AS uuid) AND m.to_hash = ANY(CAST(:hashes AS bytea[]))
    ORDER BY m.id
    LIMIT :limit
    FOR UPDATE OF m
), by_provider AS (
    DELETE FROM carrier_receipts r USING target t WHERE r.provider_message_id = t.provider_message_id
    RETURNING r.provider_message_id
), by_message AS (
    DELETE FROM carrier_receipts r USING target t WHERE r.applied_at IS NULL AND r.message_id = t.id
    RETURNING r.provider_message_id
), erased AS (
    UPDATE messages m SET
        to_enc = NULL, to_hash = NULL, body_enc = NULL, subject_enc = NULL, html_body_enc = NULL, media_urls = NULL,
        provider_message_id = NULL, carrier = NULL, last_error_detail = NULL, recipient_tz = NULL,
        status = CASE WHEN t.attempted THEN 'failed' WHEN t.pending THEN 'suppressed' ELSE m.status END,
        last_error_code = CASE WHEN t.pending THEN '{ERASED}' ELSE m.last_error_code END,
        next_attempt_at = CASE WHEN t.pending THEN NULL ELSE m.next_attempt_at END,
        claim_token = CASE WHEN t.pending THEN NULL ELSE m.claim_token END,
        finalized_at = CASE WHEN t.pending THEN now() ELSE m.finalized_at END,
        lease_until = NULL, updated_at = now()
    FROM target t
    WHERE m.id = t.id
    RETURNING m.id::text AS id, t.pending, m.broadcast_id::text AS broadcast_id
)
SELECT e.id, e.pending, e.broadcast_id,
       (SELECT count(DISTINCT p) FROM (SELECT provider_message_id FROM by_provider
                                       UNION SELECT provider_message_id FROM by_message) AS x(p))
FROM erased e
"""

# Dead letters keep their history, rebuilt from the keys the writer puts there (common/messages/store.py),
# so nothing else that may ever land in it survives.
_SAFE_ATTEMPTS = """
CASE WHEN jsonb_typeof(d.attempts) = 'array' THEN coalesce((
    SELECT jsonb_agg(jsonb_build_object('attempt', a->'attempt', 'finished_at', a->'finished_at',
                                        'outcome', a->'outcome', 'error_code', a->'error_code',
                                        'http_status', a->'http_status') ORDER BY n)
    FROM jsonb_array_elements(d.attempts) WITH ORDINALITY AS e(a, n)), '[]'::jsonb)
ELSE '[]'::jsonb END
"""

_SCRUB_DEAD_LETTERS_SQL = f"""
WITH live AS (
    UPDATE dead_letters d SET attempts = {_SAFE_ATTEMPTS}
    WHERE d.message_id = ANY(CAST(:ids AS uuid[]))
    RETURNING 1
), archived AS (
    UPDATE dead_letters_archive d SET attempts = {_SAFE_ATTEMPTS}
    WHERE d.church_id = CAST(:c AS uuid) AND d.message_id = ANY(CAST(:ids AS uuid[]))
    RETURNING 1
)
SELECT (SELECT count(*) FROM live) + (SELECT count(*) FROM archived)
"""

_BROADCASTS_BY_ID_SQL = """
SELECT id::text, recipient_count, response_enc FROM broadcasts
WHERE church_id = CAST(:c AS uuid) AND id = ANY(CAST(:ids AS uuid[]))
ORDER BY id
FOR UPDATE
"""
# Invalid recipients are kept in the answer as typed, with no message row to find them by.
_BROADCASTS_WITH_INVALID_SQL = """
SELECT id::text, recipient_count, response_enc FROM broadcasts
WHERE church_id = CAST(:c AS uuid) AND response_has_invalid
ORDER BY id
FOR UPDATE
"""
_UPDATE_BROADCAST_SQL = """
UPDATE broadcasts SET response_enc = :r,
       request_hash = CASE WHEN recipient_count <= 1 AND request_hash IS NOT NULL THEN :marker ELSE request_hash END
WHERE id = CAST(:id AS uuid)
"""

_CONTACTS_SQL = """
SELECT id::text, email_enc FROM contacts WHERE church_id = CAST(:c AS uuid) AND phone_hash = :h ORDER BY id FOR UPDATE
"""
_DELETE_CONTACTS_SQL = """
WITH gm AS (SELECT count(*) AS n FROM group_members WHERE contact_id = ANY(CAST(:ids AS uuid[]))),
gone AS (DELETE FROM contacts WHERE id = ANY(CAST(:ids AS uuid[])) RETURNING 1)
SELECT (SELECT count(*) FROM gone), (SELECT n FROM gm)
"""
_DELETE_CONVERSATIONS_SQL = """
WITH conv AS (
    SELECT id FROM conversations
    WHERE church_id = CAST(:c AS uuid)
      AND (contact_hash = ANY(CAST(:hashes AS bytea[])) OR contact_id = ANY(CAST(:contacts AS uuid[])))
    ORDER BY id
    FOR UPDATE
), texts AS (SELECT count(*) AS n FROM conversation_messages WHERE conversation_id IN (SELECT id FROM conv)),
gone AS (DELETE FROM conversations WHERE id IN (SELECT id FROM conv) RETURNING 1)
SELECT (SELECT count(*) FROM gone), (SELECT n FROM texts)
"""
_OPTED_OUT_SQL = """
SELECT EXISTS (SELECT 1 FROM opt_outs WHERE church_id = CAST(:c AS uuid) AND channel = 'sms' AND address_hash = :h)
"""
_DELETE_OPT_OUTS_SQL = """
WITH state AS (
    DELETE FROM opt_outs WHERE church_id = CAST(:c AS uuid) AND address_hash = ANY(CAST(:hashes AS bytea[])) RETURNING 1
), history AS (
    DELETE FROM opt_out_events WHERE church_id = CAST(:c AS uuid) AND address_hash = ANY(CAST(:hashes AS bytea[]))
    RETURNING 1
)
SELECT (SELECT count(*) FROM state), (SELECT count(*) FROM history)
"""

_CHURCH_SQL = "SELECT deleted_at IS NOT NULL FROM churches WHERE id = CAST(:c AS uuid)"


class UnknownChurch(NotFound):
    def __init__(self, church_id: str) -> None:
        super().__init__("unknown_church", f"no church {church_id}; check the church id (a deleted church is gone too)")


def person_number(raw: Any) -> str:
    """The E.164 form of a number to erase (landlines and other numbers we would not text included)."""
    hint = "send the number as the church has it, e.g. +13125550142 or (312) 555-0142"
    if not isinstance(raw, str) or not raw.strip():
        raise Unprocessable("invalid_phone", f"phone is required: {hint}", field="phone")
    try:
        return normalize(raw)
    except InvalidPhone:
        pass
    try:
        number = phonenumbers.parse(raw.strip()[:40], default_region)
    except NumberParseException:
        raise Unprocessable("invalid_phone", f"phone is not a phone number; {hint}", field="phone") from None
    if not phonenumbers.is_possible_number(number):
        raise Unprocessable("invalid_phone", f"phone has the wrong number of digits; {hint}", field="phone")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def _national_digits(e164: str) -> str:
    return phonenumbers.national_significant_number(phonenumbers.parse(e164, None))


# -- a person ------------------------------------------------------------------------------------------------


@dataclass
class PersonDeletion:
    """What one ``delete_person`` run changed (all zero: there was nothing left to erase)."""

    messages: int = 0  # message rows erased (kept as billing facts)
    cancelled: int = 0  # of them, still pending: now suppressed/failed, never sent
    dead_letters: int = 0  # dead letters (live and archived) whose history was rebuilt
    receipts: int = 0  # carrier receipts deleted
    broadcasts: int = 0  # stored broadcast answers scrubbed
    conversations: int = 0
    conversation_messages: int = 0
    opt_outs: int = 0
    opt_out_events: int = 0
    contacts: int = 0
    group_memberships: int = 0
    suppression_added: bool = False  # they were opted out: this run kept a keyed hash of the number
    suppression_kept: bool = False  # the number stays unreachable for this church (added now or before)
    redis_removed: int = 0  # pending ids taken off the Redis queue
    redis_error: str | None = None
    contact_ids: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(
            (self.messages, self.dead_letters, self.receipts, self.broadcasts, self.conversations,
             self.conversation_messages, self.opt_outs, self.opt_out_events, self.contacts, self.suppression_added)
        )  # fmt: skip

    def counts(self) -> dict[str, int]:
        return {
            "messages": self.messages, "cancelled": self.cancelled, "dead_letters": self.dead_letters,
            "receipts": self.receipts, "broadcasts": self.broadcasts, "conversations": self.conversations,
            "conversation_messages": self.conversation_messages, "opt_outs": self.opt_outs,
            "opt_out_events": self.opt_out_events, "contacts": self.contacts,
            "group_memberships": self.group_memberships,
        }  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "erased": self.changed,
            "counts": self.counts(),
            "suppression_kept": self.suppression_kept,
        }
        if not self.changed:
            body["note"] = "nothing of this number was left to erase (already erased, or never here)"
        if self.redis_error:
            body["note_redis"] = (
                f"{self.redis_error}: cancelled messages stay queued in Redis until a consumer drops them"
                " (they can no longer be sent)"
            )
        return body


def delete_person(
    pool: Pool,
    church_id: str,
    phone: str,
    *,
    actor: str,
    redis: RedisGate | None = None,
    batch_size: int = batch_size_default,
    progress: Callable[[PersonDeletion], None] | None = None,
) -> PersonDeletion:
    """Erase one person (by phone number) from one church; see the module docstring. Safe to repeat.

    ``progress`` is called after every batch of messages (``report.messages`` so far).
    """
    e164 = person_number(phone)
    _require_church(pool, church_id, allow_deleted=False)
    national = _national_digits(e164)
    report = PersonDeletion()
    ring = crypto.keyring()
    phone_hash = ring.lookup_hash(church_id, e164)
    contacts = pool.run(
        "SELECT id::text, email_enc FROM contacts WHERE church_id = CAST(:c AS uuid) AND phone_hash = :h",
        c=church_id, h=phone_hash,
    )  # fmt: skip
    # The contact's email is theirs too (mail messages, mail opt-outs); read before the contact goes last.
    addresses = [e164, *sorted(_emails(contacts))]
    while True:
        with pool.transaction() as conn:
            erased, pending = _erase_message_batch(conn, church_id, addresses, national, batch_size, report)
        emit_to(pool, redis, [Event.messages(EventType.cancelled, pending)])  # common/analytics: never raises
        _remove_from_queue(redis, pending, report)
        if progress is not None:
            progress(report)
        if erased < batch_size:
            break
    with pool.transaction() as conn:
        # Messages accepted while the batches ran (a group send, say) go too, before the contact does.
        pending = []
        while True:
            erased, more = _erase_message_batch(conn, church_id, addresses, national, batch_size, report)
            pending += more
            if erased < batch_size:
                break
        _scrub_broadcasts(conn, church_id, _BROADCASTS_WITH_INVALID_SQL, {}, addresses, national, report)
        rows = conn.run(_CONTACTS_SQL, c=church_id, h=phone_hash)
        report.contact_ids = [r[0] for r in rows]
        addresses = sorted(set(addresses) | _emails(rows))
        hashes = crypto.lookup_hashes(church_id, addresses)
        if conn.run(_OPTED_OUT_SQL, c=church_id, h=phone_hash)[0][0]:
            report.suppression_added = suppression.record(conn, church_id, e164)
            report.suppression_kept = True
        else:
            report.suppression_kept = suppression.is_suppressed(conn, church_id, e164)
        state, history = conn.run(_DELETE_OPT_OUTS_SQL, c=church_id, hashes=hashes)[0]
        report.opt_outs, report.opt_out_events = int(state), int(history)
        threads, texts = conn.run(
            _DELETE_CONVERSATIONS_SQL, c=church_id, hashes=hashes, contacts=report.contact_ids
        )[0]
        report.conversations, report.conversation_messages = int(threads), int(texts)
        if report.contact_ids:
            contacts, memberships = conn.run(_DELETE_CONTACTS_SQL, ids=report.contact_ids)[0]
            report.contacts, report.group_memberships = int(contacts), int(memberships)
        if report.changed:
            audit.record(
                conn, "data.deleted", actor=actor, church_id=church_id,
                target=f"contact:{report.contact_ids[0]}" if report.contact_ids else "person",
                details={"scope": "person", **report.counts(), "suppression_kept": report.suppression_kept},
            )  # fmt: skip
    emit_to(pool, redis, [Event.messages(EventType.cancelled, pending)])
    _remove_from_queue(redis, pending, report)
    logger.info(
        "person erased" if report.changed else "person erasure found nothing to erase",
        extra={"fields": {"church_id": church_id, **report.counts(), "suppression_kept": report.suppression_kept}},
    )
    return report


def _erase_message_batch(
    conn: Connection, church_id: str, addresses: list[str], national: str, limit: int, report: PersonDeletion
) -> tuple[int, list[str]]:
    """One batch of the person's messages, with their dead letters, receipts and broadcasts.

    Returns how many were erased, and the ids of those that were still pending (to take off Redis).
    """
    rows = conn.run(_ERASE_MESSAGES_SQL, c=church_id, hashes=crypto.lookup_hashes(church_id, addresses), limit=limit)
    if not rows:
        return 0, []
    ids = [r[0] for r in rows]
    report.messages += len(rows)
    pending = [r[0] for r in rows if r[1]]
    report.cancelled += len(pending)
    report.receipts += int(rows[0][3])
    report.dead_letters += int(conn.run(_SCRUB_DEAD_LETTERS_SQL, c=church_id, ids=ids)[0][0])
    broadcasts = sorted({r[2] for r in rows if r[2]})
    if broadcasts:
        _scrub_broadcasts(conn, church_id, _BROADCASTS_BY_ID_SQL, {"ids": broadcasts}, addresses, national, report)
    return len(rows), pending


def _scrub_broadcasts(
    conn: Connection, church_id: str, sql: str, params: dict[str, Any], addresses: list[str], national: str,
    report: PersonDeletion,
) -> None:  # fmt: skip
    ring = crypto.keyring()
    for broadcast_id, _count, sealed in conn.run(sql, c=church_id, **params):
        if sealed is None:
            continue
        cleaned, changed = _scrub(json.loads(ring.open(sealed, "answer")), {a.lower() for a in addresses}, national)
        if changed:
            resealed = ring.seal(json.dumps(cleaned), "answer")
            conn.run(_UPDATE_BROADCAST_SQL, id=broadcast_id, r=resealed, marker=ERASED_REQUEST_HASH)
            report.broadcasts += 1


def _emails(contacts: Iterable[Sequence[Any]]) -> set[str]:
    """The contacts' email addresses, opened from ``(id, email_enc)`` rows."""
    ring = crypto.keyring()
    return {ring.open(sealed, "address") for _, sealed in contacts if sealed is not None}


_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_NON_DIGITS = re.compile(r"\D")


def _mentions(value: str, addresses: set[str], national: str) -> bool:
    if value.lower() in addresses:
        return True
    if _UUID_RE.match(value):
        return False
    return national in _NON_DIGITS.sub("", value)


def _scrub(value: Any, addresses: set[str], national: str) -> tuple[Any, bool]:
    """Every string in a stored answer that names the person becomes ``'erased'`` (keys are ours)."""
    if isinstance(value, str):
        return (ERASED, True) if _mentions(value, addresses, national) else (value, False)
    if isinstance(value, list):
        changed = False
        items = []
        for item in value:
            new, hit = _scrub(item, addresses, national)
            items.append(new)
            changed = changed or hit
        return items, changed
    if isinstance(value, dict):
        changed = False
        out = {}
        for key, item in value.items():
            new, hit = _scrub(item, addresses, national)
            out[key] = new
            changed = changed or hit
        return out, changed
    return value, False


def _remove_from_queue(gate: RedisGate | None, ids: list[str], report: PersonDeletion) -> None:
    """Take cancelled ids off Redis (best effort: PostgreSQL already says they are final)."""
    if gate is None or not ids:
        return
    queue = MessageQueue(gate.client, gate.prefix)
    try:
        report.redis_removed += gate.call(lambda _client: queue.remove(ids))
    except (RedisUnavailable, redis.RedisError) as exc:
        report.redis_error = f"Redis unavailable: {type(exc).__name__}"
        logger.warning("erased messages not removed from Redis; consumers will drop them",
                       extra={"fields": {"count": len(ids), "error": type(exc).__name__}})  # fmt: skip


# -- a church --------------------------------------------------------------------------------------------------

# Kept when a church is deleted: they hold no personal data and outlive the church on purpose.
KEPT_TABLES = frozenset({"audit_log", "usage_archive"})
# Deleted first, in this order: conversations before messages (no SET NULL work on their texts),
# messages before broadcasts (a broadcast's cascade would delete its messages in one unbounded batch).
_FIRST_TABLES = ("conversations", "messages", "broadcasts", "opt_out_events", "dead_letters_archive", "contacts")

_CHURCH_TABLES_SQL = """
SELECT c.table_name, c.data_type
FROM information_schema.columns c
JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
WHERE c.table_schema = current_schema() AND c.column_name = 'church_id' AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name
"""


_ARCHIVE_USAGE_SQL = f"""
INSERT INTO usage_archive (church_id, period_start, channel, messages, segments, billed_messages, billed_segments)
SELECT m.church_id, CAST(date_trunc('month', m.created_at AT TIME ZONE 'UTC') AS date), m.channel,
       count(*), sum(m.segments),
       count(*) FILTER (WHERE {BILLED_CONDITION_SQL}),
       coalesce(sum(m.segments) FILTER (WHERE {BILLED_CONDITION_SQL}), 0)
FROM messages m
WHERE m.church_id = CAST(:c AS uuid)
GROUP BY 1, 2, 3
ON CONFLICT (church_id, period_start, channel) DO NOTHING
RETURNING 1
"""

# The church's sending numbers that no other church uses: their rate buckets and limits go too.
_OWN_SENDERS_SQL = """
SELECT DISTINCT s.phone FROM sender_numbers s
WHERE s.church_id = CAST(:c AS uuid)
  AND NOT EXISTS (SELECT 1 FROM sender_numbers o WHERE o.phone = s.phone AND o.church_id <> s.church_id)
ORDER BY s.phone
"""

_DELETE_MESSAGES_SQL = """
WITH gone AS (
    DELETE FROM messages WHERE id IN (
        SELECT id FROM messages WHERE church_id = CAST(:c AS uuid) LIMIT :limit)
    RETURNING id, provider_message_id
), by_provider AS (
    DELETE FROM carrier_receipts r USING gone g WHERE r.provider_message_id = g.provider_message_id RETURNING 1
), by_message AS (
    DELETE FROM carrier_receipts r USING gone g WHERE r.applied_at IS NULL AND r.message_id = g.id RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM by_provider) + (SELECT count(*) FROM by_message)
"""

ChurchProgress = Callable[[str, int], None]
"""Called after every batch with (what, how many of it so far)."""


@dataclass
class ChurchDeletion:
    church_id: str
    already_deleted: bool = False  # an earlier run finished; only Redis was swept again
    rows: dict[str, int] = field(default_factory=dict)  # rows deleted per table
    usage_archive_rows: int = 0
    redis_ids: int = 0  # queued message ids removed
    redis_keys: int = 0  # keys deleted (ready lists, rate buckets, cached API keys, anything naming the church)
    redis_error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "church_id": self.church_id, "already_deleted": self.already_deleted, "rows": dict(self.rows),
            "usage_archive_rows": self.usage_archive_rows, "redis_ids": self.redis_ids,
            "redis_keys": self.redis_keys, "redis_error": self.redis_error,
        }  # fmt: skip


class RedisNotCleared(Exception):
    """Everything in PostgreSQL but the church row is gone; Redis could not be swept. Run it again."""


def delete_church(
    pool: Pool,
    church_id: str,
    *,
    actor: str,
    progress: ChurchProgress | None = None,
    redis: RedisGate | None = None,
    batch_size: int = batch_size_default,
) -> ChurchDeletion:
    """Delete a church and everything of it but its billing counts and audit trail; see the module docstring.

    ``redis=None`` (queues disabled) skips the Redis sweep. ``UnknownChurch`` if there is no such church
    and never was; a church deleted before reports ``already_deleted`` (and Redis is swept again).
    ``RedisNotCleared`` if Redis was unreachable: the church row stays (marked deleted) until a run
    that can sweep it.
    """
    church_id = _church_uuid(church_id)
    report = ChurchDeletion(church_id)
    say: ChurchProgress = progress or (lambda _what, _n: None)
    rows = pool.run(_CHURCH_SQL, c=church_id)
    if not rows:
        if not _deleted_before(pool, church_id):
            raise UnknownChurch(church_id)
        report.already_deleted = True
        if redis is not None:
            _sweep_church_redis(redis, church_id, [], [], report)
        return report
    with pool.transaction() as conn:
        # Stop new work first: keys stop authenticating, inbound texts to its numbers are ignored.
        conn.run("SELECT 1 FROM churches WHERE id = CAST(:c AS uuid) FOR UPDATE", c=church_id)
        conn.run("UPDATE churches SET deleted_at = coalesce(deleted_at, now()) WHERE id = CAST(:c AS uuid)", c=church_id)
        report.usage_archive_rows = len(conn.run(_ARCHIVE_USAGE_SQL, c=church_id))
        senders = [str(r[0]) for r in conn.run(_OWN_SENDERS_SQL, c=church_id)]
        key_prefixes = [str(r[0]) for r in conn.run(
            "SELECT prefix FROM api_keys WHERE church_id = CAST(:c AS uuid)", c=church_id)]  # fmt: skip
    say("usage_archive", report.usage_archive_rows)
    if redis is not None:
        # Its keys stopped matching PostgreSQL with the commit above; drop their cached copies now too.
        KeyCache(redis, 0).forget(*key_prefixes)
    for table, data_type in _church_tables(pool):
        report.rows[table] = 0
        while True:
            with pool.transaction() as conn:
                if table == "messages":
                    deleted, receipts = (int(v) for v in conn.run(_DELETE_MESSAGES_SQL, c=church_id, limit=batch_size)[0])
                    report.rows["carrier_receipts"] = report.rows.get("carrier_receipts", 0) + receipts
                else:
                    deleted = len(conn.run(_delete_batch_sql(table, data_type), c=church_id, limit=batch_size))
            report.rows[table] += deleted
            if deleted or report.rows[table] == 0:
                say(table, report.rows[table])
            if deleted < batch_size:
                break
    if redis is not None:
        _sweep_church_redis(redis, church_id, senders, key_prefixes, report)
        if report.redis_error is not None:
            raise RedisNotCleared(
                f"{report.redis_error}: the church's data is deleted from PostgreSQL but Redis could not be swept;"
                " run the same command again when Redis is reachable"
            )
        say("redis", report.redis_ids + report.redis_keys)
    with pool.transaction() as conn:
        report.rows["churches"] = len(conn.run("DELETE FROM churches WHERE id = CAST(:c AS uuid) RETURNING 1", c=church_id))
        audit.record(
            conn, "data.deleted", actor=actor, church_id=church_id, target=f"church:{church_id}",
            details={"scope": "church", "rows": {k: v for k, v in report.rows.items() if v},
                     "usage_archive_rows": report.usage_archive_rows},
        )  # fmt: skip
    say("churches", report.rows["churches"])
    logger.info("church deleted", extra={"fields": {"church_id": church_id, "rows": sum(report.rows.values())}})
    return report


def church_summary(pool: Pool, church_id: str) -> tuple[str, dict[str, int]]:
    """The church's name and how many rows of each table a deletion would remove (``UnknownChurch``)."""
    church_id = _church_uuid(church_id)
    rows = pool.run("SELECT name FROM churches WHERE id = CAST(:c AS uuid)", c=church_id)
    if not rows:
        raise UnknownChurch(church_id)
    counts: dict[str, int] = {}
    for table, data_type in _church_tables(pool):
        counts[table] = int(pool.run(f"SELECT count(*) FROM {_quoted(table)} WHERE {_of_church(data_type)}", c=church_id)[0][0])
    return str(rows[0][0]), counts


def _church_uuid(church_id: str) -> str:
    try:
        return str(UUID(str(church_id)))
    except ValueError:
        raise UnknownChurch(church_id) from None


def _require_church(pool: Pool, church_id: str, *, allow_deleted: bool) -> None:
    rows = pool.run(_CHURCH_SQL, c=_church_uuid(church_id))
    if not rows or (rows[0][0] and not allow_deleted):
        raise UnknownChurch(church_id)


def _deleted_before(pool: Pool, church_id: str) -> bool:
    rows = pool.run(
        "SELECT EXISTS (SELECT 1 FROM audit_log WHERE church_id = CAST(:c AS uuid) AND action = 'data.deleted'"
        " AND target = :target)",
        c=church_id, target=f"church:{church_id}",
    )  # fmt: skip
    return bool(rows[0][0])


def _church_tables(pool: Pool) -> list[tuple[str, str]]:
    found = {str(name): str(data_type) for name, data_type in pool.run(_CHURCH_TABLES_SQL)}
    ordered = [t for t in _FIRST_TABLES if t in found] + sorted(t for t in found if t not in _FIRST_TABLES)
    return [(t, found[t]) for t in ordered if t not in KEPT_TABLES]


def _quoted(table: str) -> str:
    return '"' + table.replace('"', '""') + '"'


def _of_church(data_type: str) -> str:
    return "church_id = CAST(:c AS uuid)" if data_type == "uuid" else "CAST(church_id AS text) = :c"


def _delete_batch_sql(table: str, data_type: str) -> str:
    name = _quoted(table)
    return f"DELETE FROM {name} WHERE ctid IN (SELECT ctid FROM {name} WHERE {_of_church(data_type)} LIMIT :limit) RETURNING 1"


def _sweep_church_redis(
    gate: RedisGate, church_id: str, senders: Sequence[str], key_prefixes: Sequence[str], report: ChurchDeletion
) -> None:
    """Every trace of the church in Redis: its queued ids, ready lists, ring entries, buckets, cached keys."""
    keys = QueueKeys(gate.prefix)
    cached = [KeyCache(gate, 0).entry_key(p) for p in key_prefixes]
    queue = MessageQueue(gate.client, gate.prefix)
    marker = f":{church_id}:"

    def sweep(client: redis.Redis) -> None:
        # The msg hash says where each held id is: "<state>:<lane>:<channel>:<church>:<sender>".
        ids = [str(k) for k, v in client.hscan_iter(keys.msg, count=1000) if marker in str(v)]
        for start in range(0, len(ids), 1000):
            report.redis_ids += queue.remove(ids[start : start + 1000])
        for ring in keys.rings:
            members = [str(m) for m, _ in client.zscan_iter(ring, match=f"*{marker}*", count=1000)]
            if members:
                client.zrem(ring, *members)
        # Ready lists (with their tombstones) and anything else whose name holds the church id.
        names = [str(k) for k in client.scan_iter(match=f"{{{gate.prefix}}}:*{church_id}*", count=1000)]
        for start in range(0, len(names), 500):
            report.redis_keys += int(client.delete(*names[start : start + 500]))
        for sender in senders:  # numbers no other church sends from: their bucket and rate on every channel
            report.redis_keys += int(client.delete(*(keys.bucket(channel, sender) for channel in CHANNELS)))
            client.hdel(keys.limits, *(sender_id(channel, sender) for channel in CHANNELS))
        if cached:  # again: the first drop may have met a Redis blip
            report.redis_keys += int(client.delete(*cached))

    try:
        gate.call(sweep)
    except (RedisUnavailable, redis.RedisError) as exc:
        report.redis_error = f"Redis unavailable: {type(exc).__name__}"
