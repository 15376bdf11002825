"""Storing accepted messages, and dropping a message once nothing references it.

Contract. `insert_accepts` stores every row of the accepts it is given inside the caller's
transaction (`engine.store.rows.AcceptRows`), with one `executemany` per table, all in one
pipeline (one round trip), parents first (for the foreign keys): `messages`, then the `bodies`
bytea of a message held in memory, `archive`, `deliveries`, `quarantine`. A spooled message
(`Accepted.body`, over 1 MiB) gets no `bodies` row: `insert_large` stores its rows and then its
bytes as `body_chunks` rows of `CHUNK_SIZE`, read from the spool file one piece at a time (one
piece in memory, never the whole message), in the same transaction. Whether an accept is stored
at all is `engine.store.rows.keeps`. `drop_unreferenced` deletes, in the caller's transaction, those of the
given messages that no delivery, held quarantine entry or archive row references any more; their
bodies and chunks go with them (ON DELETE CASCADE). It locks the message rows first (FOR UPDATE,
in queue id order), so that a concurrent release on another node (which adds a delivery) either
commits before the check, which then sees the delivery, or waits until the drop is decided.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from typing import Any, LiteralString

from engine.store.base import Accepted
from engine.store.postgres.connection import Conn
from engine.store.rows import AcceptRows

CHUNK_SIZE = 256 * 1024  # bytes per body_chunks row

_INSERTS: tuple[tuple[str, LiteralString], ...] = (
    ("messages", "INSERT INTO messages VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"),
    ("bodies", "INSERT INTO bodies VALUES (%s, %b)"),
    ("archive", "INSERT INTO archive VALUES (%s, %s)"),
    ("deliveries", "INSERT INTO deliveries (queue_id, tenant, route_by, mail_from, rcpts, headers, subject_prefix,"
     " created_at, next_attempt_at, state) VALUES (%s, %s, %s, %s, %s, %b, %s, %s, %s, 'queued')"),
    ("quarantine", "INSERT INTO quarantine VALUES (%s, %s, %s, %s, %b, %s, %s, %s, %s, %s, %s, %s, 'held', %s)"),
)


async def insert_accepts(conn: Conn, msgs: Iterable[Accepted]) -> None:
    """Insert every row of `msgs` in the caller's transaction (parents first, one pipeline)."""
    rows = AcceptRows()
    for msg in msgs:
        rows.add(msg)
    async with conn.pipeline(), conn.cursor() as cur:
        for table, sql in _INSERTS:
            values: list[tuple[Any, ...]] = getattr(rows, table)
            if values:
                await cur.executemany(sql, values)


async def insert_large(conn: Conn, msg: Accepted) -> int:
    """Store a spooled message (`msg.body`) in the caller's transaction: its rows, then its bytes in
    `CHUNK_SIZE` pieces read from the file one at a time. Returns the bytes stored."""
    assert msg.body is not None
    await insert_accepts(conn, (msg,))
    stored = 0
    with open(msg.body, "rb") as source:
        seq = 0
        while piece := await asyncio.to_thread(source.read, CHUNK_SIZE):
            await conn.execute("INSERT INTO body_chunks (queue_id, seq, data) VALUES (%s, %s, %b)",
                               (msg.queue_id, seq, piece))
            stored += len(piece)
            seq += 1
    return stored


async def drop_unreferenced(conn: Conn, queue_ids: Sequence[str]) -> int:
    """Delete those of `queue_ids` nothing references any more (module docstring); returns how many."""
    if not queue_ids:
        return 0
    ids = sorted(set(queue_ids))
    await conn.execute("SELECT 1 FROM messages WHERE queue_id = ANY(%s) ORDER BY queue_id FOR UPDATE", (ids,))
    cur = await conn.execute(
        "DELETE FROM messages m WHERE m.queue_id = ANY(%s)"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.queue_id = m.queue_id)"
        " AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.queue_id = m.queue_id AND q.status = 'held')"
        " AND NOT EXISTS (SELECT 1 FROM archive a WHERE a.queue_id = m.queue_id)",
        (ids,),
    )
    return max(cur.rowcount, 0)
