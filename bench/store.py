"""Benchmark of Store.accept: durable accepts per second and accept latency, fsync on.

Usage: python bench/store.py [--messages N] [--concurrency C] [--size BYTES] [--dir DIR] [--uvloop]

C acceptor tasks (default 20, as many SMTP sessions finishing DATA at once) each accept
messages of ~2 KB in a loop until N (default 5000) are stored. Each message has one `deliver`
copy and is archived, so every accept writes a body row, a message row, a delivery row and an
archive row — what the SMTP layer stores for ordinary inbound mail. Latency is from the call
to `accept` until it returns (the moment the SMTP layer may say 250).

Prints one line in the peer-benchmark format, then the writer's group-commit counters:

    store_accept msgs_per_s=X p50_ms=Y p99_ms=Z
    # batches=B messages_per_batch=F ...
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from engine.policy.models import Action
from engine.store.base import Accepted, CopyPlan, StoredEnvelope, new_queue_id
from engine.store.sqlite import SqliteStore


def message(size: int) -> Accepted:
    queue_id = new_queue_id()
    head = (
        f"From: Alice <alice@sender.example>\r\nTo: bob@acme.example\r\nSubject: bench {queue_id}\r\n"
        f"Message-ID: <{queue_id}@sender.example>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    raw = head + line * max(1, (size - len(head)) // len(line))
    verdict = {"action": "deliver", "score": 0.5, "hits": [], "reason": "clean"}
    envelope = StoredEnvelope("alice@sender.example", ("bob@acme.example",), "192.0.2.1", "client.example", time.time())
    headers = f"Received: from client.example by mxpath.example with ESMTP id {queue_id}\r\n".encode()
    plan = CopyPlan("acme", ("bob@acme.example",), Action.deliver, headers, reason="clean", score=0.5)
    return Accepted(queue_id, raw, envelope, f"bench {queue_id}", "bench", verdict, (plan,), archive=True)


async def bench(state: Path, total: int, concurrency: int, size: int) -> None:
    store = SqliteStore(state)
    await store.open()
    latencies: list[float] = []
    remaining = total

    async def acceptor() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            msg = message(size)
            start = time.perf_counter()
            await store.accept(msg)
            latencies.append(time.perf_counter() - start)

    begin = time.perf_counter()
    await asyncio.gather(*(acceptor() for _ in range(concurrency)))
    elapsed = time.perf_counter() - begin
    stats = store.stats
    await store.close()
    cuts = statistics.quantiles(latencies, n=100)
    print(f"store_accept msgs_per_s={total / elapsed:.0f} p50_ms={cuts[49] * 1000:.2f} p99_ms={cuts[98] * 1000:.2f}")
    print(
        f"# messages={total} size={len(message(size).raw)} concurrency={concurrency} seconds={elapsed:.2f}"
        f" batches={stats.batches} messages_per_batch={stats.messages_written / max(stats.batches, 1):.1f}"
        f" state={state}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--dir", type=Path, default=None, help="where to create the store (default: a temp dir)")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="liveprism-bench-", dir=args.dir) as tmp:
        coro = bench(Path(tmp) / "state", args.messages, args.concurrency, args.size)
        if args.uvloop:
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)


if __name__ == "__main__":
    main()
