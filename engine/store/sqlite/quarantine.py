"""Quarantine decisions: releasing or deleting a held entry.

Contract: only a `held` entry changes (else a `QuarantineRefusal`). Release queues a delivery due
at once, with the copy's headers: inbound, one over the tenant's routes; outbound, one per
recipient domain (its MX). Delete drops the message if nothing else (archive, deliveries) needs it.
"""

from __future__ import annotations

from engine.store.base import QuarantineEntry, QuarantineRefusal
from engine.store.rows import QUARANTINE_COLUMNS, quarantine_from, release_rows
from engine.store.sqlite.accept import _drop_if_unreferenced
from engine.store.sqlite.writer import _Txn


def _change_quarantine(txn: _Txn, entry_id: str, now: float, release: bool) -> QuarantineEntry | QuarantineRefusal:
    conn = txn.conn
    row = conn.execute(
        "SELECT q.status, q.queue_id, q.tenant, q.recipients, q.headers, m.mail_from, m.direction"
        " FROM quarantine q LEFT JOIN messages m USING (queue_id) WHERE q.id = ?",
        (entry_id,),
    ).fetchone()
    if row is None:
        return QuarantineRefusal(entry_id, "not-found")
    status, queue_id, tenant, recipients, headers, mail_from, direction = row
    if status != "held":
        return QuarantineRefusal(entry_id, "not-held")
    conn.execute(
        "UPDATE quarantine SET status = ?, status_at = ? WHERE id = ?",
        ("released" if release else "deleted", now, entry_id),
    )
    if release:
        # inbound: one delivery over the tenant's routes; outbound: one per recipient domain (its MX)
        for delivery in release_rows(queue_id, tenant, recipients, headers, mail_from, direction, now):
            conn.execute(
                "INSERT INTO deliveries (queue_id, tenant, route_by, mail_from, rcpts, headers, subject_prefix,"
                " created_at, state, next_attempt_at) VALUES (?,?,?,?,?,?,NULL,?,'queued',?)",
                delivery,
            )
    else:
        _drop_if_unreferenced(txn, queue_id)
    entry = conn.execute(f"SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = ?", (entry_id,)).fetchone()
    return quarantine_from(entry)
