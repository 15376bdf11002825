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

Modules: `writer` (the group-commit writer thread; it knows no tables), `schema` (file names, DDL,
pragmas, upgrade), `accept` (storing accepts, dropping unreferenced messages), `deliveries`,
`quarantine`, `retention`, `rate` (outbound rate limits), `recovery` (the owner's crash recovery)
and `store` (`SqliteStore`, composing them). Row building and conversion are `engine.store.rows`,
shared with the PostgreSQL backend. The writer and schema seams are what another backend
(PostgreSQL) reuses or mirrors.
"""

from engine.store.rows import quarantine_id
from engine.store.sqlite.recovery import RecoveryReport
from engine.store.sqlite.schema import DB_NAME
from engine.store.sqlite.store import SqliteStore
from engine.store.sqlite.writer import StoreStats

__all__ = ["DB_NAME", "RecoveryReport", "SqliteStore", "StoreStats", "quarantine_id"]
