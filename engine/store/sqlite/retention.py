"""Retention: what expires, and the messages that go with it.

Contract: `_purge` drops archive rows older than the archive retention, quarantine entries (any
status) older than the quarantine retention, `dsn_sent` rows older than `DSN_MEMORY_DAYS` and
expired MTA-STS policies; messages nothing references any more go in the same transaction.
"""

from __future__ import annotations

from engine.store.base import PurgeResult
from engine.store.rows import DAY, DSN_MEMORY_DAYS
from engine.store.sqlite.accept import _drop_if_unreferenced
from engine.store.sqlite.writer import _Txn


def _purge(txn: _Txn, now: float, archive_days: int, quarantine_days: int) -> PurgeResult:
    conn = txn.conn
    archive_cut = now - archive_days * DAY
    quarantine_cut = now - quarantine_days * DAY
    archived = [r[0] for r in conn.execute("SELECT queue_id FROM archive WHERE archived_at < ?", (archive_cut,))]
    conn.execute("DELETE FROM archive WHERE archived_at < ?", (archive_cut,))
    quarantined = [
        r[0] for r in conn.execute("SELECT queue_id FROM quarantine WHERE created_at < ?", (quarantine_cut,))
    ]
    conn.execute("DELETE FROM quarantine WHERE created_at < ?", (quarantine_cut,))
    conn.execute("DELETE FROM dsn_sent WHERE sent_at < ?", (now - DSN_MEMORY_DAYS * DAY,))
    conn.execute("DELETE FROM mta_sts WHERE expires_at < ?", (now,))
    before = txn.deleted
    for queue_id in dict.fromkeys(archived + quarantined):
        _drop_if_unreferenced(txn, queue_id)
    return PurgeResult(archived=len(archived), quarantined=len(quarantined), messages=txn.deleted - before)
