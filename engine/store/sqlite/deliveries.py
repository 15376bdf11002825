"""The delivery queue's writes: claims, attempt records, in-flight deliveries made due again.

Contract: `_claim` marks due deliveries in flight with their attempt counted before the try
(messages up to `CLAIM_WITH_BODY_MAX` bytes come with their body); `_record` stores a DSN in the
same transaction as the attempt it reports (`dsn_sent` remembers it), reschedules a delivery
with recipients still pending or deletes it, and then drops the message if nothing else needs
it; `_requeue_inflight` makes every in-flight delivery due at once (after a crash an attempt may
thus be repeated, which RFC 5321 §6.1 prefers to losing the message).
"""

from __future__ import annotations

from dataclasses import replace

from engine.store.base import AttemptRecord, Claimed, StoreError
from engine.store.rows import CLAIM_WITH_BODY_MAX, DELIVERY_COLUMNS, delivery_from, rcpts_json
from engine.store.sqlite.accept import _drop_if_unreferenced, _insert_message
from engine.store.sqlite.writer import _Txn


def _claim(txn: _Txn, now: float, limit: int) -> Claimed:
    conn = txn.conn
    rows = conn.execute(
        f"SELECT {DELIVERY_COLUMNS}, CASE WHEN m.size <= {CLAIM_WITH_BODY_MAX} THEN b.raw END"
        " FROM deliveries d JOIN messages m USING (queue_id) LEFT JOIN bodies b USING (queue_id)"
        " WHERE d.state = 'queued' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
        (now, limit),
    ).fetchall()
    conn.executemany(
        "UPDATE deliveries SET state = 'inflight', attempts = attempts + 1, last_attempt_at = ? WHERE id = ?",
        [(now, row[0]) for row in rows],
    )
    (next_due,) = conn.execute("SELECT min(next_attempt_at) FROM deliveries WHERE state = 'queued'").fetchone()
    claimed = (delivery_from(row) for row in rows)
    return Claimed(tuple(replace(d, attempts=d.attempts + 1) for d in claimed), next_due)


def _record(txn: _Txn, record: AttemptRecord) -> None:
    conn = txn.conn
    row = conn.execute("SELECT queue_id FROM deliveries WHERE id = ?", (record.delivery_id,)).fetchone()
    if row is None:
        raise StoreError(f"delivery {record.delivery_id} does not exist")
    if record.dsn is not None:
        _insert_message(txn, record.dsn)
        conn.execute("INSERT OR IGNORE INTO dsn_sent (queue_id, sent_at) VALUES (?, ?)",
                     (row[0], record.dsn.envelope.received_at))
    if any(r.status == "pending" for r in record.rcpts):
        conn.execute(
            "UPDATE deliveries SET state = 'queued', rcpts = ?, next_attempt_at = ?, last_error = ?,"
            " attempts = attempts - ? WHERE id = ?",
            (
                rcpts_json(record.rcpts),
                record.next_attempt_at,
                record.last_error,
                0 if record.attempted else 1,
                record.delivery_id,
            ),
        )
    else:
        conn.execute("DELETE FROM deliveries WHERE id = ?", (record.delivery_id,))
        _drop_if_unreferenced(txn, row[0])


def _requeue_inflight(txn: _Txn, now: float) -> int:
    return int(
        txn.conn.execute(
            "UPDATE deliveries SET state = 'queued', next_attempt_at = ? WHERE state = 'inflight'", (now,)
        ).rowcount
    )
