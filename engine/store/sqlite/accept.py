"""Storing accepted messages, and dropping a message once nothing references it.

Contract: `_insert_messages` stores every row of the accepts it is given with one multi-row
INSERT per table and chunk of `_ROWS_PER_INSERT` rows, parents first (for the foreign keys): a
`bodies` BLOB, or a `body_files` row for a message already moved into `bodies/` by `_adopt`
(which fsyncs the file and its directory first and never replaces an existing body). `_keeps` tells
whether an accept would be referenced at all (else it is not stored). `_drop_if_unreferenced`
deletes a message and its body in the transaction that drops its last reference (delivery, held
quarantine entry, archive row); a body file is unlinked once that transaction commits.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.policy.models import Action
from engine.store.base import Accepted, RcptState, RouteBy
from engine.store.permissions import FILE_MODE
from engine.store.sqlite.rows import _domain, _json, _rcpts_json, quarantine_id
from engine.store.sqlite.writer import _Txn

_STORED_BODY_ACTIONS = frozenset({Action.deliver, Action.tag, Action.quarantine})  # copies that need the body


@dataclass(slots=True)
class _AcceptRows:
    """The rows of accepted messages, per table, in column order."""

    bodies: list[tuple[Any, ...]] = field(default_factory=list)
    body_files: list[tuple[Any, ...]] = field(default_factory=list)
    messages: list[tuple[Any, ...]] = field(default_factory=list)
    archive: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, msg: Accepted) -> None:
        env = msg.envelope
        subject = msg.subject
        if msg.body is not None:  # already renamed into bodies/ by `accept`
            self.body_files.append((msg.queue_id, msg.size))
        else:
            self.bodies.append((msg.queue_id, msg.raw))
        self.messages.append((
            msg.queue_id, env.received_at, env.mail_from, _json(list(env.rcpts)), env.client_ip, env.helo,
            env.direction, subject, msg.size, msg.policy_version, _json(dict(msg.verdict)),
        ))
        if msg.archive:
            self.archive.append((msg.queue_id, env.received_at))
        for copy in msg.copies:
            if copy.action in (Action.deliver, Action.tag):
                # A copy for the tenant's routes is one delivery; a copy for the MX of each recipient
                # domain (outbound mail, DSNs) is one delivery row per domain (RFC 5321 §5.1).
                groups: list[tuple[RouteBy, tuple[str, ...]]]
                if copy.route_by == "tenant":
                    groups = [("tenant", copy.recipients)]
                else:
                    by_domain: dict[str, list[str]] = {}
                    for rcpt in copy.recipients:
                        by_domain.setdefault(_domain(rcpt), []).append(rcpt)
                    groups = [("address", tuple(rcpts)) for rcpts in by_domain.values()]
                for route_by, rcpts in groups:
                    self.deliveries.append((
                        msg.queue_id, copy.tenant, route_by, env.mail_from, _rcpts_json(RcptState(r) for r in rcpts),
                        copy.headers, copy.subject_prefix, env.received_at, env.received_at,
                    ))
            elif copy.action is Action.quarantine:
                verdict = copy.verdict_json()
                self.quarantine.append((
                    quarantine_id(msg.queue_id, copy.tenant), msg.queue_id, copy.tenant, _json(list(copy.recipients)),
                    copy.headers, env.mail_from, subject, copy.reason, copy.score, _json(verdict["hits"]),
                    _json(verdict), env.received_at, env.received_at,
                ))


# Multi-row INSERTs, one statement per table and chunk: each statement is one GIL hand-off
# between the writer thread and the event loop, whichever number of messages it stores.
_INSERTS = (
    ("bodies", "INSERT INTO bodies VALUES ", "(?,?)"),
    ("body_files", "INSERT INTO body_files VALUES ", "(?,?)"),
    ("messages", "INSERT INTO messages VALUES ", "(?,?,?,?,?,?,?,?,?,?,?)"),
    ("archive", "INSERT INTO archive VALUES ", "(?,?)"),
    ("deliveries", "INSERT INTO deliveries (queue_id, tenant, route_by, mail_from, rcpts, headers, subject_prefix,"
     " created_at, next_attempt_at, state) VALUES ", "(?,?,?,?,?,?,?,?,?,'queued')"),
    ("quarantine", "INSERT INTO quarantine VALUES ", "(?,?,?,?,?,?,?,?,?,?,?,?,'held',?)"),
)
_ROWS_PER_INSERT = 64  # 64 x 13 parameters stays far below SQLite's limit (32,766)


def _insert_messages(conn: sqlite3.Connection, msgs: Iterable[Accepted]) -> None:
    """Insert every row of `msgs` (parents first, for the foreign keys)."""
    rows = _AcceptRows()
    for msg in msgs:
        rows.add(msg)
    for table, head, placeholder in _INSERTS:
        values: list[tuple[Any, ...]] = getattr(rows, table)
        for start in range(0, len(values), _ROWS_PER_INSERT):
            chunk = values[start:start + _ROWS_PER_INSERT]
            conn.execute(head + ",".join([placeholder] * len(chunk)), [v for row in chunk for v in row])


def _insert_message(txn: _Txn, msg: Accepted) -> None:
    _insert_messages(txn.conn, (msg,))
    txn.written += 1


def _keeps(msg: Accepted) -> bool:
    """Whether anything would reference the message (else there is nothing to store)."""
    return msg.archive or any(copy.action in _STORED_BODY_ACTIONS for copy in msg.copies)


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
