"""`SqliteStore`: the `Store` interface on SQLite, composing the writer, schema and operations.

Contract: the package docstring (`engine.store.sqlite`) states it; this module holds the
lifecycle (directories, the owner's lock, recovery), the read connection and its thread, and the
`Store` methods: reads run in the reader thread, every write is an operation of the
group-commit writer (`engine.store.sqlite.writer`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import io
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from engine.store.base import (
    Accepted,
    AttemptRecord,
    Claimed,
    PurgeResult,
    QuarantineEntry,
    QuarantineRefusal,
    QuarantineStatus,
    QueueEntry,
    QueueSummary,
    StoredMessage,
    StoreError,
)
from engine.store.permissions import DIR_MODE, create_private, secure_state_dir
from engine.store.rows import (
    MESSAGE_INFO_COLUMNS,
    QUARANTINE_COLUMNS,
    QUEUE_ENTRY_COLUMNS,
    check_copies,
    keeps,
    quarantine_from,
    queue_entry_from,
    stored_message_from,
)
from engine.store.sqlite.accept import _adopt, _fsync_dir, _insert_message, _insert_messages
from engine.store.sqlite.deliveries import _claim, _record, _requeue_inflight
from engine.store.sqlite.quarantine import _change_quarantine
from engine.store.sqlite.rate import _rate_take
from engine.store.sqlite.recovery import RecoveryReport, _recover
from engine.store.sqlite.retention import _purge
from engine.store.sqlite.schema import BODIES_DIR, BUSY_TIMEOUT_MS, DB_NAME, LOCK_NAME, SPOOL_DIR, connect
from engine.store.sqlite.writer import BatchWriter, StoreStats, _Txn
from engine.store.write_turns import INTENT_NAME, WriteTurns

log = logging.getLogger("liveprism.store")

T = TypeVar("T")

LOCK_WAIT = 30.0  # seconds an owner waits for the state lock before giving up


class SqliteStore:
    """`engine.store.base.Store` on SQLite; see the package docstring (`engine.store.sqlite`)."""

    def __init__(self, state_dir: Path, *, owner: bool = True, fsync_commits: bool = True) -> None:
        self.state_dir = state_dir
        self.owner = owner
        self.fsync_commits = fsync_commits
        self.db_path = state_dir / DB_NAME
        self.bodies_dir = state_dir / BODIES_DIR
        self.recovery: RecoveryReport | None = None
        self._writer = BatchWriter(owner=owner, insert_accepts=_insert_messages, unlink_dir=self.bodies_dir)
        self._reader: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._turns: WriteTurns | None = None

    @property
    def stats(self) -> StoreStats:
        return self._writer.stats

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create directories and schema; as owner, lock the state directory and recover.

        Recovery: deliveries left `inflight` by a crash become due now (a message is stored
        atomically with its rows, so nothing half-written is ever left to clean up).
        """
        await asyncio.to_thread(self._prepare)
        conn = await asyncio.to_thread(connect, self.db_path, self.fsync_commits)
        conn.execute("PRAGMA busy_timeout = 0")  # the writer waits in WriteTurns, fairly, not in SQLite
        self._turns = WriteTurns(self.state_dir, owner=self.owner, timeout=BUSY_TIMEOUT_MS / 1000)
        self._writer.start(conn, self._turns)
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

    async def close(self) -> None:
        """Let the writer finish what is queued, then release threads, connections and the lock.
        Operations submitted from now on fail with StoreError."""
        await self._writer.stop()
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

    async def check_writable(self) -> None:
        """Raise StoreError unless the store can take a write now (a readiness probe; cheap, no write
        is made): open, its writer thread running, the state directory, its `bodies/` and `spool/`
        and the database file writable, and the database answering a query (in the reader thread)."""
        self._writer.check_running()

        def probe(conn: sqlite3.Connection) -> None:
            for path in (self.state_dir, self.bodies_dir, self.spool_dir):
                if not os.access(path, os.W_OK | os.X_OK):
                    raise StoreError(f"store is not writable: cannot write in {path}")
            if not os.access(self.db_path, os.R_OK | os.W_OK):
                raise StoreError(f"store is not writable: cannot write {self.db_path}")
            conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # reads the database file

        await self._read(probe)

    # ------------------------------------------------------------ writer thread

    def _submit(self, fn: Callable[[_Txn], T], accept: Accepted | None = None) -> asyncio.Future[T]:
        return self._writer.submit(fn, accept)

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
        check_copies(msg)
        if not keeps(msg):
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
                f"SELECT {MESSAGE_INFO_COLUMNS} FROM messages m LEFT JOIN archive a USING (queue_id)"
                " WHERE m.queue_id = ?",
                (queue_id,),
            ).fetchone()
            return None if row is None else stored_message_from(row)

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
        sql = f"SELECT {QUEUE_ENTRY_COLUMNS} FROM deliveries d JOIN messages m USING (queue_id)"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + " WHERE d.tenant = ?", (tenant,)
        sql += " ORDER BY d.state = 'queued', d.next_attempt_at, d.id"  # in flight first, then by due time

        def query(conn: sqlite3.Connection) -> list[QueueEntry]:
            return [queue_entry_from(row) for row in conn.execute(sql, args)]

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
        sql = f"SELECT {QUARANTINE_COLUMNS} FROM quarantine"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at, id"
        return await self._read(lambda conn: [quarantine_from(row) for row in conn.execute(sql, args)])

    async def get_quarantine(self, entry_id: str) -> QuarantineEntry | None:
        def query(conn: sqlite3.Connection) -> QuarantineEntry | None:
            row = conn.execute(f"SELECT {QUARANTINE_COLUMNS} FROM quarantine WHERE id = ?", (entry_id,)).fetchone()
            return None if row is None else quarantine_from(row)

        return await self._read(query)

    async def list_archive(self, *, since: float) -> list[str]:
        sql = "SELECT queue_id FROM archive WHERE archived_at >= ? ORDER BY archived_at"
        return await self._read(lambda conn: [str(row[0]) for row in conn.execute(sql, (since,))])

    async def release_quarantine(self, entry_id: str, now: float) -> QuarantineEntry | QuarantineRefusal:
        """held → released, with a delivery due `now` to the copy's recipients (its headers kept)."""
        return await self._submit(lambda txn: _change_quarantine(txn, entry_id, now, release=True))

    async def delete_quarantine(self, entry_id: str, now: float) -> QuarantineEntry | QuarantineRefusal:
        """held → deleted; the message file goes when nothing else (archive, deliveries) needs it."""
        return await self._submit(lambda txn: _change_quarantine(txn, entry_id, now, release=False))

    async def requeue_inflight(self, now: float) -> int:
        return await self._submit(lambda txn: _requeue_inflight(txn, now))

    async def renew_leases(self, now: float) -> int:
        """One relay process delivers from this store: its claims hold no leases to renew."""
        return 0

    @property
    def lock_fd(self) -> int | None:
        return self._lock_fd

    @property
    def node_id(self) -> str:
        return ""  # a single box, not a node of a cluster

    def cluster_counters(self) -> dict[str, int]:
        """No leases, so nothing of the cluster's lease protocol to count."""
        return {"stale_records": 0, "leases_taken_over": 0, "leases_lost": 0}

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
