"""What the checks need from a resolver, and a time budget shared by the lookups of one check.

`AsyncLookup` is the one method of `engine.dns.resolver.Resolver` the checks call, so tests can
hand them an in-memory fake with the same contract (never raises; outcomes are `DnsAnswer`s).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Sequence
from typing import Protocol, TypeVar

from engine.dns.resolver import DnsAnswer

T = TypeVar("T")


async def gather(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """`asyncio.gather` of `awaitables`, without a task for each when there is only one (one zone,
    one key: the usual case; a task per lookup costs more than a cached answer)."""
    if len(awaitables) <= 1:
        return [await a for a in awaitables]
    return list(await asyncio.gather(*awaitables))


class AsyncLookup(Protocol):
    timeout: float

    async def query(self, name: str, rdtype: str, *, timeout: float | None = None) -> DnsAnswer: ...


class Budget:
    """A deadline for all the lookups of one check: each query gets at most the time left."""

    def __init__(self, resolver: AsyncLookup, total: float | None) -> None:
        self._per_query = resolver.timeout
        self._deadline = None if total is None else time.monotonic() + total

    def remaining(self) -> float | None:
        return None if self._deadline is None else self._deadline - time.monotonic()

    def query_timeout(self) -> float | None:
        """Seconds the next query may take (None = the resolver's own timeout), or 0.0 when spent."""
        left = self.remaining()
        if left is None:
            return None
        return max(0.0, min(self._per_query, left))

    @property
    def exhausted(self) -> bool:
        left = self.remaining()
        return left is not None and left <= 0.0
