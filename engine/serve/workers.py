"""SMTP worker processes (`serve --workers N`): more cores for the front end, one policy version.

Protocol between the parent (`serve`) and each worker (`liveprism worker`, started by it):
- the parent binds the listening sockets (inbound, and outbound when configured) and passes them
  down (pre-fork: every process accepts from the same queue); it also passes one end of a
  socketpair, the control channel, carrying JSON lines both ways;
- the worker opens the store as a non-owner (the parent owns it, recovers it and runs the
  relay), loads the directory it was started with, serves SMTP and says `{"version": V}`;
- after each accepted message the worker sends `w` (coalesced per event-loop turn); the parent
  wakes its relay, so delivery starts at once whichever process accepted;
- after a successful reload the parent sends `{"load": DIR}`: the worker loads DIR through the
  same `LivePolicy.reload` path (its own incremental cache, its own validation: it never serves
  what does not validate), swaps, and answers `{"version": V}`; the parent's reload answers
  when every worker did (or after CONVERGE_TIMEOUT), with each worker's version;
- SIGTERM or the control channel's EOF (the parent is gone) stops the worker gracefully: no new
  connections, open sessions finish. The parent restarts a worker that dies unexpectedly.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.graph.build.incremental import IncrementalLoader
from engine.graph.build.live import LivePolicy
from engine.serve import aio
from engine.serve.frontend import FrontEnd
from engine.serve.malloc import return_large_buffers
from engine.store import open_store

log = logging.getLogger("liveprism.workers")
CONVERGE_TIMEOUT = 300.0
RESTART_DELAY = 1.0
STOP_TIMEOUT = 60.0


@dataclass
class _Worker:
    index: int
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    version: str = ""
    waiters: list[asyncio.Future[str]] = field(default_factory=list)


class WorkerPool:
    """Parent side: starts `count` workers on `sock`, relays their wakes, tells them to reload."""

    def __init__(self, count: int, sock: socket.socket, state: Path, policy: LivePolicy,
                 wake: Callable[[], None], *, outbound_sock: socket.socket | None = None) -> None:
        self._workers = [_Worker(index) for index in range(1, count + 1)]
        self._sock = sock
        self._outbound_sock = outbound_sock
        self._state = state
        self._policy = policy
        self._wake = wake
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for worker in self._workers:
            started = asyncio.get_running_loop().create_future()
            worker.waiters.append(started)
            self._tasks.append(asyncio.create_task(self._supervise(worker), name=f"worker-{worker.index}"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(started), CONVERGE_TIMEOUT)

    def versions(self) -> dict[str, str]:
        return {str(worker.index): worker.version for worker in self._workers}

    def problems(self) -> list[str]:
        return [f"worker {w.index}: not serving yet" for w in self._workers
                if w.proc is None or w.proc.returncode is not None or not w.version]

    async def _supervise(self, worker: _Worker) -> None:
        from engine.metrics import process_exited

        while not self._stopping:
            parent_end, child_end = socket.socketpair()
            argv = [sys.executable, "-m", "engine", "worker", "--state", str(self._state),
                    "--policy", str(self._policy.directory), "--listen-fd", str(self._sock.fileno()),
                    "--control-fd", str(child_end.fileno()), "--index", str(worker.index)]
            fds = [self._sock.fileno(), child_end.fileno()]
            if self._outbound_sock is not None:
                argv += ["--outbound-fd", str(self._outbound_sock.fileno())]
                fds.append(self._outbound_sock.fileno())
            worker.proc = await asyncio.create_subprocess_exec(*argv, pass_fds=fds, stdin=subprocess.DEVNULL)
            child_end.close()
            reader, worker.writer = await asyncio.open_unix_connection(sock=parent_end)
            listen = asyncio.create_task(self._listen(worker, reader))
            code = await worker.proc.wait()
            listen.cancel()
            worker.writer.close()
            worker.version = ""
            process_exited(worker.proc.pid)
            if self._stopping:
                return
            log.error("worker %d exited with %s; restarting in %.0f s", worker.index, code, RESTART_DELAY)
            await asyncio.sleep(RESTART_DELAY)

    async def _listen(self, worker: _Worker, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            if line == b"w\n":
                self._wake()
                continue
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "version" in message:
                worker.version = str(message["version"])
                waiters, worker.waiters = worker.waiters, []
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(worker.version)

    async def converge(self, policy: LivePolicy) -> dict[str, str]:
        """Tell every worker to load the directory `policy` now serves; their versions once they did."""
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[str]] = []
        command = (json.dumps({"load": str(policy.directory)}) + "\n").encode()
        for worker in self._workers:
            if worker.writer is None or worker.proc is None or worker.proc.returncode is not None:
                continue
            waiter = loop.create_future()
            worker.waiters.append(waiter)
            pending.append(waiter)
            worker.writer.write(command)
        if pending:
            done, _ = await asyncio.wait(pending, timeout=CONVERGE_TIMEOUT)
            if len(done) < len(pending):
                log.error("%d worker(s) did not confirm the reload in %.0f s", len(pending) - len(done),
                          CONVERGE_TIMEOUT)
        versions = self.versions()
        if any(version != policy.graph.version for version in versions.values()):
            log.warning("workers serve %s, the parent %s (files changed meanwhile: the watcher reloads again)",
                        versions, policy.graph.version)
        return versions

    async def stop(self) -> None:
        self._stopping = True
        procs = [w.proc for w in self._workers if w.proc is not None and w.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for task in self._tasks:
            task.cancel()


# ---------------------------------------------------------------- worker side


class _ParentWaker:
    """The worker's `Waker`: tells the parent (which owns the relay) that a message was queued."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._pending = False

    def wake(self) -> None:
        if not self._pending:
            self._pending = True
            asyncio.get_running_loop().call_soon(self._send)

    def _send(self) -> None:
        self._pending = False
        if not self._writer.is_closing():
            self._writer.write(b"w\n")


async def _worker_main(state: Path, policy_dir: Path, listen_fd: int, control_fd: int, index: int,
                       outbound_fd: int | None = None) -> int:
    loader = IncrementalLoader()
    result, _ = await asyncio.to_thread(loader.load_graph, policy_dir)
    if result.graph is None:
        log.error("worker %d: the policy in %s is invalid", index, policy_dir)
        return 2
    logging.getLogger().setLevel(result.graph.gateway.log.level.upper())
    policy = LivePolicy(policy_dir, result.graph, loader=loader)
    reader, writer = await asyncio.open_unix_connection(sock=socket.socket(fileno=control_fd))
    store = open_store(state, owner=False)
    await store.open()
    front = await FrontEnd.start(policy, store, _ParentWaker(writer), socket.socket(fileno=listen_fd),
                                 socket.socket(fileno=outbound_fd) if outbound_fd is not None else None)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # reloads come from the parent

    def say(message: dict[str, Any]) -> None:
        if not writer.is_closing():
            writer.write((json.dumps(message) + "\n").encode())

    async def commands() -> None:
        while line := await reader.readline():
            try:
                directory = json.loads(line).get("load")
            except (ValueError, AttributeError):
                continue
            if directory:
                await policy.reload("parent", Path(directory))
                say({"version": policy.graph.version})
        stop.set()  # EOF: the parent is gone

    say({"version": policy.graph.version})
    log.info("worker %d (pid %d) serving policy %s", index, os.getpid(), policy.graph.version)
    command_task = asyncio.create_task(commands())
    await stop.wait()
    command_task.cancel()
    await front.stop()
    await store.close()
    return 0


def run_worker(state: Path, policy_dir: Path, listen_fd: int, control_fd: int, index: int,
               outbound_fd: int | None = None) -> int:
    """Entry point of `liveprism worker` (started by `serve --workers N`)."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s %(name)s[worker {index} {os.getpid()}] %(levelname)s %(message)s",
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    code = 0
    return_large_buffers()

    async def main() -> None:
        nonlocal code
        code = await _worker_main(state, policy_dir, listen_fd, control_fd, index, outbound_fd)

    aio.run(main())
    return code
