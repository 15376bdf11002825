"""Outbound rate limits shared by every node: sliding windows in `outbound_sends`.

Contract: `take` runs in the caller's transaction and first takes a transaction-scoped advisory
lock per key (`pg_advisory_xact_lock` on a 64-bit hash of "liveprism.rate:" + key, keys in sorted
order so that two takers of overlapping keys never deadlock). Every node's `take` of a key thus
queues on the same lock; each statement after the lock sees what the previous holder committed,
so checking the limit and counting the send is atomic across the cluster: N nodes together
never count more than `limit` sends of a key within the window. Rows past the window are
dropped as the key is taken (no table-wide sweep). `exceeded` only reads (no lock): the early
check at MAIL may be a send short, the `take` at the end of DATA decides.
"""

from __future__ import annotations

from engine.store.postgres.connection import Conn

LOCK_PREFIX = "liveprism.rate:"


async def take(conn: Conn, limits: tuple[tuple[str, int], ...], now: float, window: float) -> str | None:
    """Count one send under every key, unless a key already has `limit` sends within `window`
    seconds: then nothing is counted and that key is returned."""
    since = now - window
    for key in sorted({key for key, _ in limits}):
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (LOCK_PREFIX + key,))
    for key, limit in limits:
        await conn.execute("DELETE FROM outbound_sends WHERE key = %s AND at <= %s", (key, since))
        row = await (await conn.execute("SELECT count(*) FROM outbound_sends WHERE key = %s AND at > %s",
                                        (key, since))).fetchone()
        if row is not None and row[0] >= limit:
            return key
    async with conn.cursor() as cur:
        await cur.executemany("INSERT INTO outbound_sends (key, at) VALUES (%s, %s)", [(key, now) for key, _ in limits])
    return None


async def exceeded(conn: Conn, limits: tuple[tuple[str, int], ...], now: float, window: float) -> str | None:
    """The first key with `limit` sends within `window` seconds before `now`; counts nothing."""
    for key, limit in limits:
        row = await (await conn.execute("SELECT count(*) FROM outbound_sends WHERE key = %s AND at > %s",
                                        (key, now - window))).fetchone()
        if row is not None and row[0] >= limit:
            return key
    return None
