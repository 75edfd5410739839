"""Re-seal every stored value under the current ``ENCRYPTION_KEY``: ``koinonia rotate-key``.

Changing the key, for an operator:

1. Make a new key; set ``ENCRYPTION_KEY`` to it and move the old one into ``ENCRYPTION_KEYS_OLD``, on every
   process. From then on new values are sealed with the new key, and the old ones still open.
2. ``koinonia rotate-key`` re-seals each value whose key id (bytes 1..5 of the envelope, see crypto.py) is
   not the current key's, in every column of :data:`SEALED_TABLES`.
3. ``koinonia rotate-key --check`` counts what is left under other keys, changing nothing. At zero, the old
   key can leave ``ENCRYPTION_KEYS_OLD``.

``LOOKUP_KEY`` is not rotated: lookup hashes (``*_hash``, ``erasure_suppressions``) stay as they are, so
every lookup keeps working during and after a rotation.

How it goes:

- Table by table, in batches (keyset pages on the primary key, only rows with a value under another
  key), each batch one transaction. The batch's last primary key is committed in ``key_rotations``
  (migration 0009) with the batch, so a killed run continues from there, and a table finished for a
  target key is not scanned again by the next run for that key (``rescan=True`` starts over, e.g. for
  values written meanwhile by a process still configured with the old key).
- Compare-and-set: a value is replaced only if it still holds the sealed bytes that were read, so a value
  erased or changed by the application between the read and the write is never brought back.
- One run at a time per database (an advisory lock); a second one is refused.
- A value that cannot be opened (its key is not configured, or it was altered) stops the run with an
  error naming the table, column and row, and what to do; what was committed stays, and a rerun
  continues from the failed batch.
- Values sealed once and stored many times (a broadcast's body in each of its messages) are re-sealed
  once per run while they stay in a small cache, and stored shared again.
- The run that finishes the last table writes one ``encryption_key.rotated`` audit entry (no church:
  the action is on the whole platform) in the same transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any, Literal

from common import audit
from common.db.pool import Connection, Pool
from common.privacy.crypto import DecryptionError, Keyring, Kind, keyring

ACTION = "encryption_key.rotated"
DEFAULT_BATCH_SIZE = 500
# Any constant other than the migrator's: one rotate-key per database at a time.
advisory_lock_key = 0x6B6F7274  # "kort"
_CACHE_LIMIT = 4096  # sealed values remembered per run (old bytes -> new bytes)
_HEADER = 5  # version byte and key id


@dataclass(frozen=True)
class SealedColumn:
    name: str
    kind: Kind
    hash: str | None = None  # its lookup-hash column (addresses); a rotation leaves it as it is


@dataclass(frozen=True)
class SealedTable:
    name: str
    key: tuple[tuple[str, str], ...]  # primary key columns and their SQL types, in the index's order
    columns: tuple[SealedColumn, ...]


# Every sealed column (migration 0008), the one list: rotation, `--check` and the tests read it.
SEALED_TABLES: tuple[SealedTable, ...] = (
    SealedTable("contacts", (("id", "uuid"),), (
        SealedColumn("phone_enc", "address", "phone_hash"), SealedColumn("email_enc", "address", "email_hash"),
        SealedColumn("first_name_enc", "name"), SealedColumn("last_name_enc", "name"),
    )),
    SealedTable("opt_outs", (("church_id", "uuid"), ("channel", "text"), ("address_hash", "bytea")),
                (SealedColumn("address_enc", "address", "address_hash"),)),
    SealedTable("opt_out_events", (("id", "bigint"),), (SealedColumn("address_enc", "address", "address_hash"),)),
    SealedTable("messages", (("id", "uuid"),), (
        SealedColumn("to_enc", "address", "to_hash"), SealedColumn("body_enc", "text"),
        SealedColumn("subject_enc", "text"), SealedColumn("html_body_enc", "text"),
    )),
    SealedTable("broadcasts", (("id", "uuid"),), (SealedColumn("response_enc", "answer"),)),
    SealedTable("conversations", (("id", "uuid"),), (SealedColumn("contact_enc", "address", "contact_hash"),)),
    SealedTable("conversation_messages", (("id", "uuid"),), (SealedColumn("body_enc", "text"),)),
)  # fmt: skip


class RotationError(Exception):
    """The rotation stopped; the message says what to do. Committed batches stay; a rerun continues."""


class RotationBusy(RotationError):
    """Another ``koinonia rotate-key`` holds this database."""


@dataclass
class TableProgress:
    table: str
    total: int = 0  # rows with a value under another key when this run reached the table
    done: int = 0  # of those, rows handled so far
    resealed: int = 0  # values re-sealed by this run
    skipped: int = 0  # values changed or erased between read and write: left as they were
    finished: bool = False
    earlier: bool = False  # finished by an earlier run for this key: not scanned again


@dataclass
class RotationReport:
    key_id: str  # the current key's id, hex
    old_key_ids: list[str]
    tables: list[TableProgress] = field(default_factory=list)
    audited: bool = False  # this run finished the rotation and wrote the audit entry

    @property
    def resealed(self) -> int:
        return sum(t.resealed for t in self.tables)

    @property
    def skipped(self) -> int:
        return sum(t.skipped for t in self.tables)

    @property
    def already_done(self) -> bool:
        return all(t.earlier for t in self.tables)


KeyState = Literal["current", "old", "unknown", "invalid"]


@dataclass(frozen=True)
class KeyCount:
    """How many values of one column are sealed under one key id."""

    table: str
    column: str
    key_id: str  # hex; "" for a value that is not an envelope at all
    count: int
    state: KeyState  # current key, a key in ENCRYPTION_KEYS_OLD, a key not configured, not a sealed value


Progress = Callable[[TableProgress], None]
BeforeWrite = Callable[[str, list[tuple[Any, ...]]], None]


def rotate(
    pool: Pool,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    rescan: bool = False,
    actor: str = "cli",
    progress: Progress | None = None,
    before_write: BeforeWrite | None = None,
    ring: Keyring | None = None,
) -> RotationReport:
    """Re-seal every value not under the current key. Resumable, batch by batch; see the module's text.

    ``progress`` is called after each committed batch (and once for a table finished by an earlier run).
    ``before_write(table, primary keys)`` is called between a batch's read and its write, inside its
    transaction (tests use it to change rows meanwhile, from another connection).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    ring = ring or keyring()
    with pool.connection() as conn:
        if not conn.run("SELECT pg_try_advisory_lock(:k)", k=advisory_lock_key)[0][0]:
            raise RotationBusy(
                "another `koinonia rotate-key` is running on this database: let it finish, or stop it, then run again"
            )
        try:
            return _Run(conn, ring, batch_size, actor, progress, before_write).run(rescan)
        finally:
            with suppress(Exception):  # a broken connection: its session is gone, and the lock with it
                conn.run("SELECT pg_advisory_unlock(:k)", k=advisory_lock_key)


def key_counts(pool: Pool, ring: Keyring | None = None) -> list[KeyCount]:
    """Every sealed value counted by table, column and key id; changes nothing (``--check``)."""
    ring = ring or keyring()
    current = ring.current_id.hex()
    known = set(ring.known_ids)
    found: list[KeyCount] = []
    for table in SEALED_TABLES:
        values = ", ".join(c.name for c in table.columns)
        names = ", ".join(f"'{c.name}'" for c in table.columns)
        rows = pool.run(
            f"SELECT v.col, substring(v.val, 1, {_HEADER}), count(*) FROM {table.name},"
            f" unnest(ARRAY[{values}], ARRAY[{names}]) AS v(val, col)"
            " WHERE v.val IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
        )
        for column, header, count in rows:
            header = bytes(header)
            kid = header[1:].hex() if len(header) == _HEADER else ""
            state: KeyState
            if len(header) < _HEADER or header[0] != ring.header[0]:
                state = "invalid"
            else:
                state = "current" if kid == current else "old" if kid in known else "unknown"
            found.append(KeyCount(table.name, column, kid, int(count), state))
    return found


# -- internals ----------------------------------------------------------------------------------------------------


@contextmanager
def _transaction(conn: Connection) -> Iterator[None]:
    conn.run("BEGIN")
    try:
        yield
    except BaseException:
        with suppress(Exception):  # the connection is going away; the caller sees the original error
            conn.run("ROLLBACK")
        raise
    conn.run("COMMIT")


def _cast(param: str, sql_type: str) -> str:
    return f"CAST(:{param} AS {sql_type})"


def _cursor_text(table: SealedTable, key: tuple[Any, ...]) -> list[str]:
    return [bytes(v).hex() if t == "bytea" else str(v) for (_, t), v in zip(table.key, key, strict=True)]


def _cursor_value(table: SealedTable, text: list[str]) -> tuple[Any, ...]:
    return tuple(bytes.fromhex(v) if t == "bytea" else int(v) if t == "bigint" else v
                 for (_, t), v in zip(table.key, text, strict=True))  # fmt: skip


def _describe_key(table: SealedTable, key: tuple[Any, ...]) -> str:
    return ", ".join(f"{name}={bytes(v).hex() if t == 'bytea' else v}" for (name, t), v in zip(table.key, key, strict=True))


class _Run:
    def __init__(self, conn: Connection, ring: Keyring, batch_size: int, actor: str,
                 progress: Progress | None, before_write: BeforeWrite | None) -> None:  # fmt: skip
        self.conn = conn
        self.ring = ring
        self.batch_size = batch_size
        self.actor = actor
        self.progress = progress or (lambda _p: None)
        self.before_write = before_write
        self.kid = ring.current_id
        self.cache: dict[tuple[str, bytes], bytes] = {}
        self._batch_resealed = self._batch_skipped = 0
        self.report = RotationReport(self.kid.hex(), [k for k in ring.known_ids if k != self.kid.hex()])

    def run(self, rescan: bool) -> RotationReport:
        if self.conn.run("SELECT to_regclass('key_rotations') IS NULL")[0][0]:
            raise RotationError("this database has no key_rotations table yet: run `koinonia migrate` first")
        if rescan:
            self.conn.run("DELETE FROM key_rotations WHERE target_key_id = :k", k=self.kid)
        state = {
            row[0]: (row[1], row[2])
            for row in self.conn.run(
                "SELECT table_name, cursor, finished_at IS NOT NULL FROM key_rotations WHERE target_key_id = :k", k=self.kid
            )
        }
        pending = [t for t in SEALED_TABLES if not state.get(t.name, (None, False))[1]]
        for table in SEALED_TABLES:
            tp = TableProgress(table.name)
            self.report.tables.append(tp)
            if table not in pending:
                tp.finished = tp.earlier = True
                self.progress(tp)
                continue
            cursor_text = state.get(table.name, (None, False))[0]
            cursor = _cursor_value(table, cursor_text) if cursor_text else None
            self._table(table, tp, cursor, last=table is pending[-1])
        return self.report

    def _table(self, table: SealedTable, tp: TableProgress, cursor: tuple[Any, ...] | None, *, last: bool) -> None:
        where, params = self._where(table, cursor)
        tp.total = int(self.conn.run(f"SELECT count(*) FROM {table.name} WHERE {where}", **params)[0][0])
        while not tp.finished:
            with _transaction(self.conn):
                cursor = self._batch(table, tp, cursor)
                self.conn.run(
                    "INSERT INTO key_rotations AS r (target_key_id, table_name, cursor, resealed, skipped, finished_at)"
                    " VALUES (:k, :t, CAST(:c AS text[]), :r, :s, CASE WHEN CAST(:f AS boolean) THEN now() END)"
                    " ON CONFLICT (target_key_id, table_name) DO UPDATE SET cursor = EXCLUDED.cursor,"
                    " resealed = r.resealed + EXCLUDED.resealed, skipped = r.skipped + EXCLUDED.skipped,"
                    " finished_at = EXCLUDED.finished_at, updated_at = now()",
                    k=self.kid, t=table.name, c=None if cursor is None else _cursor_text(table, cursor),
                    r=self._batch_resealed, s=self._batch_skipped, f=tp.finished,
                )  # fmt: skip
                if tp.finished and last:
                    self._audit()
            self.progress(tp)

    def _where(self, table: SealedTable, cursor: tuple[Any, ...] | None) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"hdr": self.ring.header}
        under_other = " OR ".join(f"substring({c.name}, 1, {_HEADER}) <> :hdr" for c in table.columns)
        if cursor is None:
            return f"({under_other})", params
        keys = ", ".join(name for name, _ in table.key)
        after = ", ".join(_cast(f"c{i}", t) for i, (_, t) in enumerate(table.key))
        params.update({f"c{i}": v for i, v in enumerate(cursor)})
        return f"({keys}) > ({after}) AND ({under_other})", params

    def _batch(self, table: SealedTable, tp: TableProgress, cursor: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        self._batch_resealed = self._batch_skipped = 0
        where, params = self._where(table, cursor)
        nk = len(table.key)
        keys = ", ".join(name for name, _ in table.key)
        selected = ", ".join([f"{n}::text" if t == "uuid" else n for n, t in table.key] + [c.name for c in table.columns])
        rows = self.conn.run(
            f"SELECT {selected} FROM {table.name} WHERE {where} ORDER BY {keys} LIMIT :limit", limit=self.batch_size, **params
        )
        if len(rows) < self.batch_size:
            tp.finished = True
        if not rows:
            return cursor
        pks = [tuple(row[:nk]) for row in rows]
        olds: list[list[bytes | None]] = [[] for _ in table.columns]
        news: list[list[bytes | None]] = [[] for _ in table.columns]
        for row, pk in zip(rows, pks, strict=True):
            for i, column in enumerate(table.columns):
                value = row[nk + i]
                if value is None or self.ring.is_current(value):
                    olds[i].append(None)
                    news[i].append(None)
                    continue
                value = bytes(value)
                olds[i].append(value)
                news[i].append(self._reseal(table, column, pk, value))
        if self.before_write is not None:
            self.before_write(table.name, pks)
        attempted = sum(v is not None for column in news for v in column)
        changed = [i for i in range(len(table.columns)) if any(v is not None for v in news[i])]
        resealed = self._write(table, pks, olds, news, changed) if changed else 0
        self._batch_resealed, self._batch_skipped = resealed, attempted - resealed
        tp.done += len(rows)
        tp.resealed += resealed
        tp.skipped += attempted - resealed
        return pks[-1]

    def _reseal(self, table: SealedTable, column: SealedColumn, pk: tuple[Any, ...], value: bytes) -> bytes:
        cached = self.cache.get((column.kind, value))
        if cached is not None:
            return cached
        try:
            plaintext = self.ring.open(value, column.kind)
        except DecryptionError as exc:
            where = f"{table.name}.{column.name} of the row {_describe_key(table, pk)}"
            if "ENCRYPTION_KEYS_OLD" in str(exc):
                raise RotationError(f"{where}: {exc}, then run `koinonia rotate-key` again") from None
            raise RotationError(
                f"{where}: {exc}. No key can read it: restore that row from a backup (or clear the value, if the"
                " column allows NULL), then run `koinonia rotate-key` again"
            ) from None
        sealed = self.ring.seal(plaintext, column.kind)
        if len(self.cache) >= _CACHE_LIMIT:
            self.cache.clear()
        self.cache[(column.kind, value)] = sealed
        return sealed

    def _write(self, table: SealedTable, pks: list[tuple[Any, ...]], olds: list[list[bytes | None]],
               news: list[list[bytes | None]], changed: list[int]) -> int:  # fmt: skip
        """Compare-and-set, one statement for the batch; returns how many values it replaced."""
        params: dict[str, Any] = {}
        arrays, names = [], []
        for i, (_, sql_type) in enumerate(table.key):
            params[f"k{i}"] = [pk[i] for pk in pks]
            arrays.append(_cast(f"k{i}", f"{sql_type}[]"))
            names.append(f"k{i}")
        for i in changed:
            params[f"o{i}"], params[f"n{i}"] = olds[i], news[i]
            arrays += [_cast(f"o{i}", "bytea[]"), _cast(f"n{i}", "bytea[]")]
            names += [f"o{i}", f"n{i}"]
        cols = table.columns
        sets = ", ".join(f"{cols[i].name} = CASE WHEN t.{cols[i].name} = v.o{i} THEN v.n{i} ELSE t.{cols[i].name} END"
                         for i in changed)  # fmt: skip
        match = " AND ".join(f"t.{name} = v.k{i}" for i, (name, _) in enumerate(table.key))
        still = " OR ".join(f"t.{cols[i].name} = v.o{i}" for i in changed)
        done = ", ".join(f"coalesce(t.{cols[i].name} = v.n{i}, false)" for i in changed)
        rows = self.conn.run(
            f"UPDATE {table.name} AS t SET {sets} FROM unnest({', '.join(arrays)}) AS v({', '.join(names)})"
            f" WHERE {match} AND ({still}) RETURNING {done}",
            **params,
        )
        return sum(bool(flag) for row in rows for flag in row)

    def _audit(self) -> None:
        per_table = {
            row[0]: [int(row[1]), int(row[2])]
            for row in self.conn.run(
                "SELECT table_name, resealed, skipped FROM key_rotations WHERE target_key_id = :k ORDER BY table_name", k=self.kid
            )
        }
        audit.record(
            self.conn, ACTION, actor=self.actor, church_id=None, target=f"encryption_key:{self.kid.hex()}",
            details={
                "key_id": self.kid.hex(),
                "old_key_ids": self.report.old_key_ids,
                "resealed": sum(r for r, _ in per_table.values()),
                "skipped": sum(s for _, s in per_table.values()),
                "tables": {name: r for name, (r, _) in per_table.items()},
            },
        )  # fmt: skip
        self.report.audited = True
