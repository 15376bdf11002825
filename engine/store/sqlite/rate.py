"""Outbound rate limits: counting sends per key within a sliding window (table `outbound_sends`).

Contract: `_rate_take` runs in one write transaction shared by every process on the store, so that
checking the limits and counting a send is atomic.
"""

from __future__ import annotations

from engine.store.sqlite.writer import _Txn


def _rate_take(txn: _Txn, limits: tuple[tuple[str, int], ...], now: float, window: float) -> str | None:
    """Count one send under every key, unless a key already has `limit` sends within `window`
    seconds: then nothing is counted and that key is returned. Rows past the window are dropped."""
    since = now - window
    for key, limit in limits:
        txn.conn.execute("DELETE FROM outbound_sends WHERE key = ? AND at <= ?", (key, since))
        (count,) = txn.conn.execute(
            "SELECT count(*) FROM outbound_sends WHERE key = ? AND at > ?", (key, since)
        ).fetchone()
        if count >= limit:
            return key
    txn.conn.executemany("INSERT INTO outbound_sends VALUES (?, ?)", [(key, now) for key, _ in limits])
    return None
