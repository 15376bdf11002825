"""Storing accepted messages, and dropping a message once nothing references it.

Contract: `_insert_messages` stores every row of the accepts it is given (`engine.store.rows.AcceptRows`)
with one multi-row INSERT per table and chunk of `_ROWS_PER_INSERT` rows, parents first (for the
foreign keys): a `bodies` BLOB, or a `body_files` row for a message already moved into `bodies/` by
`_adopt` (which fsyncs the file and its directory first and never replaces an existing body).
Whether an accept is stored at all is `engine.store.rows.keeps`. `_drop_if_unreferenced`
deletes a message and its body in the transaction that drops its last reference (delivery, held
quarantine entry, archive row); a body file is unlinked once that transaction commits.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from engine.store.base import Accepted
from engine.store.permissions import FILE_MODE
from engine.store.rows import AcceptRows
from engine.store.sqlite.writer import _Txn

# Multi-row INSERTs (the `AcceptRows` list, the statement, a row's placeholders), one statement per
# table and chunk: each statement is one GIL hand-off between the writer thread and the event loop,
# whichever number of messages it stores.
_INSERTS = (
    ("bodies", "INSERT INTO bodies VALUES ", "(?,?)"),
    ("spooled", "INSERT INTO body_files VALUES ", "(?,?)"),
    ("messages", "INSERT INTO messages VALUES ", "(?,?,?,?,?,?,?,?,?,?,?)"),
    ("archive", "INSERT INTO archive VALUES ", "(?,?)"),
    ("deliveries", "INSERT INTO deliveries (queue_id, tenant, route_by, mail_from, rcpts, headers, subject_prefix,"
     " created_at, next_attempt_at, state) VALUES ", "(?,?,?,?,?,?,?,?,?,'queued')"),
    ("quarantine", "INSERT INTO quarantine VALUES ", "(?,?,?,?,?,?,?,?,?,?,?,?,'held',?)"),
)
_ROWS_PER_INSERT = 64  # 64 x 13 parameters stays far below SQLite's limit (32,766)


def _insert_messages(conn: sqlite3.Connection, msgs: Iterable[Accepted]) -> None:
    """Insert every row of `msgs` (parents first, for the foreign keys)."""
    rows = AcceptRows()
    for msg in msgs:
        rows.add(msg)
    for name, head, placeholder in _INSERTS:
        values: list[tuple[Any, ...]] = getattr(rows, name)
        for start in range(0, len(values), _ROWS_PER_INSERT):
            chunk = values[start:start + _ROWS_PER_INSERT]
            conn.execute(head + ",".join([placeholder] * len(chunk)), [v for row in chunk for v in row])


def _insert_message(txn: _Txn, msg: Accepted) -> None:
    _insert_messages(txn.conn, (msg,))
    txn.written += 1


def _drop_if_unreferenced(txn: _Txn, queue_id: str) -> None:
    cur = txn.conn.execute(
        "DELETE FROM messages WHERE queue_id = ?1"
        " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE queue_id = ?1)"
        " AND NOT EXISTS (SELECT 1 FROM quarantine WHERE queue_id = ?1 AND status = 'held')"
        " AND NOT EXISTS (SELECT 1 FROM archive WHERE queue_id = ?1)",
        (queue_id,),
    )
    if cur.rowcount:
        txn.conn.execute("DELETE FROM bodies WHERE queue_id = ?", (queue_id,))
        if txn.conn.execute("DELETE FROM body_files WHERE queue_id = ?", (queue_id,)).rowcount:
            txn.unlink.append(queue_id)
        txn.deleted += 1


def _adopt(spool: Path, target: Path) -> None:
    """Make the spool file durable as `target` (fsync the file, move it, fsync the directory)."""
    fd = os.open(spool, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fchmod(fd, FILE_MODE)  # a mail body is the gateway user's only, whoever wrote the file
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(spool, target)  # never replaces an existing body (FileExistsError)
    os.unlink(spool)
    _fsync_dir(target.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
