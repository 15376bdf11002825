"""Quarantine: listing held copies, releasing or deleting one, from any node.

Contract: as the embedded store's. Only a `held` entry changes (else a `QuarantineRefusal`); the
entry's row is locked (FOR UPDATE) first, so that two nodes releasing the same entry at once
serialise: the second sees it released and is refused, and exactly one delivery is queued.
Release queues a delivery due at once, with the copy's headers: inbound, one over the tenant's
routes; outbound, one per recipient domain (its MX); whichever node claims it delivers it.
Delete drops the message if nothing else (archive, deliveries) needs it.
"""

from __future__ import annotations

from typing import Any, LiteralString

from engine.store.base import QuarantineEntry, QuarantineRefusal, QuarantineStatus
from engine.store.postgres.accept import drop_unreferenced
from engine.store.postgres.connection import Conn
from engine.store.rows import QUARANTINE_COLUMNS, quarantine_from, release_rows


async def change(conn: Conn, entry_id: str, now: float, *, release: bool) -> tuple[QuarantineEntry | QuarantineRefusal,
                                                                                  int]:
    """Release or delete a held entry in the caller's transaction; returns (outcome, messages dropped)."""
    row = await (await conn.execute(
        "SELECT q.status, q.queue_id, q.tenant, q.recipients, q.headers, m.mail_from, m.direction"
        " FROM quarantine q LEFT JOIN messages m USING (queue_id) WHERE q.id = %s FOR UPDATE OF q",
        (entry_id,),
    )).fetchone()
    if row is None:
        return QuarantineRefusal(entry_id, "not-found"), 0
    status, queue_id, tenant, recipients, headers, mail_from, direction = row
    if status != "held":
        return QuarantineRefusal(entry_id, "not-held"), 0
    await conn.execute("UPDATE quarantine SET status = %s, status_at = %s WHERE id = %s",
                       ("released" if release else "deleted", now, entry_id))
    dropped = 0
    if release:
        async with conn.cursor() as cur:  # inbound: one over the tenant's routes; outbound: one per domain
            await cur.executemany(
                "INSERT INTO deliveries (queue_id, tenant, route_by, mail_from, rcpts, headers, subject_prefix,"
                " created_at, state, next_attempt_at) VALUES (%s, %s, %s, %s, %s, %b, NULL, %s, 'queued', %s)",
                release_rows(queue_id, tenant, recipients, headers, mail_from, direction, now),
            )
    else:
        dropped = await drop_unreferenced(conn, (queue_id,))
    entry = await (await conn.execute(f"SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = %s",
                                      (entry_id,))).fetchone()
    assert entry is not None  # locked by this transaction
    return quarantine_from(entry), dropped


async def entries(
    conn: Conn, *, tenant: str | None, since: float | None, status: QuarantineStatus | None
) -> list[QuarantineEntry]:
    """Entries, oldest first, filtered (every filter is an index: status/tenant/created_at)."""
    where: list[LiteralString] = []
    args: list[Any] = []
    if status is not None:
        where.append("status = %s")
        args.append(status)
    if tenant is not None:
        where.append("tenant = %s")
        args.append(tenant)
    if since is not None:
        where.append("created_at >= %s")
        args.append(since)
    sql: LiteralString = f"SELECT {QUARANTINE_COLUMNS} FROM quarantine"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at, id"
    return [quarantine_from(row) for row in await (await conn.execute(sql, args)).fetchall()]


async def entry(conn: Conn, entry_id: str) -> QuarantineEntry | None:
    row = await (await conn.execute(f"SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = %s",
                                    (entry_id,))).fetchone()
    return None if row is None else quarantine_from(row)
