"""Versioned schema migrations: numbered plain SQL files, applied under an advisory lock.

Contract. The files `migrations/NNNN_name.sql` (four digits, from 0001, no gaps) are the schema:
version N is every file up to N, applied in order. `upgrade(conn, to_version)` runs in ONE
transaction holding `pg_advisory_xact_lock(MIGRATION_LOCK)`: several nodes starting at once
queue on the lock, the first applies what is missing, the others then find nothing to do.
Each applied file is recorded as a row of `schema_version` (version, name, applied_at,
applied_by). A database whose version is newer than the newest file this code has is refused
with a StoreError that says so ("database schema is version N, this node knows up to M: upgrade
the node"), whether `open` or `migrate` meets it; going back (`to_version` below the database's)
is refused too: migrations only go forward. A failing file rolls the whole upgrade back.

`migrate(url, to_version)` is the same upgrade from its own connection, for
`liveprism storage migrate --to-version` (None: the newest).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import AsyncConnection

from engine.store.base import StoreError

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
MIGRATION_LOCK = 0x4C50_5354_4F52_0001  # "LPSTOR" + 1: the advisory lock key of schema changes
_FILE = re.compile(r"(\d{4})_([a-z0-9_]+)\.sql")

_BOOTSTRAP = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    applied_by text NOT NULL DEFAULT ''
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path

    def sql(self) -> str:
        return self.path.read_text(encoding="utf-8")


@dataclass(frozen=True, slots=True)
class MigrationResult:
    """What an upgrade did: the database's version before and after."""

    before: int
    after: int


def migrations() -> tuple[Migration, ...]:
    """Every migration file, in version order (checked: numbered from 1 without gaps)."""
    found = []
    for path in MIGRATIONS_DIR.iterdir():
        match = _FILE.fullmatch(path.name)
        if match:
            found.append(Migration(int(match[1]), match[2], path))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"migrations in {MIGRATIONS_DIR} are not numbered 1..N: {[m.path.name for m in found]}")
    return tuple(found)


def latest_version() -> int:
    """The newest schema version this code knows."""
    return len(migrations())


def newer_refusal(database: int, known: int) -> StoreError:
    return StoreError(f"database schema is version {database}, this node knows up to {known}: upgrade the node")


async def current_version(conn: AsyncConnection[Any]) -> int:
    """The database's schema version (0: nothing applied, or no schema_version table)."""
    cur = await conn.execute("SELECT to_regclass('schema_version') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return 0
    cur = await conn.execute("SELECT coalesce(max(version), 0) FROM schema_version")
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def upgrade(
    conn: AsyncConnection[Any], to_version: int | None = None, *, applied_by: str = ""
) -> MigrationResult:
    """Bring the schema to `to_version` (None: the newest) in one locked transaction (module docstring).

    `conn` is an autocommit connection with no transaction open."""
    files = migrations()
    known = len(files)
    target = known if to_version is None else to_version
    if not 1 <= target <= known:
        raise StoreError(f"no schema version {target}: this node knows versions 1 to {known}")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        await conn.execute(_BOOTSTRAP)
        before = await current_version(conn)
        if before > known:
            raise newer_refusal(before, known)
        if before > target:
            raise StoreError(f"database schema is version {before}: migrations only go forward (asked for {target})")
        for migration in files[before:target]:
            await conn.execute(migration.sql().encode())  # a script: no parameters, several statements
            await conn.execute("INSERT INTO schema_version (version, name, applied_by) VALUES (%s, %s, %s)",
                               (migration.version, migration.name, applied_by))
    return MigrationResult(before, max(before, target))


async def migrate(url: str, to_version: int | None = None) -> MigrationResult:
    """Upgrade the database at `url` to `to_version` (None: the newest); StoreError when refused."""
    try:
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True, connect_timeout=30)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the store database: {exc}") from exc
    try:
        return await upgrade(conn, to_version, applied_by="liveprism storage migrate")
    except psycopg.Error as exc:
        raise StoreError(f"schema migration failed: {exc}") from exc
    finally:
        await conn.close()
