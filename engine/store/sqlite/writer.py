"""The group-commit writer: one thread owning the write connection, through which every change goes.

It knows no tables. An operation is a callable run on a `_Txn` (the write connection, and the
counts of the messages it stored and dropped); an accept also carries its `Accepted`, and the
accepts of a batch are stored together by the `insert_accepts` the store hands over (one
multi-row INSERT per table: every statement is a GIL hand-off with the event loop).

Contract (the package docstring tells why). The thread takes every operation queued at that
moment as one batch, up to `MAX_BATCH` (a non-owner first gathers for up to `LINGER`), and runs it
in one transaction begun through `WriteTurns` (BEGIN IMMEDIATE … COMMIT); should one operation
raise, the batch is rerun with each operation in its own SAVEPOINT, so that it fails alone. Only
after the commit are the files the operations released (`_Txn.unlink`) removed and the callers'
futures settled, each event loop woken once per batch. Every submitted operation is settled: with
its result, with its own exception, or with `StoreError` if its batch failed, the writer broke or
the store was closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

from engine.store.base import Accepted, StoreError
from engine.store.write_turns import WriteTurns

log = logging.getLogger("liveprism.store")

T = TypeVar("T")

MAX_BATCH = 512  # operations per transaction
LINGER = 0.002  # seconds a non-owner's writer gathers operations before taking the write lock


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counters of the writer thread (for tests, the benchmark and metrics)."""

    batches: int  # transactions committed (one WAL fsync each)
    operations: int  # operations committed in them
    messages_written: int
    messages_deleted: int


@dataclass(slots=True)
class _Txn:
    """What one operation sees inside the batch transaction."""

    conn: sqlite3.Connection
    written: int = 0  # messages stored by the operation
    deleted: int = 0  # messages it dropped because nothing references them any more
    unlink: list[str] = field(default_factory=list)  # files (in `unlink_dir`: bodies) that go once this commits


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


class BatchWriter:
    """The writer thread of one store and the queue feeding it; see the module docstring."""

    def __init__(
        self,
        *,
        owner: bool,
        insert_accepts: Callable[[sqlite3.Connection, Iterable[Accepted]], None],
        unlink_dir: Path,
    ) -> None:
        self.owner = owner
        self._insert_accepts = insert_accepts  # stores the rows of a batch's accepts together
        self._unlink_dir = unlink_dir  # where the files named in `_Txn.unlink` are
        self._queue: queue.SimpleQueue[_Op[Any] | object] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._turns: WriteTurns | None = None
        self._closing = False
        self.stats = StoreStats(0, 0, 0, 0)

    def start(self, conn: sqlite3.Connection, turns: WriteTurns) -> None:
        """Run the thread on `conn` (it closes it when it stops), taking the write lock through `turns`."""
        self._turns = turns
        self._thread = threading.Thread(target=self._main, args=(conn,), name="liveprism-store", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Let the thread finish what is queued. Operations submitted from now on fail with StoreError."""
        self._closing = True
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
            self._thread = None

    def check_running(self) -> None:
        """Raise StoreError unless the thread runs and takes operations (started, not stopping)."""
        if self._thread is None or self._closing or not self._thread.is_alive():
            raise StoreError("store is not open")

    def submit(self, fn: Callable[[_Txn], T], accept: Accepted | None = None) -> asyncio.Future[T]:
        self.check_running()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._queue.put(_Op(fn, future, loop, accept))
        return future

    def _main(self, conn: sqlite3.Connection) -> None:
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
        s = self.stats  # updated before any caller wakes, so a caller sees its own write counted
        self.stats = StoreStats(s.batches + 1, s.operations + len(done), s.messages_written + written,
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
                    self._insert_accepts(conn, (cast(Accepted, op.accept) for op in accepts))
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
                    os.unlink(self._unlink_dir / queue_id)
        return done
