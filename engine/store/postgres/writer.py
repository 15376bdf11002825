"""The group-commit writer of accepts: one asyncio task, one transaction (one COMMIT) per batch.

It knows no tables: it is given `insert(conn, accepts)`, which stores the rows of some accepts
inside the transaction it is called in, and `Database.transaction` for the connection.

Contract. `submit(msg)` queues an accept and returns a future the caller awaits. The task takes
every accept queued at that moment, up to `MAX_BATCH`, as one batch and stores it in one
transaction (BEGIN … inserts … COMMIT). While that transaction runs (its COMMIT waits for the WAL
flush, `synchronous_commit` on), new accepts queue up: they are the next batch. So one COMMIT, one
WAL flush, serves many SMTP sessions, and each caller's future is settled only after the COMMIT of
its own batch returned: an accept never returns before its rows are durable.

Failures. When the batch fails because of one accept (a constraint: a duplicate queue id, bad
data), the batch is rerun with each accept in its own SAVEPOINT, so that it fails alone (StoreError)
and the others commit. When it fails because of the database (unreachable, connection lost,
read-only, statement timeout: anything but an integrity or data error), every caller of the batch
gets that StoreError at once; nothing is retried here, the SMTP layer answers 4xx and the client
retries. A COMMIT whose outcome is unknown (the connection broke during it) is reported as a
failure although it may have committed: the client retries, which may store the message twice
(RFC 5321 §6.1 prefers that to losing it). Every submitted accept is settled: with None, with
its own StoreError, or with StoreError when the batch failed or the writer is stopping.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import psycopg
import psycopg.errors

from engine.store.base import Accepted, StoreError
from engine.store.postgres.connection import Conn, Database

log = logging.getLogger("liveprism.store")

MAX_BATCH = 512  # accepts per transaction
Insert = Callable[[Conn, Sequence[Accepted]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class WriterStats:
    """Counters of the writer (for tests, the benchmark and metrics); field names as the embedded store's."""

    batches: int  # transactions committed (one WAL flush each)
    operations: int  # accepts committed in them
    messages_written: int
    messages_deleted: int  # messages dropped because nothing references them any more (any transaction)


class _BatchFailed(Exception):
    """An accept of the batch raised an integrity/data error: rerun the batch isolated."""


class GroupWriter:
    """The writer task of one store and the queue feeding it; see the module docstring."""

    def __init__(self, db: Database, insert: Insert) -> None:
        self._db = db
        self._insert = insert
        self._queue: list[tuple[Accepted, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stats = WriterStats(0, 0, 0, 0)

    def start(self) -> None:
        self._closing = False
        self._task = asyncio.get_running_loop().create_task(self._main(), name="liveprism-store-writer")

    async def stop(self) -> None:
        """Finish what is queued; accepts submitted from now on fail with StoreError."""
        self._closing = True
        self._ready.set()
        if self._task is not None:
            task, self._task = self._task, None
            await task

    def submit(self, msg: Accepted) -> asyncio.Future[None]:
        if self._task is None or self._closing or self._task.done():
            raise StoreError("store is not open")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((msg, future))
        self._ready.set()
        return future

    def count_deleted(self, messages: int) -> None:
        if messages:
            s = self.stats
            self.stats = WriterStats(s.batches, s.operations, s.messages_written, s.messages_deleted + messages)

    def count_written(self, messages: int, *, batches: int = 1) -> None:
        s = self.stats
        self.stats = WriterStats(s.batches + batches, s.operations + messages, s.messages_written + messages,
                                 s.messages_deleted)

    async def _main(self) -> None:
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            live = [(msg, future) for msg, future in batch if not future.done()]  # cancelled callers
            if not live:
                continue
            try:
                outcomes = await self._store(live)
            except StoreError as exc:  # the database failed: nobody in this batch may see success
                log.error("store writer: a batch of %d accepts failed: %s", len(live), exc)
                outcomes = [exc] * len(live)
            except Exception as exc:  # a bug: keep the writer alive, fail the batch
                log.exception("store writer batch failed")
                error = StoreError(f"store write failed: {exc}")
                outcomes = [error] * len(live)
            for (_, future), outcome in zip(live, outcomes, strict=True):
                if not future.done():
                    if outcome is None:
                        future.set_result(None)
                    else:
                        future.set_exception(outcome)

    async def _store(self, batch: list[tuple[Accepted, asyncio.Future[None]]]) -> list[StoreError | None]:
        msgs = [msg for msg, _ in batch]
        try:
            async with self._db.transaction("store write") as conn:
                try:
                    await self._insert(conn, msgs)
                except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
                    raise _BatchFailed from exc
        except _BatchFailed:
            return await self._store_isolated(msgs)
        self.count_written(len(msgs))
        return [None] * len(msgs)

    async def _store_isolated(self, msgs: list[Accepted]) -> list[StoreError | None]:
        outcomes: list[StoreError | None] = []
        async with self._db.transaction("store write") as conn:
            for msg in msgs:
                try:
                    async with conn.transaction():  # a SAVEPOINT
                        await self._insert(conn, (msg,))
                except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
                    outcomes.append(StoreError(f"store write failed: {str(exc).splitlines()[0]}"))
                else:
                    outcomes.append(None)
        self.count_written(sum(outcome is None for outcome in outcomes))
        return outcomes

