"""Retention in batches: what expires goes `PURGE_BATCH` rows per transaction, never one long lock.

Contract: as the embedded store's `_purge` (archive rows older than the archive retention,
quarantine entries of any status older than the quarantine retention, `dsn_sent` rows older than
`DSN_MEMORY_DAYS`, expired MTA-STS policies; messages nothing references any more go in the same
transaction as their last reference), but each step deletes at most `PURGE_BATCH` rows per
transaction, oldest first, skipping rows another transaction holds (SKIP LOCKED: a release in
progress is not waited for, the next purge takes it), and commits before the next batch: the
relay and the SMTP front ends never wait behind a purge for longer than one batch. Deleting
whole rows (no per-row UPDATE) leaves VACUUM plain dead tuples to reclaim.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import LiteralString

from engine.store.base import PurgeResult
from engine.store.postgres.accept import drop_unreferenced
from engine.store.postgres.connection import Conn
from engine.store.rows import DAY, DSN_MEMORY_DAYS

PURGE_BATCH = 1000  # rows per transaction

Transaction = Callable[[Callable[[Conn], Awaitable[tuple[int, int]]]], Awaitable[tuple[int, int]]]


def _batch(table: LiteralString, key: LiteralString, column: LiteralString, returning: LiteralString) -> LiteralString:
    return (f"DELETE FROM {table} WHERE {key} IN (SELECT {key} FROM {table} WHERE {column} < %s"
            f" ORDER BY {column} LIMIT {PURGE_BATCH} FOR UPDATE SKIP LOCKED) RETURNING {returning}")


_ARCHIVE = _batch("archive", "queue_id", "archived_at", "queue_id")
_QUARANTINE = _batch("quarantine", "id", "created_at", "queue_id")
_DSN_SENT = _batch("dsn_sent", "queue_id", "sent_at", "queue_id")
_MTA_STS = _batch("mta_sts", "domain", "expires_at", "domain")


async def purge(in_transaction: Transaction, now: float, archive_days: int, quarantine_days: int) -> PurgeResult:
    """Run the purge as a series of short transactions (`in_transaction(step)` runs `step` in one
    and returns its (rows removed, messages dropped))."""

    def step(sql: LiteralString, cut: float, drop: bool) -> Callable[[Conn], Awaitable[tuple[int, int]]]:
        async def run(conn: Conn) -> tuple[int, int]:
            rows = await (await conn.execute(sql, (cut,))).fetchall()
            dropped = await drop_unreferenced(conn, [row[0] for row in rows]) if drop else 0
            return len(rows), dropped

        return run

    async def drain(sql: LiteralString, cut: float, drop: bool) -> tuple[int, int]:
        removed = dropped = 0
        while True:
            rows, messages = await in_transaction(step(sql, cut, drop))
            removed, dropped = removed + rows, dropped + messages
            if rows < PURGE_BATCH:
                return removed, dropped

    archived, from_archive = await drain(_ARCHIVE, now - archive_days * DAY, True)
    quarantined, from_quarantine = await drain(_QUARANTINE, now - quarantine_days * DAY, True)
    await drain(_DSN_SENT, now - DSN_MEMORY_DAYS * DAY, False)
    await drain(_MTA_STS, now, False)
    return PurgeResult(archived=archived, quarantined=quarantined, messages=from_archive + from_quarantine)
