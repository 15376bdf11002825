"""`liveprism serve`: the running gateway — listeners, store, relay worker and hot reload.

Lifecycle guarantees:
- startup: the policy must be valid (else exit 2 with every problem printed); the store
  recovers the spool (files of unacknowledged messages are dropped, acknowledged ones are
  delivered);
- hot reload (`LivePolicy.reload`, one path for the file watcher, a symlink swap, SIGHUP,
  `POST /reload` and git sync): the policy is loaded (changed files only), validated and compiled
  off the event loop; the new graph replaces the old one atomically, then every worker process
  is told to load the same directory and the reload answers once they all did. An invalid policy
  is recorded with its problems (`GET /policy`) and the running graph stays;
- `--workers N`: this process serves SMTP and owns the store, the relay child, the admin API and
  reloads; N-1 worker processes (`engine.serve.workers`) accept on the same listening socket (bound
  here, inherited: pre-fork, so a second gateway started on the same port by mistake fails to
  bind instead of silently taking half the connections, as SO_REUSEPORT would let it);
- delivery runs in a child process (`engine.relay.process`), woken after each accept;
- SIGTERM/SIGINT: stop accepting connections, let open sessions finish their transaction
  (up to `frontend.SHUTDOWN_GRACE` seconds), let in-flight delivery attempts finish, close the store.
  The queue stays on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from engine.admin import multiproc
from engine.graph.build.incremental import IncrementalLoader
from engine.graph.build.live import Attempt, LivePolicy, ReloadResult
from engine.graph.filter_graph import FilterGraph
from engine.policy.models import Gateway, Storage
from engine.relay.process import RelayProcess
from engine.serve import aio
from engine.serve.frontend import FrontEnd, listening_socket
from engine.serve.gitsync import Applied, GitSettings, GitSync
from engine.serve.malloc import return_large_buffers
from engine.serve.privileges import Account, drop_privileges, resolve_account
from engine.serve.workers import WorkerPool
from engine.store import open_store, state_dir
from engine.store.base import Store
from engine.store.permissions import chown_state_dir

log = logging.getLogger("liveprism.serve")
PURGE_INTERVAL = 3600.0


class GatewayService:
    """The gateway's main process: SMTP front end and store owner; relay and workers run as its children."""

    def __init__(self, policy: LivePolicy, state: Path, *, workers: int = 1, git: GitSync | None = None,
                 account: Account | None = None) -> None:
        self.policy = policy
        self.state = state
        self.account = account  # `--user`: the account to become once the ports are bound
        self.workers = workers
        self.git = git
        self._stopping = asyncio.Event()
        self._relay: RelayProcess | None = None
        self._pool: WorkerPool | None = None
        self._store: Store | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    async def run(self) -> None:
        gateway = self.policy.graph.gateway
        store = self._store = open_store(self.state)
        await store.open()
        relay = self._relay = RelayProcess(self.state, store.lock_fd)
        listener = gateway.listeners.inbound
        sock = listening_socket(listener)
        outbound_sock = listening_socket(gateway.listeners.outbound) if gateway.listeners.outbound_enabled else None
        pool = self._pool = WorkerPool(self.workers - 1, sock, self.state, self.policy, relay.wake,
                                       outbound_sock=outbound_sock)
        self.policy.after_reload.append(("workers", pool.converge))
        front = await FrontEnd.start(self.policy, store, relay, sock, outbound_sock)
        admin = await self._start_admin(gateway)
        if self.account is not None:  # ports bound: give up root before the relay and workers start
            chown_state_dir(self.state, self.account.uid, self.account.gid)
            multiproc.hand_over(self.account.uid, self.account.gid)
            drop_privileges(self.account)
            log.info("running as %s (uid %d)", self.account.name, self.account.uid)
        elif os.geteuid() == 0:
            log.warning("running as root: use --user NAME to drop privileges after binding the ports")
        relay.publish(self.policy.graph)
        self.policy.on_reload.append(relay.publish)
        relay_task = asyncio.create_task(relay.supervise(), name="relay")
        await pool.start()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        if self.git is not None:
            reload_task = asyncio.create_task(self._git_periodically(), name="git-sync")
        else:
            reload_task = asyncio.create_task(self.policy.watch(), name="reload")
        purge_task = asyncio.create_task(self._purge_periodically(store), name="purge")
        gc.freeze()  # what startup built lives on: gen-2 collections skip it (a 0.2 s pause each, issue 7)
        log.info("listening on %s:%d%s workers=%d policy=%s state=%s", listener.address, listener.port,
                 f" outbound={gateway.listeners.outbound.address}:{gateway.listeners.outbound.port}"
                 if outbound_sock is not None else "", self.workers, self.policy.graph.version, self.state)
        await self._stopping.wait()

        log.info("stopping: no new connections; finishing open sessions")
        reload_task.cancel()
        purge_task.cancel()
        await asyncio.gather(front.stop(), pool.stop())
        if admin is not None:
            await admin.stop()
        await relay.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await relay_task
        await store.close()
        log.info("stopped; queue left in %s", self.state)

    # ------------------------------------------------------------ reload triggers

    async def reload(self, trigger: str) -> ReloadResult:
        """SIGHUP and `POST /reload`: reload the directory now, or run a git sync pass now."""
        if self.git is None:
            return await self.policy.reload(trigger)
        outcome = await self.git.run_pass(self._apply_release, force=True)
        attempt = self.policy.last_attempt
        if outcome.outcome in ("applied", "rejected") and attempt is not None:
            return ReloadResult(attempt, self.policy.graph.version, {"git": outcome.outcome})
        failed = Attempt(
            version=outcome.version or "", directory=str(self.git.current), at=time.time(), trigger=trigger,
            applied=outcome.outcome == "unchanged", problems=outcome.problems, revision=outcome.revision,
        )
        return ReloadResult(failed, self.policy.graph.version, {"git": outcome.outcome})

    def _on_sighup(self) -> None:
        log.info("SIGHUP: reloading")
        task = asyncio.create_task(self.reload("sighup"))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _apply_release(self, policy_dir: Path, revision: str) -> Applied:
        assert self.git is not None
        result = await self.policy.reload(
            "git", policy_dir, revision=revision, source=f"{self.git.settings.remote}#{self.git.settings.branch}"
        )
        return Applied(result.applied, result.attempt.version, result.attempt.problems)

    async def _git_periodically(self) -> None:
        assert self.git is not None
        while True:
            await asyncio.sleep(self.git.settings.interval)
            try:
                await self.git.run_pass(self._apply_release)
            except Exception:
                log.exception("git sync pass failed; next one in %.0f s", self.git.settings.interval)

    # ------------------------------------------------------------ admin

    async def _start_admin(self, gateway: Gateway) -> Any:
        if gateway.admin is None:
            return None
        from engine.admin.server import AdminContext, AdminServer

        context = AdminContext(
            policy=self.policy, reload=self.reload, ready=self._not_ready, workers=self._worker_versions,
            git=lambda: self.git.status() if self.git is not None else None, state=self.state,
        )
        server = AdminServer(context, gateway.admin)
        await server.start()
        return server

    def _worker_versions(self) -> dict[str, str]:
        versions = {"0": self.policy.graph.version}
        if self._pool is not None:
            versions.update(self._pool.versions())
        return versions

    async def _not_ready(self) -> list[str]:
        reasons: list[str] = []
        if self.policy.graph is None:
            reasons.append("policy: none loaded")
        if not await asyncio.to_thread(_writable, self.state):
            reasons.append(f"store: {self.state} is not writable")
        if self._relay is None or not self._relay.alive:
            reasons.append("relay: the delivery process is not running")
        if self._pool is not None:
            reasons.extend(self._pool.problems())
        return reasons

    async def _purge_periodically(self, store: Store) -> None:
        """Drop archived and quarantined mail past its retention, at start and then hourly."""
        while True:
            gateway = self.policy.graph.gateway
            try:
                result = await store.purge_expired(
                    time.time(), gateway.archive.retention_days, gateway.quarantine.retention_days
                )
                log.info("retention purge: %s", result)
            except Exception:
                log.exception("retention purge failed; retrying in an hour")
            await asyncio.sleep(PURGE_INTERVAL)


def _writable(state: Path) -> bool:
    """The state directory takes a small durable write (the store's spool lives there)."""
    probe = state / ".readyz"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
        return True
    except OSError:
        return False


def parse_workers(value: str) -> int | None:
    """`--workers`: a positive number, or `auto` (one per CPU core); None when invalid."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    return int(value) if value.isdigit() and int(value) >= 1 else None


def _print_problems(directory: Path, problems: Any) -> None:
    for problem in problems:
        print(problem.format("text", directory), file=sys.stderr)


def _initial_git_policy(git: GitSync, loader: IncrementalLoader) -> tuple[FilterGraph | None, Path]:
    """At start: the branch head when valid, else the release applied before (kept in `current`)."""

    async def apply(policy_dir: Path, revision: str) -> Applied:
        result, _ = await asyncio.to_thread(loader.load_graph, policy_dir)
        applied = result.graph is not None
        _print_problems(policy_dir, [p for p in result.problems if p.severity == "error"])
        return Applied(applied, result.graph.version if result.graph else "", ())

    outcome = asyncio.run(git.run_pass(apply))
    if outcome.outcome == "fetch-failed":
        print(f"warning: git fetch failed: {'; '.join(outcome.problems)}", file=sys.stderr)
    if not git.current.exists():
        return None, git.current
    result, _ = loader.load_graph(git.current.resolve())
    return result.graph, git.current


def run_serve(policy_dir: Path, state_override: Path | None, *, workers: int = 1,
              git_settings: GitSettings | None = None, user: str | None = None) -> int:
    """Load the policy and run the gateway until SIGTERM; exit 2 when the policy is invalid or
    `user` cannot be used."""
    return_large_buffers()
    account = resolve_account(user) if user is not None else None
    if isinstance(account, str):
        print(f"error: {account}", file=sys.stderr)
        return 2
    loader = IncrementalLoader()
    git: GitSync | None = None
    if git_settings is not None:
        git = GitSync(git_settings, state_dir(Storage(), state_override) / "git")
        graph, policy_dir = _initial_git_policy(git, loader)
        if graph is None:
            print("error: no valid policy from git and none applied before; not starting", file=sys.stderr)
            return 2
    else:
        result, _ = loader.load_graph(policy_dir.resolve())
        if result.graph is None:
            _print_problems(policy_dir, result.problems)
            print("error: the policy is invalid; not starting", file=sys.stderr)
            return 2
        graph = result.graph
    logging.basicConfig(
        level=graph.gateway.log.level.upper(), stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    source = f"{git_settings.remote}#{git_settings.branch}" if git_settings is not None else None
    live = LivePolicy(policy_dir, graph, source=source, loader=loader)
    if git is not None:
        live.revision = git.state.applied
    os.umask(0o077)  # whatever this process or its children create is private (the store also sets modes)
    service = GatewayService(live, state_dir(graph.gateway.storage, state_override), workers=workers, git=git,
                             account=account)
    aio.run(service.run())
    return 0

