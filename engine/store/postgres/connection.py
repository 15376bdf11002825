"""Connections to PostgreSQL: the pool, its settings, and every driver failure as `StoreError`.

Contract. `Database` owns one `psycopg_pool.AsyncConnectionPool` (psycopg 3, async; at most
`pool_size` connections, autocommit: every transaction is an explicit `transaction()`). Each
connection runs with `statement_timeout`, a `tcp_user_timeout` and keepalives of the same order
(a server that vanished without closing the socket fails a statement instead of hanging it), and
`synchronous_commit` at least `on` (a server default of `off` is raised to `on` for the session; a
stronger setting, `remote_write`/`remote_apply` of a synchronous standby, is kept): a COMMIT
returns only once the transaction is durable.

Failures. `connection()` and `transaction()` turn every driver error into `StoreError`: a server
that cannot be reached within `connect_timeout` (pool acquisition times out: `PoolTimeout`), a
connection lost mid-transaction, a statement timeout, a read-only server (a standby after a
failover: SQLSTATE 25006; that connection is closed so that the pool reconnects, possibly to the
new primary when the URL names several hosts with `target_session_attrs=read-write`), constraint
violations. The pool checks a connection before handing it out (an empty query) and replaces
broken ones in the background, so the store resumes by itself once the database is back; nothing
has to be reopened. `StoreError` from inside the block passes through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
from psycopg import AsyncConnection

from engine.store.base import StoreError

log = logging.getLogger("liveprism.store")

Conn = AsyncConnection[tuple[Any, ...]]
KEEPALIVE_IDLE = 10  # seconds before the first TCP keepalive probe of an idle connection


class Database:
    """The pool of one store; see the module docstring."""

    def __init__(self, url: str, *, pool_size: int, statement_timeout_ms: int, application_name: str) -> None:
        self.url = url
        self.pool_size = pool_size
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout = max(1.0, statement_timeout_ms / 1000)  # waiting for a connection, at most
        self.application_name = application_name[:63]
        self._pool: psycopg_pool.AsyncConnectionPool[Conn] | None = None

    def connect_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of `psycopg.AsyncConnection.connect` for this store's connections."""
        timeout_s = max(1, int(self.connect_timeout))
        return {
            "autocommit": True,
            "connect_timeout": timeout_s,
            "application_name": self.application_name,
            "options": f"-c statement_timeout={int(self.statement_timeout_ms)}",
            "tcp_user_timeout": int(self.statement_timeout_ms),
            "keepalives": 1,
            "keepalives_idle": KEEPALIVE_IDLE,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }

    async def open(self) -> None:
        """Open the pool and wait for its first connection (StoreError when the server cannot be reached)."""
        pool: psycopg_pool.AsyncConnectionPool[Conn] = psycopg_pool.AsyncConnectionPool(
            self.url,
            min_size=min(2, self.pool_size),
            max_size=self.pool_size,
            kwargs=self.connect_kwargs(),
            configure=_configure,
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            timeout=self.connect_timeout,
            reconnect_timeout=self.connect_timeout,
            name=self.application_name,
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await pool.close()
            raise StoreError(f"cannot connect to the store database: {_describe(exc)}") from exc
        self._pool = pool

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def pool(self) -> psycopg_pool.AsyncConnectionPool[Conn]:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    @asynccontextmanager
    async def connection(self, what: str = "store query") -> AsyncIterator[Conn]:
        """A pooled connection (autocommit); driver failures become StoreError(`what` failed: …)."""
        pool = self.pool
        try:
            async with pool.connection(timeout=self.connect_timeout) as conn:
                try:
                    yield conn
                except psycopg.errors.ReadOnlySqlTransaction:
                    await conn.close()  # a standby now: the pool reconnects (to the new primary)
                    raise
        except StoreError:
            raise
        except psycopg_pool.PoolTimeout as exc:
            raise StoreError(f"{what} failed: the database is unreachable"
                             f" (no connection within {self.connect_timeout:g} s)") from exc
        except psycopg.errors.ReadOnlySqlTransaction as exc:
            raise StoreError(f"{what} failed: the database is read-only (failover in progress?)") from exc
        except psycopg.Error as exc:
            raise StoreError(f"{what} failed: {_describe(exc)}") from exc

    @asynccontextmanager
    async def transaction(self, what: str = "store write") -> AsyncIterator[Conn]:
        """A pooled connection inside BEGIN … COMMIT (rolled back when the block raises)."""
        async with self.connection(what) as conn, conn.transaction():
            yield conn


async def _configure(conn: Conn) -> None:
    """Per new connection: `synchronous_commit` at least `on` (module docstring)."""
    row = await (await conn.execute("SHOW synchronous_commit")).fetchone()
    if row is None or row[0] in ("off", "local"):
        await conn.execute("SET synchronous_commit = on")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
