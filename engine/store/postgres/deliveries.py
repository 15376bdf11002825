"""The delivery queue across nodes: claims into leases, attempt records under them, the listings.

Contract (leases). A node claims with `SELECT … FOR UPDATE SKIP LOCKED` (two nodes claiming at
the same moment skip each other's rows, never wait for them, never get the same row) and, in the
same statement, marks each row `inflight` with a lease: `owner` = its node id, `leased_until` =
now + lease time, `lease` = a fresh token from the `lease_tokens` sequence, attempts + 1 (counted
before the try). What is claimable: a queued delivery that is due, and an in-flight one whose
lease expired (its node died, or hung without renewing): any node takes it over, the expired
ones first. So no two nodes hold one delivery at a time; a node holds it until it records the
attempt, renews the lease (`renew`, the relay's heartbeat while attempts run), or the lease runs out.

`record` applies an attempt only while the recording node still holds that lease (the row is
in flight, owned by this node, under the token of this node's claim when it is known): a record
that comes after the lease was taken over (or the delivery finished elsewhere) is not applied
and is reported as stale (the store counts them). At-least-once: the late attempt may have
delivered, and the taker delivers again; a copy is never lost. An applied record stores a DSN in
the same transaction (`dsn_sent` remembers it), reschedules a delivery with recipients still
pending (lease cleared) or deletes it and drops the message if nothing else needs it.

`requeue_own` makes this node's in-flight deliveries due at once (the relay's start: no attempt
of its own is running then); other nodes' leases are left to expire. Listings and counts read
committed rows only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, LiteralString

from engine.store.base import AttemptRecord, Delivery, QueueEntry, QueueSummary
from engine.store.postgres.accept import drop_unreferenced, insert_accepts, insert_large
from engine.store.postgres.connection import Conn
from engine.store.rows import (
    CLAIM_WITH_BODY_MAX,
    DELIVERY_COLUMNS,
    QUEUE_ENTRY_COLUMNS,
    delivery_from,
    queue_entry_from,
    rcpts_json,
)

_CLAIM: LiteralString = (
    "WITH due AS ("
    " SELECT id, owner AS previous FROM deliveries WHERE {where} ORDER BY {order} LIMIT %(limit)s"
    " FOR UPDATE SKIP LOCKED)"
    " UPDATE deliveries d SET state = 'inflight', attempts = d.attempts + 1, last_attempt_at = %(now)s,"
    " owner = %(node)s, leased_until = %(until)s, lease = nextval('lease_tokens')"
    " FROM due, messages m LEFT JOIN bodies b ON b.queue_id = m.queue_id AND m.size <= %(with_body)s"
    " WHERE d.id = due.id AND m.queue_id = d.queue_id"
    f" RETURNING {DELIVERY_COLUMNS}, b.raw, d.lease, due.previous, d.next_attempt_at"
)
_EXPIRED: LiteralString = _CLAIM.format(where="state = 'inflight' AND leased_until < %(now)s", order="leased_until")
_DUE: LiteralString = _CLAIM.format(where="state = 'queued' AND next_attempt_at <= %(now)s", order="next_attempt_at")
_NEXT_DUE: LiteralString = (
    "SELECT least((SELECT min(next_attempt_at) FROM deliveries WHERE state = 'queued'),"
    " (SELECT min(leased_until) FROM deliveries WHERE state = 'inflight' AND owner <> %s))"
)


@dataclass(frozen=True, slots=True)
class Claim:
    """What one claim took: the deliveries (next due first), their lease tokens, and takeovers."""

    deliveries: tuple[Delivery, ...]
    leases: dict[int, int]  # delivery id -> lease token
    taken_over: tuple[tuple[int, str], ...]  # (delivery id, node whose expired lease was taken)
    next_due: float | None  # the next queued delivery due, or another node's lease expiring


async def claim(conn: Conn, now: float, limit: int, *, node: str, lease_seconds: float) -> Claim:
    """Claim up to `limit` deliveries into leases of `node`, in the caller's transaction."""
    params = {"now": now, "limit": limit, "node": node, "until": now + lease_seconds,
              "with_body": CLAIM_WITH_BODY_MAX}
    rows: list[tuple[Any, ...]] = []
    if limit > 0:
        rows = await (await conn.execute(_EXPIRED, params)).fetchall()
        if len(rows) < limit:
            params["limit"] = limit - len(rows)
            rows += await (await conn.execute(_DUE, params)).fetchall()
    (next_due,) = await (await conn.execute(_NEXT_DUE, (node,))).fetchone() or (None,)
    rows.sort(key=lambda row: (row[-1], row[0]))
    return Claim(
        deliveries=tuple(delivery_from(row[:14]) for row in rows),
        leases={row[0]: row[14] for row in rows},
        taken_over=tuple((row[0], row[15]) for row in rows if row[15] is not None),
        next_due=next_due,
    )


async def record(conn: Conn, rec: AttemptRecord, *, node: str, lease: int | None) -> tuple[bool, int]:
    """Apply an attempt record while `node` holds the lease (module docstring), in the caller's
    transaction. Returns (applied, messages dropped)."""
    row = await (await conn.execute(
        "SELECT queue_id, state, owner, lease FROM deliveries WHERE id = %s FOR UPDATE", (rec.delivery_id,)
    )).fetchone()
    if row is None or row[1] != "inflight" or row[2] != node or (lease is not None and row[3] != lease):
        return False, 0
    queue_id = row[0]
    if rec.dsn is not None:
        if rec.dsn.body is not None:
            await insert_large(conn, rec.dsn)
        else:
            await insert_accepts(conn, (rec.dsn,))
        await conn.execute("INSERT INTO dsn_sent (queue_id, sent_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                           (queue_id, rec.dsn.envelope.received_at))
    if any(r.status == "pending" for r in rec.rcpts):
        await conn.execute(
            "UPDATE deliveries SET state = 'queued', rcpts = %s, next_attempt_at = %s, last_error = %s,"
            " attempts = attempts - %s, owner = NULL, leased_until = NULL, lease = NULL WHERE id = %s",
            (rcpts_json(rec.rcpts), rec.next_attempt_at, rec.last_error, 0 if rec.attempted else 1, rec.delivery_id),
        )
        return True, 0
    await conn.execute("DELETE FROM deliveries WHERE id = %s", (rec.delivery_id,))
    return True, await drop_unreferenced(conn, (queue_id,))


async def renew(conn: Conn, now: float, *, node: str, leases: list[int], lease_seconds: float) -> set[int]:
    """Extend the given leases of `node` to now + lease time; returns the delivery ids renewed
    (a lease missing from them was lost: taken over, or finished)."""
    if not leases:
        return set()
    cur = await conn.execute(
        "UPDATE deliveries SET leased_until = %s WHERE state = 'inflight' AND owner = %s AND lease = ANY(%s)"
        " RETURNING id",
        (now + lease_seconds, node, leases),
    )
    return {row[0] for row in await cur.fetchall()}


async def requeue_own(conn: Conn, now: float, *, node: str) -> int:
    cur = await conn.execute(
        "UPDATE deliveries SET state = 'queued', next_attempt_at = %s, owner = NULL, leased_until = NULL,"
        " lease = NULL WHERE state = 'inflight' AND owner = %s",
        (now, node),
    )
    return max(cur.rowcount, 0)


async def summary(conn: Conn) -> QueueSummary:
    counts: dict[str, int] = {}
    for state, count in await (await conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state")).fetchall():
        counts[state] = count
    row = await (await conn.execute("SELECT min(next_attempt_at) FROM deliveries WHERE state = 'queued'")).fetchone()
    return QueueSummary(counts.get("queued", 0), counts.get("inflight", 0), row[0] if row else None)


async def entries(conn: Conn, tenant: str | None) -> list[QueueEntry]:
    """Deliveries waiting or in flight: in flight first, then by due time."""
    where: LiteralString = " WHERE d.tenant = %s" if tenant is not None else ""
    cur = await conn.execute(
        f"SELECT {QUEUE_ENTRY_COLUMNS} FROM deliveries d JOIN messages m USING (queue_id)"
        + where + " ORDER BY d.state = 'queued', d.next_attempt_at, d.id",
        (tenant,) if tenant is not None else (),
    )
    return [queue_entry_from(row) for row in await cur.fetchall()]


async def flush(conn: Conn, now: float, tenant: str | None) -> int:
    """Make waiting deliveries (of `tenant`) due at `now`; returns how many were waiting."""
    sql: LiteralString = "UPDATE deliveries SET next_attempt_at = %s WHERE state = 'queued' AND next_attempt_at > %s"
    args: tuple[Any, ...] = (now, now)
    if tenant is not None:
        sql, args = sql + " AND tenant = %s", (*args, tenant)
    cur = await conn.execute(sql, args)
    return max(cur.rowcount, 0)
