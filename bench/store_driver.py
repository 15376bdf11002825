"""Benchmark of the PostgreSQL driver on the accept path: psycopg 3 (async, psycopg_pool) vs asyncpg.

Usage (from the repository root, as root or not):  python bench/store_driver.py [--n 3000] [--sessions 20]
[--rounds 3]

Starts its own cluster (initdb in a temporary directory, 127.0.0.1, a free port, fsync and
synchronous_commit on: `engine.store.postgres.local_cluster`), creates the store's schema
(`engine/store/postgres/migrations`), and measures, for each driver, `--sessions` concurrent
accepts of N messages of 2 KB in total through the same group-commit loop: accepts queued while
a COMMIT runs form the next batch, one transaction per batch inserting each message's rows
(messages, bodies bytea, archive, deliveries), each accept returning after its batch's COMMIT.
Each driver does it the way it does best: psycopg sends a batch's INSERTs in one pipeline
(`executemany` per table inside `conn.pipeline()`), asyncpg one `executemany` per table (it has
no pipelining across statements). The rows are those of `engine.store.postgres.accept`. The
drivers alternate, `--rounds` times each on an emptied schema; the median msgs/s of each is
printed, with the ratio, and the rate of the real `PostgresStore.accept` (psycopg, its writer
task) for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
import psycopg
import psycopg_pool

from engine.policy.models import Action
from engine.store.base import Accepted, CopyPlan, StoredEnvelope, new_queue_id
from engine.store.postgres import PostgresStore, migrate
from engine.store.postgres.local_cluster import LocalCluster
from engine.store.rows import AcceptRows

TABLES = ("messages", "bodies", "archive", "deliveries")
PSYCOPG_SQL = {
    "messages": "INSERT INTO messages VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
    "bodies": "INSERT INTO bodies VALUES (%s, %b)",
    "archive": "INSERT INTO archive VALUES (%s, %s)",
    "deliveries": "INSERT INTO deliveries (queue_id, tenant, route_by, mail_from, rcpts, headers, subject_prefix,"
                  " created_at, next_attempt_at, state) VALUES (%s, %s, %s, %s, %s, %b, %s, %s, %s, 'queued')",
}
ASYNCPG_SQL = {
    "messages": "INSERT INTO messages VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    "bodies": "INSERT INTO bodies VALUES ($1, $2)",
    "archive": "INSERT INTO archive VALUES ($1, $2)",
    "deliveries": "INSERT INTO deliveries (queue_id, tenant, route_by, mail_from, rcpts, headers, subject_prefix,"
                  " created_at, next_attempt_at, state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued')",
}


def message(n: int) -> Accepted:
    qid = new_queue_id()
    raw = (f"From: a@sender.example\r\nTo: b@acme.example\r\nSubject: bench {qid}\r\n\r\n".encode()
           + b"x" * (2048 - 80) + b"\r\n")
    env = StoredEnvelope("a@sender.example", ("b@acme.example",), "192.0.2.1", "client.example", time.time())
    plan = CopyPlan("acme", ("b@acme.example",), Action.deliver, b"X-LivePrism: bench\r\n")
    return Accepted(qid, raw, env, f"bench {qid}", "v1", {"action": "deliver"}, (plan,), archive=True)


def rows_of(batch: list[Accepted]) -> dict[str, list[tuple[Any, ...]]]:
    rows = AcceptRows()
    for msg in batch:
        rows.add(msg)
    return {table: getattr(rows, table) for table in TABLES}


class GroupCommit:
    """The store's writer loop, on any `commit(batch)`: batches what queued while the last one committed."""

    def __init__(self, commit: Callable[[list[Accepted]], Awaitable[None]]) -> None:
        self._commit = commit
        self._queue: list[tuple[Accepted, asyncio.Future[None]]] = []
        self._ready = asyncio.Event()
        self._task = asyncio.create_task(self._main())
        self.batches = 0

    async def accept(self, msg: Accepted) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((msg, future))
        self._ready.set()
        await future

    async def _main(self) -> None:
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            batch, self._queue = self._queue[:512], self._queue[512:]
            try:
                await self._commit([msg for msg, _ in batch])
            except Exception as exc:
                for _, future in batch:
                    future.set_exception(exc)
            else:
                self.batches += 1
                for _, future in batch:
                    future.set_result(None)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def drive(accept: Callable[[Accepted], Awaitable[None]], n: int, sessions: int) -> float:
    """msgs/s of `sessions` concurrent senders accepting `n` messages in all."""
    msgs = [message(i) for i in range(n)]
    per = [msgs[i::sessions] for i in range(sessions)]

    async def session(mine: list[Accepted]) -> None:
        for msg in mine:
            await accept(msg)

    started = time.perf_counter()
    await asyncio.gather(*(session(mine) for mine in per))
    return n / (time.perf_counter() - started)


async def run_psycopg(url: str, n: int, sessions: int) -> tuple[float, int]:
    async with psycopg_pool.AsyncConnectionPool(url, min_size=2, max_size=10, kwargs={"autocommit": True},
                                                open=False) as pool:
        await pool.wait()

        async def commit(batch: list[Accepted]) -> None:
            rows = rows_of(batch)
            async with pool.connection() as conn, conn.transaction(), conn.pipeline(), conn.cursor() as cur:
                for table in TABLES:
                    if rows[table]:
                        await cur.executemany(PSYCOPG_SQL[table], rows[table])

        writer = GroupCommit(commit)
        rate = await drive(writer.accept, n, sessions)
        await writer.stop()
        return rate, writer.batches


async def run_asyncpg(url: str, n: int, sessions: int) -> tuple[float, int]:
    pool = await asyncpg.create_pool(url, min_size=2, max_size=10)
    try:
        async def commit(batch: list[Accepted]) -> None:
            rows = rows_of(batch)
            async with pool.acquire() as conn, conn.transaction():
                for table in TABLES:
                    if rows[table]:
                        await conn.executemany(ASYNCPG_SQL[table], rows[table])

        writer = GroupCommit(commit)
        rate = await drive(writer.accept, n, sessions)
        await writer.stop()
        return rate, writer.batches
    finally:
        await pool.close()


async def run_store(url: str, spool: Path, n: int, sessions: int) -> tuple[float, int]:
    store = PostgresStore(url, node_id="bench", spool_dir=spool)
    await store.open()
    try:
        rate = await drive(store.accept, n, sessions)
        return rate, store.stats.batches
    finally:
        await store.close()


def empty(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("TRUNCATE deliveries, archive, bodies, body_chunks, messages, quarantine")
        conn.execute("CHECKPOINT")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    cluster = LocalCluster.create()
    try:
        cluster.start()
        url = cluster.url()
        await migrate(url)
        spool = cluster.root / "spool"
        results: dict[str, list[float]] = {"psycopg": [], "asyncpg": [], "PostgresStore": []}
        batches: dict[str, list[int]] = {name: [] for name in results}
        await run_psycopg(url, 300, args.sessions)  # warm-up: server caches, first connections
        await run_asyncpg(url, 300, args.sessions)
        for _ in range(args.rounds):
            runners: tuple[tuple[str, Callable[[], Awaitable[tuple[float, int]]]], ...] = (
                ("psycopg", lambda: run_psycopg(url, args.n, args.sessions)),
                ("asyncpg", lambda: run_asyncpg(url, args.n, args.sessions)),
                ("PostgresStore", lambda: run_store(url, spool, args.n, args.sessions)),
            )
            for name, runner in runners:
                empty(url)
                rate, count = await runner()
                results[name].append(rate)
                batches[name].append(count)
        print(f"accept path, {args.n} messages of 2 KB, {args.sessions} concurrent, group commit,"
              f" fsync=on synchronous_commit=on, median of {args.rounds} rounds")
        for name, rates in results.items():
            rounds = ", ".join(f"{r:.0f}" for r in rates)
            print(f"  {name:14s} {statistics.median(rates):8.0f} msgs/s   (rounds: {rounds};"
                  f" transactions per run: {statistics.median(batches[name]):.0f})")
        ratio = statistics.median(results["psycopg"]) / statistics.median(results["asyncpg"])
        print(f"  psycopg / asyncpg = {ratio:.2f}")
    finally:
        cluster.destroy()


if __name__ == "__main__":
    asyncio.run(main())
