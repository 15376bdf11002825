"""The database on disk: the state directory's names, the schema (DDL), the pragmas, the upgrade.

Contract: `connect` opens the write connection in autocommit mode (every transaction is explicit),
in WAL mode with foreign keys on, committing with `synchronous=FULL` (`NORMAL` when commits need
not be fsynced); it creates the schema or upgrades an older one (`SCHEMA` is idempotent: it is
rerun, with `user_version`, in one transaction) and refuses a database newer than this code knows.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from engine.store.base import StoreError

DB_NAME = "index.sqlite3"
BODIES_DIR = "bodies"
SPOOL_DIR = "spool"
LOCK_NAME = "owner.lock"
SCHEMA_VERSION = 4  # 2: outbound_sends; 3: body_files; 4: dsn_sent, mta_sts (SCHEMA is idempotent: rerun on older)
BUSY_TIMEOUT_MS = 30_000

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


def connect(db_path: Path, fsync_commits: bool) -> sqlite3.Connection:
    """The write connection to `db_path`, its schema created or upgraded (module docstring)."""
    conn = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL" if fsync_commits else "PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION:
        conn.close()
        raise StoreError(f"{db_path} has schema {version}; this LivePrism knows up to {SCHEMA_VERSION}")
    if version < SCHEMA_VERSION:
        conn.executescript(f"BEGIN IMMEDIATE; {SCHEMA}; PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    return conn
