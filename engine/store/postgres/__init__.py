"""Cluster store: PostgreSQL holding the queue, quarantine, archive, rate windows and the bodies.

Several gateway nodes share one database (`storage.url: postgresql://…`); each node has a node
id and a local spool directory. The interface and its guarantees are `engine.store.base`; what
differs from the embedded store (`engine.store.sqlite`) is said here.

Driver. psycopg 3, async, with `psycopg_pool.AsyncConnectionPool` (`connection`): on the accept
path (2 KB messages, 20 concurrent accepts, group-committed, fsync and synchronous_commit on) it
measured within a few per cent of asyncpg (`bench/store_driver.py` prints both and the ratio),
and it brings a maintained pool that checks and replaces broken connections by itself, libpq's
connection options (several hosts, `target_session_attrs`, TLS, keepalives, `tcp_user_timeout`)
and COPY/pipeline support.

Schema. Numbered plain SQL files in `migrations/`, applied at `open` in one transaction under an
advisory lock (several nodes starting at once), recorded in `schema_version`; a database newer
than the code is refused (`schema`). `migrate(url, to_version)` is the same upgrade for
`liveprism storage migrate --to-version`.

Write path (group commit). An accept of a message in memory (up to 1 MiB) is queued to the
store's writer task (`writer`): it takes every accept queued at that moment and stores them in
one transaction, one COMMIT, so one WAL flush serves many SMTP sessions; accepts arriving while a
COMMIT runs form the next batch. Each caller returns only once the COMMIT of its own batch
returned, with `synchronous_commit` at least `on`: 250 is never said before the message is
durable. A spooled message (over 1 MiB, `Accepted.body`) is stored in a transaction of its own:
its rows, then its bytes in 256 KiB `body_chunks` rows read from the spool file one piece at a
time (the spooled path's memory budget holds; a 25 MB body in the batch would hold up every
other session's 250); its spool file is removed once that committed. Small bodies are one
`bodies` bytea, claimed with the delivery when up to 256 KiB. Reading a large body back streams
its chunks into an anonymous temporary file in the spool directory (`bodies` says why).

Failures. Every database failure is a StoreError (`connection`): unreachable (no connection
within the statement timeout), connection lost, statement timeout, read-only (a standby after a
failover): the SMTP layer answers 4xx, the relay retries later. The pool checks connections
before use and reconnects in the background: the store resumes by itself when the database is
back, nothing is reopened. A COMMIT cut off by a lost connection is reported as a failure though
it may have committed: the client's retry may store the message twice, never zero times.

Queue ownership across nodes (`deliveries`). Deliveries are claimed with `FOR UPDATE SKIP
LOCKED` into leases (owner node id, `leased_until`, a token per claim); the relay renews its
leases while attempts run (`renew_leases`, the heartbeat); a lease that expired (its node died)
is claimable by any node. No two nodes hold a delivery at once. An attempt record applies only
under the recording node's lease: a late record after a takeover is not applied and is counted
(`PostgresStore.stale_records`): at-least-once, never a lost copy. `requeue_inflight` makes this
node's own in-flight deliveries due (the relay's start); there is no recovery at `open` and no
owner lock (`lock_fd` is None): no file of the store lives on a node except the spool, whose
leftovers are the SMTP layer's (it removes its own spool files).

Cluster-wide state. Quarantine release/delete from any node (the entry row locked: released
once, its delivery claimed once), DSN-sent and MTA-STS records, loop-detection lookups
(`message_info`) and outbound rate windows (`rate`: an advisory lock per key, so N nodes
together never exceed a limit) all live in the database. Retention purges in batches of 1,000
rows per transaction (`retention`).

Knobs (`PostgresStore` arguments): `pool_size` (connections per process, default 10; the
writer uses one per batch), `statement_timeout_ms` (default 30 s: also the longest wait for a
connection, so an accept fails within about that when the database is gone), `lease_seconds`
(default 300: how long a dead node's deliveries wait before another node takes them over; the
relay renews well within it).

Modules: `connection` (pool, settings, errors), `schema` (migrations), `writer` (the group
commit; it knows no tables), `accept` (storing accepts, dropping unreferenced messages), `bodies`
(reading bodies back), `deliveries` (claims, leases, records, listings), `quarantine`, `rate`,
`retention`, `store` (`PostgresStore`, composing them) and `local_cluster` (an initdb'd cluster of
one's own, for tests and benchmarks only). Row building and conversion are `engine.store.rows`,
shared with the embedded store, so that both backends hold the same values.
"""

from engine.store.postgres.schema import MigrationResult, latest_version, migrate
from engine.store.postgres.store import PostgresStore
from engine.store.postgres.writer import WriterStats
from engine.store.rows import quarantine_id

__all__ = ["MigrationResult", "PostgresStore", "WriterStats", "latest_version", "migrate", "quarantine_id"]
