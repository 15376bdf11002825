"""Embedded store: SQLite (WAL) holding the raw messages and their index, written by one thread.

Layout under the state directory::

    index.sqlite3 (+ -wal, -shm)   bodies, messages, deliveries, quarantine, archive, outbound_sends
    bodies/<queue id>              the raw message, for messages the SMTP layer spooled to disk
    spool/                         messages being received (`Store.spool_dir`), not yet accepted
    owner.lock                     flock(2)ed by the gateway that owns the store
    writers.intent                 turns at the write lock between processes (`write_turns`)

Write path (group commit). Every change goes through one writer thread that owns the write
connection. The thread takes every operation queued at that moment as one batch, runs them in
one transaction (BEGIN IMMEDIATE … COMMIT; should one operation raise, the batch is rerun with
each operation in its own SAVEPOINT, so that it fails alone), and only then resolves the
callers' futures (an `accept` returns, the SMTP layer says 250). The raw message is a row of
`bodies`, written in the same transaction as its index rows: one batch costs one WAL fsync
(`synchronous=FULL`), however many messages it holds, and the asyncio loop never touches the
disk for writes. The writer thread shares the GIL with the event loop, and every statement
hands it over twice, so the accepts of a batch are stored with one multi-row INSERT per table,
and each loop is woken once per batch to settle its callers' futures. (An earlier version kept
one file per message; its per-file fdatasync and the thread hand-offs around it made a batch
several times slower than the transaction itself.) Every submitted operation is settled: with
its result, with its own exception, or with `StoreError` if its batch failed, the writer broke
or the store was closing.

Large messages (issue 7 item 10). A message the SMTP layer wrote to a spool file while it arrived
(`Accepted.body`, over `engine.smtp.data.SPOOL_AT`) is never read into the writer: `accept` fsyncs
the file, moves it to `bodies/<queue id>` (link + unlink: never over an existing body), fsyncs that
directory, and only then submits the rows (a `body_files` row instead of a `bodies` BLOB) to the
group commit. Readers stream the file (`open_message`). When the transaction dropping a message's
last reference commits, its file is unlinked.

Durability and crash recovery. A message and its rows commit atomically: after a crash at any
moment a message is either wholly there (acknowledged or about to be) or not at all. The only
leftovers a crash can leave are files: a spool file of a transaction never acknowledged, a body
file renamed in but whose rows never committed, a body file whose rows were deleted but which was
not unlinked yet; the owner's `open` removes all three (every file in `spool/`, every file in
`bodies/` without a `body_files` row). Deliveries left `inflight` by a crash are made due at once by
the owner's `open` (and by a relay process at its start); an attempt that was cut short may
therefore be repeated, which RFC 5321 §6.1 prefers to losing the message. A body is deleted in
the transaction that drops its last reference (delivery, held quarantine entry, archive row).

Other processes open the same database with `owner=False`: the relay process, and the
`quarantine` CLI. They use their own connections, never run the owner's recovery, and take
turns at the write lock with the owner (`engine.store.write_turns`: SQLite's own backoff starved
them), and gather their writes for up to `LINGER` before a transaction, so that they take the
lock less often. The relay commits with `synchronous=NORMAL` (`fsync_commits=False`): a power
loss may roll back its latest attempt records, which only repeats a delivery (or a bounce, with
its DSN in the same transaction); it can never lose an acknowledged message, whose commit was
fsynced by the front end. Queries use a separate read connection in its own
thread. A `SqliteStore` is opened once and closed once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import io
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, BinaryIO, Generic, TypeVar, cast

from engine.policy.models import Action, Direction
from engine.store.base import (
    Accepted,
    AttemptRecord,
    Claimed,
    Delivery,
    Envelope,
    PurgeResult,
    QuarantineEntry,
    QuarantineRefusal,
    QuarantineStatus,
    QueueEntry,
    QueueSummary,
    RcptState,
    RouteBy,
    StoredMessage,
    StoreError,
)
from engine.store.permissions import DIR_MODE, FILE_MODE, create_private, secure_state_dir
from engine.store.write_turns import INTENT_NAME, WriteTurns

_STORED_BODY_ACTIONS = frozenset({Action.deliver, Action.tag, Action.quarantine})  # copies that need the body

log = logging.getLogger("liveprism.store")

T = TypeVar("T")

DB_NAME = "index.sqlite3"
BODIES_DIR = "bodies"
SPOOL_DIR = "spool"
LOCK_NAME = "owner.lock"
SCHEMA_VERSION = 4  # 2: outbound_sends; 3: body_files; 4: dsn_sent, mta_sts (SCHEMA is idempotent: rerun on older)
BUSY_TIMEOUT_MS = 30_000
LOCK_WAIT = 30.0  # seconds an owner waits for the state lock before giving up
MAX_BATCH = 512  # operations per transaction
LINGER = 0.002  # seconds a non-owner's writer gathers operations before taking the write lock
CLAIM_WITH_BODY_MAX = 256 * 1024  # messages up to this size come with their claim (one read fewer)
DAY = 86_400.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS bodies (
    queue_id TEXT PRIMARY KEY,
    raw      BLOB NOT NULL                     -- the message exactly as received
);
CREATE TABLE IF NOT EXISTS body_files (
    queue_id TEXT PRIMARY KEY,                 -- the message is the file bodies/<queue_id>
    size     INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS messages (
    queue_id       TEXT PRIMARY KEY,
    received_at    REAL NOT NULL,
    mail_from      TEXT NOT NULL,
    rcpts          TEXT NOT NULL,              -- JSON array
    client_ip      TEXT NOT NULL,
    helo           TEXT NOT NULL,
    direction      TEXT NOT NULL,
    subject        TEXT NOT NULL,
    size           INTEGER NOT NULL,
    policy_version TEXT NOT NULL,
    verdict        TEXT NOT NULL               -- JSON
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS archive (
    queue_id    TEXT PRIMARY KEY REFERENCES messages(queue_id),
    archived_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS archive_by_time ON archive(archived_at);
CREATE TABLE IF NOT EXISTS deliveries (
    id              INTEGER PRIMARY KEY,
    queue_id        TEXT NOT NULL REFERENCES messages(queue_id),
    tenant          TEXT NOT NULL,
    route_by        TEXT NOT NULL CHECK (route_by IN ('tenant', 'address')),
    mail_from       TEXT NOT NULL,
    rcpts           TEXT NOT NULL,             -- JSON [{rcpt, status, reply, remote}]
    headers         BLOB NOT NULL,
    subject_prefix  TEXT,
    created_at      REAL NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('queued', 'inflight')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_attempt_at REAL,
    last_error      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS deliveries_by_message ON deliveries(queue_id);
CREATE TABLE IF NOT EXISTS quarantine (
    id         TEXT PRIMARY KEY,
    queue_id   TEXT NOT NULL,                  -- no foreign key: the entry outlives the message
    tenant     TEXT NOT NULL,
    recipients TEXT NOT NULL,                  -- JSON array
    headers    BLOB NOT NULL,
    mail_from  TEXT NOT NULL,
    subject    TEXT NOT NULL,
    reason     TEXT NOT NULL,
    score      REAL,
    hits       TEXT NOT NULL,                  -- JSON array
    verdict    TEXT NOT NULL,                  -- JSON
    created_at REAL NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('held', 'released', 'deleted')),
    status_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS quarantine_by_status ON quarantine(status, created_at);
CREATE INDEX IF NOT EXISTS quarantine_by_message ON quarantine(queue_id);
CREATE TABLE IF NOT EXISTS outbound_sends (   -- one row per accepted outbound message and rate key
    key TEXT NOT NULL,                         -- "sender:ADDRESS" or "tenant:NAME"
    at  REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbound_sends_by_key ON outbound_sends(key, at);
CREATE TABLE IF NOT EXISTS dsn_sent (
    queue_id TEXT PRIMARY KEY,                 -- a message that got its DSN (at most one per message)
    sent_at  REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS mta_sts (
    domain     TEXT PRIMARY KEY,               -- a recipient domain's MTA-STS policy (RFC 8461 §5)
    policy     TEXT NOT NULL,                  -- JSON, as engine/relay/mta_sts.py writes it
    expires_at REAL NOT NULL
) WITHOUT ROWID;
"""
DSN_MEMORY_DAYS = 30  # a dsn_sent row outlives every delivery of its message (give_up_after is days)

_DELIVERY_COLUMNS = (
    "d.id, d.queue_id, d.tenant, d.route_by, d.mail_from, d.rcpts, d.headers, d.subject_prefix,"
    " m.received_at, d.created_at, d.attempts, d.last_error, m.client_ip"
)
_QUARANTINE_COLUMNS = (
    "id, queue_id, tenant, recipients, mail_from, subject, reason, score, hits, created_at, status, status_at"
)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters of the writer thread (for tests, the benchmark and metrics)."""

    batches: int  # transactions committed (one WAL fsync each)
    operations: int  # operations committed in them
    messages_written: int
    messages_deleted: int


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What the owner's `open` repaired after a crash."""

    requeued: int  # deliveries that were in flight, due again now
    files_removed: int = 0  # spool files and unreferenced body files a crash left


@dataclass(slots=True)
class _Txn:
    """What one operation sees inside the batch transaction."""

    conn: sqlite3.Connection
    written: int = 0  # messages stored by the operation
    deleted: int = 0  # messages it dropped because nothing references them any more
    unlink: list[str] = field(default_factory=list)  # queue ids whose body file goes once this commits


@dataclass(slots=True)
class _Op(Generic[T]):
    fn: Callable[[_Txn], T]
    future: asyncio.Future[T]  # the caller's: settled in its own loop (`_settle`)
    loop: asyncio.AbstractEventLoop
    accept: Accepted | None = None  # an accept: batched with the others into multi-row INSERTs


_STOP = object()


def _settle(outcomes: list[tuple[_Op[Any], Any]]) -> None:
    """From the writer thread: give each caller its result (or exception), waking each event
    loop once per batch rather than once per operation."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
    for op, outcome in outcomes:
        by_loop.setdefault(op.loop, []).append((op.future, outcome))
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, settled)


def _resolve(settled: list[tuple[asyncio.Future[Any], Any]]) -> None:
    """In the caller's loop. One future that cannot take its outcome must not strand the others."""
    for future, outcome in settled:
        if future.done():  # cancelled by its caller meanwhile
            continue
        try:
            if isinstance(outcome, BaseException):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
        except Exception as exc:  # e.g. StopIteration cannot be set on a future
            future.set_exception(StoreError(f"store operation failed: {outcome!r} ({exc})"))


class _OperationFailed(Exception):
    """An operation of a batch run without savepoints raised: rerun the batch isolated."""


# ---------------------------------------------------------------- row conversion


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _rcpts_json(rcpts: Iterable[RcptState]) -> str:
    return _json([{"rcpt": r.rcpt, "status": r.status, "reply": r.reply, "remote": r.remote} for r in rcpts])


def _rcpts_from(text: str) -> tuple[RcptState, ...]:
    return tuple(RcptState(r["rcpt"], r["status"], r["reply"], r["remote"]) for r in json.loads(text))


def _delivery_from(row: sqlite3.Row) -> Delivery:
    return Delivery(
        id=row[0],
        queue_id=row[1],
        tenant=row[2],
        route_by=cast(RouteBy, row[3]),
        mail_from=row[4],
        rcpts=_rcpts_from(row[5]),
        headers=bytes(row[6]),
        subject_prefix=row[7],
        received_at=row[8],
        created_at=row[9],
        attempts=row[10],
        last_error=row[11],
        generated=row[12] == "",  # no client: the gateway wrote it (a DSN)
        raw=bytes(row[13]) if row[13] is not None else None,
    )


def _quarantine_from(row: sqlite3.Row) -> QuarantineEntry:
    return QuarantineEntry(
        id=row[0],
        queue_id=row[1],
        tenant=row[2],
        recipients=tuple(json.loads(row[3])),
        mail_from=row[4],
        subject=row[5],
        reason=row[6],
        score=row[7],
        hits=tuple(json.loads(row[8])),
        created_at=row[9],
        status=cast(QuarantineStatus, row[10]),
        status_at=row[11],
    )


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def quarantine_id(queue_id: str, tenant: str) -> str:
    """The id of a tenant's quarantined copy of a message."""
    return f"{queue_id}-{tenant}"


# ---------------------------------------------------------------- operations (run in the writer thread)


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


def _claim(txn: _Txn, now: float, limit: int) -> Claimed:
    conn = txn.conn
    rows = conn.execute(
        f"SELECT {_DELIVERY_COLUMNS}, CASE WHEN m.size <= {CLAIM_WITH_BODY_MAX} THEN b.raw END"
        " FROM deliveries d JOIN messages m USING (queue_id) LEFT JOIN bodies b USING (queue_id)"
        " WHERE d.state = 'queued' AND d.next_attempt_at <= ? ORDER BY d.next_attempt_at LIMIT ?",
        (now, limit),
    ).fetchall()
    conn.executemany(
        "UPDATE deliveries SET state = 'inflight', attempts = attempts + 1, last_attempt_at = ? WHERE id = ?",
        [(now, row[0]) for row in rows],
    )
    (next_due,) = conn.execute("SELECT min(next_attempt_at) FROM deliveries WHERE state = 'queued'").fetchone()
    claimed = (_delivery_from(row) for row in rows)
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
                _rcpts_json(record.rcpts),
                record.next_attempt_at,
                record.last_error,
                0 if record.attempted else 1,
                record.delivery_id,
            ),
        )
    else:
        conn.execute("DELETE FROM deliveries WHERE id = ?", (record.delivery_id,))
        _drop_if_unreferenced(txn, row[0])


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
        rcpts: list[str] = json.loads(recipients)
        # inbound: one delivery over the tenant's routes; outbound: one per recipient domain (its MX)
        groups: dict[str, list[str]] = {}
        for rcpt in rcpts:
            groups.setdefault("" if direction == "inbound" else _domain(rcpt), []).append(rcpt)
        for group in groups.values():
            conn.execute(
                "INSERT INTO deliveries (queue_id, tenant, route_by, mail_from, rcpts, headers, subject_prefix,"
                " created_at, state, next_attempt_at) VALUES (?,?,?,?,?,?,NULL,?,'queued',?)",
                (
                    queue_id,
                    tenant,
                    "tenant" if direction == "inbound" else "address",
                    mail_from,
                    _rcpts_json(RcptState(r) for r in group),
                    headers,
                    now,
                    now,
                ),
            )
    else:
        _drop_if_unreferenced(txn, queue_id)
    entry = conn.execute(f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine WHERE id = ?", (entry_id,)).fetchone()
    return _quarantine_from(entry)


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


def _requeue_inflight(txn: _Txn, now: float) -> int:
    return int(
        txn.conn.execute(
            "UPDATE deliveries SET state = 'queued', next_attempt_at = ? WHERE state = 'inflight'", (now,)
        ).rowcount
    )


def _recover(txn: _Txn, now: float, state_dir: Path) -> RecoveryReport:
    """Requeue deliveries left in flight; remove files a crash left behind (module docstring)."""
    removed = 0
    for leftover in os.scandir(state_dir / SPOOL_DIR):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover.path)
            removed += 1
    known = {row[0] for row in txn.conn.execute("SELECT queue_id FROM body_files")}
    for body in os.scandir(state_dir / BODIES_DIR):
        if body.name not in known:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(body.path)
                removed += 1
    return RecoveryReport(_requeue_inflight(txn, now), removed)


# ---------------------------------------------------------------- the store


class SqliteStore:
    """`engine.store.base.Store` on SQLite; see the module docstring."""

    def __init__(self, state_dir: Path, *, owner: bool = True, fsync_commits: bool = True) -> None:
        self.state_dir = state_dir
        self.owner = owner
        self.fsync_commits = fsync_commits
        self.db_path = state_dir / DB_NAME
        self.bodies_dir = state_dir / BODIES_DIR
        self.recovery: RecoveryReport | None = None
        self._queue: queue.SimpleQueue[_Op[Any] | object] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._turns: WriteTurns | None = None
        self._closing = False
        self._stats = StoreStats(0, 0, 0, 0)

    @property
    def stats(self) -> StoreStats:
        return self._stats

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create directories and schema; as owner, lock the state directory and recover.

        Recovery: deliveries left `inflight` by a crash become due now (a message is stored
        atomically with its rows, so nothing half-written is ever left to clean up).
        """
        await asyncio.to_thread(self._prepare)
        conn = await asyncio.to_thread(self._connect)
        conn.execute("PRAGMA busy_timeout = 0")  # the writer waits in WriteTurns, fairly, not in SQLite
        self._turns = WriteTurns(self.state_dir, owner=self.owner, timeout=BUSY_TIMEOUT_MS / 1000)
        self._writer = threading.Thread(target=self._writer_main, args=(conn,), name="liveprism-store", daemon=True)
        self._writer.start()
        self._reader = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="liveprism-store-read")
        if self.owner:
            self.recovery = await self._submit(lambda txn: _recover(txn, time.time(), self.state_dir))
            log.info("store opened: %d in-flight deliveries requeued, %d leftover files removed",
                     self.recovery.requeued, self.recovery.files_removed)

    def _prepare(self) -> None:
        created = not self.state_dir.exists()
        if self.owner or created:  # 0700 directory, 0600 files whatever the umask (a non-owner only reads)
            for repair in secure_state_dir(self.state_dir):
                log.warning("state directory was readable by others; repaired %s", repair)
            for name in (DB_NAME, LOCK_NAME, INTENT_NAME):  # private before SQLite or a lock opens them
                create_private(self.state_dir / name)  # (SQLite gives -wal and -shm the db file's mode)
            for name in (BODIES_DIR, SPOOL_DIR):
                (self.state_dir / name).mkdir(mode=DIR_MODE, exist_ok=True)
        if created:  # make the new directory entry durable
            _fsync_dir(self.state_dir.parent)
        if self.owner:
            fd = os.open(self.state_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
            deadline = time.monotonic() + LOCK_WAIT
            while True:  # a relay child of a crashed gateway may still hold it for a moment
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        os.close(fd)
                        raise StoreError(f"{self.state_dir} is in use by another gateway") from None
                    time.sleep(0.1)
            self._lock_fd = fd

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL" if self.fsync_commits else "PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(f"{self.db_path} has schema {version}; this LivePrism knows up to {SCHEMA_VERSION}")
        if version < SCHEMA_VERSION:
            conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        return conn

    async def close(self) -> None:
        """Let the writer finish what is queued, then release threads, connections and the lock.
        Operations submitted from now on fail with StoreError."""
        self._closing = True
        if self._writer is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        if self._turns is not None:
            self._turns.close()
            self._turns = None
        if self._reader is not None:
            reader = self._reader
            if self._reader_conn is not None:
                await asyncio.get_running_loop().run_in_executor(reader, self._reader_conn.close)
                self._reader_conn = None
            reader.shutdown(wait=True)
            self._reader = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
        self._lock_fd = None

    # ------------------------------------------------------------ writer thread

    def _submit(self, fn: Callable[[_Txn], T], accept: Accepted | None = None) -> asyncio.Future[T]:
        if self._writer is None or self._closing or not self._writer.is_alive():
            raise StoreError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, future, loop, accept))
        return future

    def _writer_main(self, conn: sqlite3.Connection) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [cast(_Op[Any], item)]
            gather_until = time.monotonic() + (0.0 if self.owner else LINGER)
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get(timeout=max(0.0, gather_until - time.monotonic()))
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(cast(_Op[Any], item))
            try:
                self._run_batch(conn, batch)
            except BaseException as exc:  # keep the writer alive; nobody in this batch may see success
                log.exception("store writer batch failed")
                _settle([(op, StoreError(f"store write failed: {exc}")) for op in batch])
        conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op[Any]]) -> None:
        live = [op for op in batch if not op.future.cancelled()]  # a race here only costs a wasted write
        if not live:
            return
        try:
            done = self._transaction(conn, live)
        except Exception as exc:  # the whole batch failed: no caller may see success
            _settle([(op, StoreError(f"store write failed: {exc}")) for op in live])
            return
        written = sum(txn.written for _, outcome, txn in done if not isinstance(outcome, BaseException))
        deleted = sum(txn.deleted for _, outcome, txn in done if not isinstance(outcome, BaseException))
        s = self._stats  # updated before any caller wakes, so a caller sees its own write counted
        self._stats = StoreStats(s.batches + 1, s.operations + len(done), s.messages_written + written,
                                 s.messages_deleted + deleted)
        _settle([(op, outcome) for op, outcome, _ in done])

    def _transaction(self, conn: sqlite3.Connection, ops: list[_Op[Any]]) -> list[tuple[_Op[Any], Any, _Txn]]:
        """Run `ops` in one transaction; returns (op, result or exception, its _Txn) for each.

        An operation that raises fails alone: the batch is first run straight through, its
        accepts stored together by multi-row INSERTs (each statement is a GIL hand-off with the
        event loop, so the fewer the better); if anything raises, that transaction is rolled
        back and the batch rerun one operation at a time, each in its own savepoint.
        """
        try:
            return self._run_ops(conn, ops, isolate=False)
        except _OperationFailed:
            return self._run_ops(conn, ops, isolate=True)

    def _run_ops(
        self, conn: sqlite3.Connection, ops: list[_Op[Any]], *, isolate: bool
    ) -> list[tuple[_Op[Any], Any, _Txn]]:
        done: list[tuple[_Op[Any], Any, _Txn]] = []
        assert self._turns is not None
        self._turns.begin(conn)
        try:
            accepts = [op for op in ops if op.accept is not None] if not isolate else []
            if accepts:
                try:
                    _insert_messages(conn, (cast(Accepted, op.accept) for op in accepts))
                except Exception as exc:
                    raise _OperationFailed from exc
                done.extend((op, None, _Txn(conn, written=1)) for op in accepts)
            for op in ops:
                if accepts and op.accept is not None:
                    continue
                txn = _Txn(conn)
                if isolate:
                    conn.execute("SAVEPOINT op")
                try:
                    result = op.fn(txn)
                except Exception as exc:
                    if not isolate:
                        raise _OperationFailed from exc
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    wrapped = isinstance(exc, sqlite3.Error | OSError)
                    done.append((op, StoreError(f"store write failed: {exc}") if wrapped else exc, _Txn(conn)))
                else:
                    if isolate:
                        conn.execute("RELEASE op")
                    done.append((op, result, txn))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        for _, _, txn in done:  # committed: the files of messages that went can go too
            for queue_id in txn.unlink:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.bodies_dir / queue_id)
        return done

    # ------------------------------------------------------------ reader thread

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._reader is None:
            raise StoreError("store is not open")

        def run() -> T:
            if self._reader_conn is None:
                self._reader_conn = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
                self._reader_conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            try:
                return fn(self._reader_conn)
            except sqlite3.Error as exc:
                raise StoreError(f"store read failed: {exc}") from exc

        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    # ------------------------------------------------------------ spool

    async def accept(self, msg: Accepted) -> None:
        """Persist `msg`; returns when the message and its rows are committed and fsynced.

        A message that nothing would reference (only discarded copies, archive off) is not
        stored at all. Raises StoreError when the disk or the database fails.
        """
        tenants = [copy.tenant for copy in msg.copies]
        if len(set(tenants)) != len(tenants):
            raise ValueError(f"{msg.queue_id}: more than one copy for a tenant: {tenants}")
        if not _keeps(msg):
            return
        if msg.body is None:
            await self._submit(lambda txn: _insert_message(txn, msg), accept=msg)
            return
        target = self.bodies_dir / msg.queue_id
        try:
            await asyncio.to_thread(_adopt, msg.body, target)
        except OSError as exc:
            raise StoreError(f"cannot store the message file of {msg.queue_id}: {exc}") from exc
        try:
            await self._submit(lambda txn: _insert_message(txn, msg), accept=msg)
        except StoreError:  # rolled back: the file must not stay without its rows
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            raise

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / SPOOL_DIR

    def _body_file(self, conn: sqlite3.Connection, queue_id: str) -> Path | None:
        row = conn.execute("SELECT 1 FROM body_files WHERE queue_id = ?", (queue_id,)).fetchone()
        return None if row is None else self.bodies_dir / queue_id

    async def read_message(self, queue_id: str) -> bytes | None:
        def query(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT raw FROM bodies WHERE queue_id = ?", (queue_id,)).fetchone()
            if row is not None:
                return bytes(row[0])
            path = self._body_file(conn, queue_id)
            try:
                return None if path is None else path.read_bytes()
            except FileNotFoundError:  # deleted between the query and the read
                return None

        return await self._read(query)

    async def open_message(self, queue_id: str) -> BinaryIO | None:
        def query(conn: sqlite3.Connection) -> BinaryIO | None:
            path = self._body_file(conn, queue_id)
            if path is not None:
                try:
                    return open(path, "rb")
                except FileNotFoundError:
                    return None
            row = conn.execute("SELECT raw FROM bodies WHERE queue_id = ?", (queue_id,)).fetchone()
            return None if row is None else io.BytesIO(row[0])

        return await self._read(query)

    async def message_info(self, queue_id: str) -> StoredMessage | None:
        def query(conn: sqlite3.Connection) -> StoredMessage | None:
            row = conn.execute(
                "SELECT m.queue_id, m.mail_from, m.rcpts, m.client_ip, m.helo, m.received_at, m.direction,"
                " m.subject, m.size, m.policy_version, m.verdict, a.archived_at"
                " FROM messages m LEFT JOIN archive a USING (queue_id) WHERE m.queue_id = ?",
                (queue_id,),
            ).fetchone()
            if row is None:
                return None
            envelope = Envelope(row[1], tuple(json.loads(row[2])), row[3], row[4], row[5], Direction(row[6]))
            return StoredMessage(row[0], envelope, row[7], row[8], row[9], json.loads(row[10]), row[11])

        return await self._read(query)

    # ------------------------------------------------------------ delivery queue

    async def claim_due(self, now: float, limit: int) -> Claimed:
        """Mark up to `limit` deliveries due at `now` in flight: attempts + 1, recorded before the try."""
        return await self._submit(lambda txn: _claim(txn, now, limit))

    async def record_attempt(self, record: AttemptRecord) -> None:
        """Persist per-recipient results; reschedule, or delete the finished delivery.

        A DSN in the record is stored in the same transaction, so a crash can neither lose it
        nor send it twice. The message goes when nothing references it any more.
        """
        await self._submit(lambda txn: _record(txn, record))

    async def dsn_sent(self, queue_id: str) -> bool:
        """Whether a DSN was queued for message `queue_id` (recorded with it by `record_attempt`;
        kept DSN_MEMORY_DAYS, so a relay restart never sends a second one)."""
        return await self._read(
            lambda conn: conn.execute("SELECT 1 FROM dsn_sent WHERE queue_id = ?", (queue_id,)).fetchone() is not None
        )

    async def mta_sts_policy(self, domain: str, now: float) -> str | None:
        """The stored MTA-STS policy of `domain` (JSON) unless it expired by `now`."""

        def query(conn: sqlite3.Connection) -> str | None:
            sql = "SELECT policy FROM mta_sts WHERE domain = ? AND expires_at > ?"
            row = conn.execute(sql, (domain, now)).fetchone()
            return str(row[0]) if row else None

        return await self._read(query)

    async def save_mta_sts_policy(self, domain: str, policy: str, expires_at: float) -> None:
        """Keep `domain`'s MTA-STS policy (JSON) until `expires_at`, replacing the one stored."""
        await self._submit(lambda txn: txn.conn.execute(
            "INSERT OR REPLACE INTO mta_sts (domain, policy, expires_at) VALUES (?, ?, ?)",
            (domain, policy, expires_at)))

    async def queue_summary(self) -> QueueSummary:
        def query(conn: sqlite3.Connection) -> QueueSummary:
            counts = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())
            (next_due,) = conn.execute("SELECT min(next_attempt_at) FROM deliveries WHERE state = 'queued'").fetchone()
            return QueueSummary(counts.get("queued", 0), counts.get("inflight", 0), next_due)

        return await self._read(query)

    async def list_queue(self, *, tenant: str | None = None) -> list[QueueEntry]:
        sql = (
            "SELECT d.id, d.queue_id, d.tenant, d.mail_from, d.rcpts, m.subject, m.size, d.state, d.attempts,"
            " d.last_error, d.created_at, d.next_attempt_at FROM deliveries d JOIN messages m USING (queue_id)"
        )
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + " WHERE d.tenant = ?", (tenant,)
        sql += " ORDER BY d.state = 'queued', d.next_attempt_at, d.id"  # in flight first, then by due time

        def query(conn: sqlite3.Connection) -> list[QueueEntry]:
            return [
                QueueEntry(row[0], row[1], row[2], row[3], _rcpts_from(row[4]), row[5], row[6], row[7], row[8],
                           row[9], row[10], row[11])
                for row in conn.execute(sql, args)
            ]

        return await self._read(query)

    async def flush_queue(self, now: float, *, tenant: str | None = None) -> int:
        sql = "UPDATE deliveries SET next_attempt_at = ? WHERE state = 'queued' AND next_attempt_at > ?"
        args: tuple[Any, ...] = (now, now)
        if tenant is not None:
            sql, args = sql + " AND tenant = ?", (*args, tenant)
        return await self._submit(lambda txn: txn.conn.execute(sql, args).rowcount)

    # ------------------------------------------------------------ quarantine

    async def list_quarantine(
        self, *, tenant: str | None = None, since: float | None = None, status: QuarantineStatus | None = "held"
    ) -> list[QuarantineEntry]:
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (("status = ?", status), ("tenant = ?", tenant), ("created_at >= ?", since)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        return await self._read(lambda conn: [_quarantine_from(row) for row in conn.execute(sql, args)])

    async def get_quarantine(self, entry_id: str) -> QuarantineEntry | None:
        def query(conn: sqlite3.Connection) -> QuarantineEntry | None:
            row = conn.execute(f"SELECT {_QUARANTINE_COLUMNS} FROM quarantine WHERE id = ?", (entry_id,)).fetchone()
            return None if row is None else _quarantine_from(row)

        return await self._read(query)

    async def release_quarantine(self, entry_id: str, now: float) -> QuarantineEntry | QuarantineRefusal:
        """held → released, with a delivery due `now` to the copy's recipients (its headers kept)."""
        return await self._submit(lambda txn: _change_quarantine(txn, entry_id, now, release=True))

    async def delete_quarantine(self, entry_id: str, now: float) -> QuarantineEntry | QuarantineRefusal:
        """held → deleted; the message file goes when nothing else (archive, deliveries) needs it."""
        return await self._submit(lambda txn: _change_quarantine(txn, entry_id, now, release=False))

    async def requeue_inflight(self, now: float) -> int:
        return await self._submit(lambda txn: _requeue_inflight(txn, now))

    @property
    def lock_fd(self) -> int | None:
        return self._lock_fd

    # ------------------------------------------------------------ outbound rate limits

    async def rate_exceeded(self, limits: tuple[tuple[str, int], ...], now: float, window: float) -> str | None:
        """The first key whose sends within `window` seconds before `now` reached its limit (None
        when every key is under it); counts nothing (the early check at MAIL)."""
        def query(conn: sqlite3.Connection) -> str | None:
            for key, limit in limits:
                (count,) = conn.execute(
                    "SELECT count(*) FROM outbound_sends WHERE key = ? AND at > ?", (key, now - window)
                ).fetchone()
                if count >= limit:
                    return key
            return None

        return await self._read(query) if limits else None

    async def rate_take(self, limits: tuple[tuple[str, int], ...], now: float, window: float) -> str | None:
        """Atomically (one write transaction, shared by every process on this store): the first key
        over its limit, counting nothing; or None after counting one send under every key."""
        if not limits:
            return None
        return await self._submit(lambda txn: _rate_take(txn, limits, now, window))

    async def purge_expired(self, now: float, archive_days: int, quarantine_days: int) -> PurgeResult:
        """Drop archive rows older than `archive_days` and quarantine entries (any status) older
        than `quarantine_days`; messages nothing references any more go in the same transaction."""
        return await self._submit(lambda txn: _purge(txn, now, archive_days, quarantine_days))


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


__all__ = ["RecoveryReport", "SqliteStore", "StoreStats", "quarantine_id"]
