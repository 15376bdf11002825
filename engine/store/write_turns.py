"""Fair turns at SQLite's write lock between the processes that share one store.

SQLite lets one connection write at a time. A connection that finds the lock taken waits in
SQLite's busy handler, which sleeps 1, 2, 5, … up to 100 ms between retries, so it only gets
in if the lock happens to be free at one of those instants. The front end under load commits
back to back (fsync, release, take again a few µs later): the relay process, waiting to claim
deliveries or record attempts, starved for up to 2.1 s per transaction (measured with
`bench/smtp.sh` at ~900 accepts/s), and mail piled up in the queue.

So the write lock is taken here instead, with SQLite's own waiting switched off
(`busy_timeout = 0` on writer connections):

- every writer retries `BEGIN IMMEDIATE` every 50 µs to 1 ms until it gets the lock or
  `timeout` passes (`StoreError` then);
- a waiting non-owner (relay, CLI) announces itself in a shared word (`writers.intent`, an
  mmap'ed file in the state directory), refreshed with the current time at every retry;
- the owner (front end), before each of its transactions, lets an announced waiter go first:
  it pauses until the announcement is withdrawn, for at most `OWNER_YIELD_MAX`.

Nothing here is needed for correctness (SQLite's lock is), only for latency. An announcement
not refreshed for `ANNOUNCEMENT_STALE` is ignored: a waiter killed mid-wait costs the owner at
most that long (its transactions pause `OWNER_YIELD_MAX` each meanwhile); a torn read of the
word looks stale or current, and costs at most one pause.
"""

from __future__ import annotations

import mmap
import os
import sqlite3
import struct
import time
from pathlib import Path

from engine.store.base import StoreError

INTENT_NAME = "writers.intent"
OWNER_YIELD_MAX = 0.02  # seconds the owner waits for an announced writer, per transaction
ANNOUNCEMENT_STALE = 0.1  # an announcement older than this is ignored (its writer died or gave up)
_RETRY_FIRST = 50e-6
_RETRY_MAX = 1e-3
_WORD = struct.Struct("=d")


class WriteTurns:
    """Takes the SQLite write lock for one process; see the module docstring."""

    def __init__(self, state_dir: Path, *, owner: bool, timeout: float) -> None:
        self.owner = owner
        self.timeout = timeout
        fd = os.open(state_dir / INTENT_NAME, os.O_RDWR | os.O_CREAT, 0o640)
        try:
            if os.fstat(fd).st_size < _WORD.size:
                os.ftruncate(fd, _WORD.size)
            self._word = mmap.mmap(fd, _WORD.size)
        finally:
            os.close(fd)

    def begin(self, conn: sqlite3.Connection) -> None:
        """`BEGIN IMMEDIATE` on `conn` (whose busy_timeout is 0), fairly; StoreError after `timeout`."""
        if self.owner:
            self._let_waiter_first()
        else:
            self._announce(time.monotonic())
        try:
            self._take(conn)
        finally:
            if not self.owner:
                self._announce(0.0)

    def close(self) -> None:
        self._word.close()

    def _take(self, conn: sqlite3.Connection) -> None:
        deadline = time.monotonic() + self.timeout
        pause = _RETRY_FIRST
        while True:
            try:
                conn.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:  # extended codes: BUSY_*
                    raise
            now = time.monotonic()
            if now >= deadline:
                raise StoreError(f"the store's write lock stayed taken for {self.timeout:g} s")
            if not self.owner:  # still waiting (and another waiter may have withdrawn ours)
                self._announce(now)
            time.sleep(pause)
            pause = min(pause * 2, _RETRY_MAX)

    def _let_waiter_first(self) -> None:
        start = time.monotonic()
        while True:
            since = self._announcement()
            now = time.monotonic()
            if since == 0.0 or not 0.0 <= now - since < ANNOUNCEMENT_STALE or now - start >= OWNER_YIELD_MAX:
                return
            time.sleep(_RETRY_FIRST)

    def _announcement(self) -> float:
        return float(_WORD.unpack_from(self._word)[0])

    def _announce(self, since: float) -> None:
        _WORD.pack_into(self._word, 0, since)
