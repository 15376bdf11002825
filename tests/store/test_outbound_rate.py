"""Outbound rate limits in the store: a sliding window shared by every process on the state dir."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.store.sqlite import SqliteStore

LIMITS = (("sender:bob@acme.example", 3), ("tenant:acme", 5))


def test_take_counts_until_a_limit_then_refuses_without_counting(tmp_path: Path) -> None:
    async def run() -> list[str | None]:
        store = SqliteStore(tmp_path)
        await store.open()
        try:
            results = [await store.rate_take(LIMITS, 1000.0 + i, 3600) for i in range(4)]
            other = (("sender:eve@acme.example", 3), ("tenant:acme", 5))
            results += [await store.rate_take(other, 1010.0 + i, 3600) for i in range(3)]
            results.append(await store.rate_exceeded(LIMITS, 1020.0, 3600))
            # the window slides: an hour after the first sends, they no longer count
            results.append(await store.rate_take(LIMITS, 1000.0 + 3600.5, 3600))
            return results
        finally:
            await store.close()

    assert asyncio.run(run()) == [
        None, None, None, "sender:bob@acme.example",   # 3 per sender
        None, None, "tenant:acme",                     # the tenant's 5th and 6th… its limit is 5
        "sender:bob@acme.example",
        None,
    ]


def test_counts_survive_a_reopen_and_are_shared_with_a_second_process_store(tmp_path: Path) -> None:
    async def run() -> tuple[str | None, str | None]:
        owner = SqliteStore(tmp_path)
        await owner.open()
        for i in range(3):
            assert await owner.rate_take(LIMITS, 1000.0 + i, 3600) is None
        await owner.close()
        reopened = SqliteStore(tmp_path)
        await reopened.open()
        worker = SqliteStore(tmp_path, owner=False)  # as a `--workers` process opens it
        await worker.open()
        try:
            return (await worker.rate_take(LIMITS, 1005.0, 3600), await reopened.rate_exceeded(LIMITS, 1005.0, 3600))
        finally:
            await worker.close()
            await reopened.close()

    assert asyncio.run(run()) == ("sender:bob@acme.example", "sender:bob@acme.example")
