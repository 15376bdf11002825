"""The relay in its own process, so delivery uses the second core while the SMTP front end uses one.

Protocol between `serve` (parent) and `liveprism relay` (child):
- the parent opens the store as owner (state lock + crash recovery) before starting the child,
  and passes the lock's file descriptor down. flock locks belong to the open file, so after a
  crash of the parent the lock stays held until the child has exited too: a new gateway on the
  same state waits for the old relay instead of recovering under its feet;
- each accepted message makes the parent write one byte to the child's stdin (coalesced per
  event-loop turn); the child wakes its worker. Without wakes it still polls every second;
- stdin EOF makes the child stop claiming and exit: after finishing the attempts in flight when
  the parent announced the stop (STOP_BYTE), or after at most ORPHAN_GRACE seconds when the
  parent died without a word (a restarted gateway is waiting for the state lock);
- the parent restarts a child that dies unexpectedly; the new child first makes deliveries
  left `inflight` due again (it is then the only relay: nothing else is in flight);
- the child loads and hot-reloads the same policy dir itself, for routes and retry settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine import aio
from engine.graph.compiler import load_graph
from engine.graph.live import LivePolicy
from engine.relay.nexthop import NextHops
from engine.relay.worker import RelayWorker
from engine.store.base import open_store

log = logging.getLogger("liveprism.relay")
RESTART_DELAY = 1.0
STOP_TIMEOUT = 60.0
STOP_BYTE = b"S"  # written by a parent that stops on purpose, before it closes the pipe
ORPHAN_GRACE = 5.0  # seconds in-flight attempts get when the parent is gone without a word


class RelayProcess:
    """Parent side: starts, wakes, supervises and stops the relay child."""

    def __init__(self, policy_dir: Path, state: Path, lock_fd: int | None) -> None:
        self._argv = [sys.executable, "-m", "engine", "relay", str(policy_dir), "--state", str(state)]
        self._lock_fd = lock_fd
        self._proc: asyncio.subprocess.Process | None = None
        self._wake_pending = False
        self._stopping = False

    async def _spawn(self) -> asyncio.subprocess.Process:
        pass_fds = (self._lock_fd,) if self._lock_fd is not None else ()
        return await asyncio.create_subprocess_exec(
            *self._argv, stdin=subprocess.PIPE, pass_fds=pass_fds, stdout=None, stderr=None
        )

    async def supervise(self) -> None:
        """Run the child; restart it when it dies unexpectedly; return once stopped."""
        while not self._stopping:
            self._proc = await self._spawn()
            code = await self._proc.wait()
            if self._stopping:
                return
            log.error("relay process exited with %s; restarting in %.0f s", code, RESTART_DELAY)
            await asyncio.sleep(RESTART_DELAY)

    def wake(self) -> None:
        """Tell the child a message was queued (one write per event-loop turn at most)."""
        if not self._wake_pending:
            self._wake_pending = True
            asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        proc = self._proc
        if proc is not None and proc.stdin is not None and proc.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.write(b".")

    async def stop(self) -> None:
        """Close the child's stdin and wait for it to finish its attempts in flight."""
        self._stopping = True
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.write(STOP_BYTE)
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
        except TimeoutError:
            log.error("relay process did not stop in %.0f s; killing it", STOP_TIMEOUT)
            proc.kill()
            await proc.wait()


async def _child(policy: LivePolicy, state: Path) -> None:
    store = open_store(state, owner=False, fsync_commits=False)
    await store.open()
    requeued = await store.requeue_inflight(time.time())
    if requeued:
        log.info("relay start: %d in-flight deliveries due again", requeued)
    next_hops = NextHops(
        tenant_routes=lambda tenant: policy.graph.tenant_routes(tenant),
        tenant_of_domain=lambda domain: policy.graph.tenant_of_domain(domain),
        dns_settings=policy.graph.gateway.dns,
    )
    relay = RelayWorker(store, next_hops, lambda: policy.graph.gateway.delivery, policy.graph.gateway.hostname)
    worker = asyncio.create_task(relay.run(), name="relay")
    reload_task = asyncio.create_task(policy.watch(), name="reload")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    announced = orphaned = False

    async def wakes() -> None:
        nonlocal announced, orphaned
        while data := await reader.read(4096):
            announced = announced or STOP_BYTE in data
            relay.wake()
        orphaned = not announced  # EOF: the parent is stopping (it sent STOP_BYTE first) or gone
        stop.set()

    wake_task = asyncio.create_task(wakes(), name="wakes")
    await stop.wait()
    wake_task.cancel()
    reload_task.cancel()
    if not orphaned:  # the parent stops on purpose, or we got SIGTERM/SIGINT
        await relay.stop()
    else:  # the parent died: a new gateway waits for our lock, so do not keep it waiting long
        try:
            await asyncio.wait_for(relay.stop(), ORPHAN_GRACE)
        except TimeoutError:
            log.warning("parent gone: leaving deliveries still in flight to the next start")
            worker.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await worker
    await store.close()


def run_relay(policy_dir: Path, state: Path) -> int:
    """Entry point of `liveprism relay` (started by `serve`)."""
    result = load_graph(policy_dir)
    if result.graph is None:
        print("error: the policy is invalid; relay not starting", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=result.graph.gateway.log.level.upper(), stream=sys.stderr,
        format=f"%(asctime)s %(name)s[relay {os.getpid()}] %(levelname)s %(message)s",
    )
    aio.run(_child(LivePolicy(policy_dir, result.graph), state))
    return 0
