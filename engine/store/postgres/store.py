"""`PostgresStore`: the `Store` interface on PostgreSQL, composing the pool, the writer and the operations.

Contract: the package docstring (`engine.store.postgres`) states it; this module holds the
lifecycle (pool, schema upgrade, writer task), the leases this store instance holds (so that it
renews and records under them), the counters, and the `Store` methods: accepts of messages in
memory go through the group-commit writer (`engine.store.postgres.writer`); a spooled message is
stored in a transaction of its own; every other change is one short transaction on a pooled
connection; reads are single statements (autocommit). Every failure of the database is a
StoreError.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import BinaryIO

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
from engine.store.postgres import bodies, deliveries, quarantine, rate
from engine.store.postgres.accept import insert_accepts, insert_large
from engine.store.postgres.connection import Conn, Database
from engine.store.postgres.retention import purge
from engine.store.postgres.schema import MigrationResult, upgrade
from engine.store.postgres.writer import GroupWriter, WriterStats
from engine.store.rows import MESSAGE_INFO_COLUMNS, check_copies, keeps, stored_message_from

log = logging.getLogger("liveprism.store")

SPOOL_MODE = 0o700


class PostgresStore:
    """`engine.store.base.Store` on PostgreSQL; see the package docstring (`engine.store.postgres`).

    Counters (for metrics and tests): `stale_records` — attempt records not applied because this
    node no longer held the lease (its copy may have been delivered twice: at-least-once);
    `leases_taken_over` — expired leases of other nodes (or of an earlier run of this one) this
    store claimed; `leases_lost` — leases found gone at a renewal."""

    def __init__(
        self,
        url: str,
        *,
        node_id: str,
        spool_dir: Path,
        pool_size: int = 10,
        lease_seconds: float = 300.0,
        statement_timeout_ms: int = 30000,
    ) -> None:
        if not node_id:
            raise ValueError("a PostgreSQL store needs a node id")
        self.url = url
        self._node_id = node_id
        self.lease_seconds = lease_seconds
        self._spool_dir = spool_dir
        self._db = Database(url, pool_size=pool_size, statement_timeout_ms=statement_timeout_ms,
                            application_name=f"liveprism {node_id}")
        self._writer = GroupWriter(self._db, insert_accepts)
        self._leases: dict[int, int] = {}  # delivery id -> lease token of this instance's claim
        self.schema: MigrationResult | None = None
        self.stale_records = 0
        self.leases_taken_over = 0
        self.leases_lost = 0

    @property
    def stats(self) -> WriterStats:
        return self._writer.stats

    @property
    def node_id(self) -> str:
        """This node's id: the owner of its leases, and its `applied_by` of schema upgrades."""
        return self._node_id

    def cluster_counters(self) -> dict[str, int]:
        """The counters of the class docstring, by name."""
        return {"stale_records": self.stale_records, "leases_taken_over": self.leases_taken_over,
                "leases_lost": self.leases_lost}

    @property
    def held_leases(self) -> int:
        """Deliveries this store instance claimed and has not recorded yet."""
        return len(self._leases)

    # ------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Create the spool directory, connect, bring the schema up to date (or refuse a newer one)."""
        try:
            self._spool_dir.mkdir(mode=SPOOL_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the spool directory {self._spool_dir}: {exc}") from exc
        await self._db.open()
        try:
            async with self._db.connection("schema upgrade") as conn:
                self.schema = await upgrade(conn, applied_by=self.node_id)
        except BaseException:
            await self._db.close()
            raise
        if self.schema.before != self.schema.after:
            log.info("store schema upgraded from version %d to %d", self.schema.before, self.schema.after)
        self._writer.start()

    async def close(self) -> None:
        """Let the writer finish what is queued, then close the pool."""
        await self._writer.stop()
        await self._db.close()

    async def check_writable(self) -> None:
        """Raise StoreError unless the database answers and takes writes (a readiness probe:
        `readyz` says 503 while it raises; a standby after a failover is not writable)."""
        async with self._db.connection("store health check") as conn:
            row = await (await conn.execute("SELECT pg_is_in_recovery() OR current_setting('transaction_read_only')"
                                            " = 'on'")).fetchone()
        if row is None or row[0]:
            raise StoreError("store health check failed: the database is read-only (failover in progress?)")

    # ------------------------------------------------------------ spool

    async def accept(self, msg: Accepted) -> None:
        """Persist `msg`; returns once its COMMIT returned (synchronous_commit on). Raises StoreError.

        A message in memory joins the group commit; a spooled one (`msg.body`) is copied into
        chunk rows in its own transaction, and its spool file removed once that committed."""
        check_copies(msg)
        if not keeps(msg):
            return
        if msg.body is None:
            await self._writer.submit(msg)
            return
        try:
            async with self._db.transaction("store write") as conn:
                await insert_large(conn, msg)
        except OSError as exc:
            raise StoreError(f"cannot store the message file of {msg.queue_id}: {exc}") from exc
        self._writer.count_written(1)
        with contextlib.suppress(FileNotFoundError):  # taken over: the rows hold the bytes now
            os.unlink(msg.body)

    @property
    def spool_dir(self) -> Path:
        return self._spool_dir

    async def read_message(self, queue_id: str) -> bytes | None:
        async with self._db.connection("store read") as conn:
            return await bodies.read(conn, queue_id)

    async def open_message(self, queue_id: str) -> BinaryIO | None:
        try:
            async with self._db.connection("store read") as conn:
                return await bodies.open_to_file(conn, queue_id, self._spool_dir)
        except OSError as exc:
            raise StoreError(f"cannot copy message {queue_id} to {self._spool_dir}: {exc}") from exc

    async def message_info(self, queue_id: str) -> StoredMessage | None:
        async with self._db.connection("store read") as conn:
            row = await (await conn.execute(
                f"SELECT {MESSAGE_INFO_COLUMNS} FROM messages m LEFT JOIN archive a USING (queue_id)"
                " WHERE m.queue_id = %s",
                (queue_id,),
            )).fetchone()
        return None if row is None else stored_message_from(row)

    # ------------------------------------------------------------ delivery queue

    async def claim_due(self, now: float, limit: int) -> Claimed:
        """Claim up to `limit` due deliveries (and expired leases) into leases of this node."""
        async with self._db.transaction("store claim") as conn:
            claim = await deliveries.claim(conn, now, limit, node=self.node_id, lease_seconds=self.lease_seconds)
        self._leases.update(claim.leases)
        for delivery_id, previous in claim.taken_over:
            self.leases_taken_over += 1
            log.warning("delivery=%d lease of node %s expired: taken over by %s", delivery_id, previous, self.node_id)
        return Claimed(claim.deliveries, claim.next_due)

    async def record_attempt(self, record: AttemptRecord) -> None:
        """Apply the attempt while this node holds the delivery's lease; else count a stale record.

        A DSN in the record is stored in the same transaction; the message goes when nothing
        references it any more."""
        lease = self._leases.pop(record.delivery_id, None)  # no longer renewed, whatever happens now
        async with self._db.transaction("store write") as conn:
            applied, dropped = await deliveries.record(conn, record, node=self.node_id, lease=lease)
        self._writer.count_deleted(dropped)
        if not applied:
            self.stale_records += 1
            log.warning("delivery=%d attempt not recorded: node %s no longer holds its lease (taken over or"
                        " finished elsewhere; the copy may be delivered twice)", record.delivery_id, self.node_id)

    async def renew_leases(self, now: float) -> int:
        """Heartbeat: extend every lease this store holds to `now` + lease time; returns how many
        were renewed. A lease found gone (taken over after it expired) is dropped and counted."""
        held = dict(self._leases)
        if not held:
            return 0
        async with self._db.transaction("store lease renewal") as conn:
            renewed = await deliveries.renew(conn, now, node=self.node_id, leases=list(held.values()),
                                             lease_seconds=self.lease_seconds)
        for delivery_id, token in held.items():
            if delivery_id not in renewed and self._leases.get(delivery_id) == token:
                del self._leases[delivery_id]
                self.leases_lost += 1
                log.warning("delivery=%d lease lost by node %s", delivery_id, self.node_id)
        return len(renewed)

    async def requeue_inflight(self, now: float) -> int:
        """Make this node's in-flight deliveries due at `now` (the relay's start); other nodes'
        leases are left to expire."""
        async with self._db.transaction("store write") as conn:
            count = await deliveries.requeue_own(conn, now, node=self.node_id)
        self._leases.clear()
        return count

    async def dsn_sent(self, queue_id: str) -> bool:
        async with self._db.connection("store read") as conn:
            cur = await conn.execute("SELECT 1 FROM dsn_sent WHERE queue_id = %s", (queue_id,))
            return await cur.fetchone() is not None

    async def mta_sts_policy(self, domain: str, now: float) -> str | None:
        async with self._db.connection("store read") as conn:
            row = await (await conn.execute("SELECT policy FROM mta_sts WHERE domain = %s AND expires_at > %s",
                                            (domain, now))).fetchone()
        return str(row[0]) if row else None

    async def save_mta_sts_policy(self, domain: str, policy: str, expires_at: float) -> None:
        async with self._db.transaction("store write") as conn:
            await conn.execute(
                "INSERT INTO mta_sts (domain, policy, expires_at) VALUES (%s, %s, %s) ON CONFLICT (domain)"
                " DO UPDATE SET policy = excluded.policy, expires_at = excluded.expires_at",
                (domain, policy, expires_at),
            )

    async def queue_summary(self) -> QueueSummary:
        async with self._db.connection("store read") as conn:
            return await deliveries.summary(conn)

    async def list_queue(self, *, tenant: str | None = None) -> list[QueueEntry]:
        async with self._db.connection("store read") as conn:
            return await deliveries.entries(conn, tenant)

    async def flush_queue(self, now: float, *, tenant: str | None = None) -> int:
        async with self._db.transaction("store write") as conn:
            return await deliveries.flush(conn, now, tenant)

    # ------------------------------------------------------------ quarantine and archive

    async def list_quarantine(
        self, *, tenant: str | None = None, since: float | None = None, status: QuarantineStatus | None = "held"
    ) -> list[QuarantineEntry]:
        async with self._db.connection("store read") as conn:
            return await quarantine.entries(conn, tenant=tenant, since=since, status=status)

    async def get_quarantine(self, entry_id: str) -> QuarantineEntry | None:
        async with self._db.connection("store read") as conn:
            return await quarantine.entry(conn, entry_id)

    async def list_archive(self, *, since: float) -> list[str]:
        async with self._db.connection("store read") as conn:
            cur = await conn.execute("SELECT queue_id FROM archive WHERE archived_at >= %s ORDER BY archived_at",
                                     (since,))
            return [str(row[0]) for row in await cur.fetchall()]

    async def release_quarantine(self, entry_id: str, now: float) -> QuarantineEntry | QuarantineRefusal:
        """held → released, with a delivery due `now` that whichever node claims it delivers."""
        return await self._change_quarantine(entry_id, now, release=True)

    async def delete_quarantine(self, entry_id: str, now: float) -> QuarantineEntry | QuarantineRefusal:
        """held → deleted; the message goes when nothing else (archive, deliveries) needs it."""
        return await self._change_quarantine(entry_id, now, release=False)

    async def _change_quarantine(self, entry_id: str, now: float, *, release: bool
                                 ) -> QuarantineEntry | QuarantineRefusal:
        async with self._db.transaction("store write") as conn:
            outcome, dropped = await quarantine.change(conn, entry_id, now, release=release)
        self._writer.count_deleted(dropped)
        return outcome

    async def purge_expired(self, now: float, archive_days: int, quarantine_days: int) -> PurgeResult:
        """Drop expired archive rows and quarantine entries, `PURGE_BATCH` rows per transaction."""

        async def in_transaction(step: Callable[[Conn], Awaitable[tuple[int, int]]]) -> tuple[int, int]:
            async with self._db.transaction("store purge") as conn:
                removed, dropped = await step(conn)
            self._writer.count_deleted(dropped)
            return removed, dropped

        return await purge(in_transaction, now, archive_days, quarantine_days)

    @property
    def lock_fd(self) -> int | None:
        return None  # no state-directory lock: nodes coordinate in the database

    # ------------------------------------------------------------ outbound rate limits

    async def rate_exceeded(self, limits: tuple[tuple[str, int], ...], now: float, window: float) -> str | None:
        if not limits:
            return None
        async with self._db.connection("store read") as conn:
            return await rate.exceeded(conn, limits, now, window)

    async def rate_take(self, limits: tuple[tuple[str, int], ...], now: float, window: float) -> str | None:
        """Atomically across every node (advisory lock per key): the first key over its limit,
        counting nothing; or None after counting one send under every key."""
        if not limits:
            return None
        async with self._db.transaction("store write") as conn:
            return await rate.take(conn, limits, now, window)
