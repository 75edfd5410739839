"""Plain SQL migrations, applied in order under an advisory lock.

Files are ``common/db/migrations/NNNN_name.sql``, or ``NNNN_name.py`` when a step needs the application
(0008 seals existing numbers and bodies with ``ENCRYPTION_KEY``): a Python migration defines
``apply(conn, say)`` and runs on the same terms. Each runs in its own transaction and is recorded
in ``schema_migrations`` with a checksum, so running ``koinonia migrate`` twice, or from two processes
at once, applies each file exactly once; editing a file that was already applied is refused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.db.pool import Connection, Pool

logger = logging.getLogger("koinonia.migrate")

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.(sql|py)$")
# An arbitrary constant: every migrator, in every process, takes the same advisory lock.
advisory_lock_key = 0x6B6F696E  # "koin"


class MigrationError(Exception):
    """A migration could not be applied or was changed after it was applied."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str  # the file's text: SQL, or the Python source of ``apply(conn, say)``
    path: Path | None = None

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def run(self, conn: Connection, say: Callable[[str], None]) -> None:
        if self.path is None or self.path.suffix != ".py":
            conn.execute_simple(self.sql)
            return
        spec = importlib.util.spec_from_file_location(f"koinonia_migration_{self.version:04d}", self.path)
        if spec is None or spec.loader is None:
            raise MigrationError(f"cannot load {self.path}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.apply(conn, say)


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.iterdir()):
        match = _FILE_RE.match(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path.read_text(encoding="utf-8"), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError(f"two migration files share a number in {directory}")
    return found


def migrate(
    pool: Pool,
    directory: Path = MIGRATIONS_DIR,
    progress: Callable[[str], None] | None = None,
) -> list[int]:
    """Apply pending migrations; return the versions this call applied."""
    say = progress or logger.info
    migrations = discover(directory)
    applied_now: list[int] = []
    with pool.connection() as conn:
        conn.run("SELECT pg_advisory_lock(:key)", key=advisory_lock_key)
        try:
            conn.run(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {row[0]: row[2] for row in conn.run("SELECT version, name, checksum FROM schema_migrations")}
            for migration in migrations:
                if migration.version in done:
                    if done[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version:04d}_{migration.name} changed after it was "
                            "applied; put the change in a new numbered file instead"
                        )
                    continue
                say(f"applying migration {migration.version:04d}_{migration.name}")
                conn.run("BEGIN")
                try:
                    migration.run(conn, say)
                    conn.run(
                        "INSERT INTO schema_migrations (version, name, checksum) VALUES (:v, :n, :c)",
                        v=migration.version,
                        n=migration.name,
                        c=migration.checksum,
                    )
                    conn.run("COMMIT")
                except Exception as exc:
                    conn.run("ROLLBACK")
                    raise MigrationError(
                        f"migration {migration.version:04d}_{migration.name} failed: {exc}"
                    ) from exc
                applied_now.append(migration.version)
        finally:
            conn.run("SELECT pg_advisory_unlock(:key)", key=advisory_lock_key)
    say(f"schema up to date ({len(migrations)} migrations, {len(applied_now)} applied now)")
    return applied_now
