"""Fixtures: one initdb'd PostgreSQL per test session, a fresh database per test, a `backend` parametrised
over the embedded SQLite store and PostgreSQL.

The cluster (`engine.store.postgres.local_cluster`) runs as `nobody` when the tests run as root, on
127.0.0.1 at a free port, its socket and data in a temporary directory; it is stopped by PID at
the end of the session, also when tests failed. Without Debian's PostgreSQL binaries the tests of
this folder are skipped (`.ci/run` is to install the `postgresql` package).
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from engine.store import open_store
from engine.store.base import Store
from engine.store.postgres import PostgresStore
from engine.store.postgres.local_cluster import PG_BIN, LocalCluster
from engine.store.sqlite import DB_NAME

T = TypeVar("T")
_names = itertools.count()


def run(coro: Coroutine[Any, Any, T], timeout: float = 120.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


def start_cluster() -> LocalCluster:
    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"PostgreSQL binaries not found in {PG_BIN} (apt-get install postgresql)")
    cluster = LocalCluster.create()
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[LocalCluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()  # stop by PID (fast shutdown), then remove the directory


def create_database(cluster: LocalCluster) -> str:
    """A new, empty database on `cluster`; returns its URL."""
    name = f"t{next(_names)}"
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return cluster.url(name)


def drop_database(cluster: LocalCluster, url: str) -> None:
    name = url.rsplit("/", 1)[1]
    if cluster.pid() is None:
        return
    with psycopg.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def pg_url(pg_cluster: LocalCluster) -> Iterator[str]:
    """A fresh database for one test, dropped afterwards."""
    url = create_database(pg_cluster)
    try:
        yield url
    finally:
        drop_database(pg_cluster, url)


def pg_rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows seen by an independent connection: what is committed."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.replace("?", "%s").encode(), args)
        return [tuple(row) for row in cur.fetchall()] if cur.description else []


@dataclass
class Backend:
    """One store backend for a test: `open(node)` opens a store on the shared state (a node id on
    PostgreSQL; on SQLite the first opened is the owner, the others are not)."""

    kind: str
    tmp: Path
    url: str = ""
    opened: list[Store] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.tmp / "state"

    async def open(self, node: str = "node-a", **options: Any) -> Store:
        store: Store
        if self.kind == "sqlite":
            store = open_store(self.state, owner=not self.opened)
        else:
            store = PostgresStore(self.url, node_id=node, spool_dir=self.tmp / f"spool-{node}", **options)
        await store.open()
        self.opened.append(store)
        return store

    def committed_queue_ids(self) -> set[str]:
        """Queue ids of the messages committed, through another connection."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.state / DB_NAME)
            try:
                return {row[0] for row in conn.execute("SELECT queue_id FROM messages")}
            finally:
                conn.close()
        return {row[0] for row in pg_rows(self.url, "SELECT queue_id FROM messages")}


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        yield Backend("sqlite", tmp_path)
        return
    cluster = request.getfixturevalue("pg_cluster")
    url = create_database(cluster)
    try:
        yield Backend("postgres", tmp_path, url)
    finally:
        drop_database(cluster, url)
