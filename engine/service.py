"""`liveprism serve`: the running gateway — listeners, store, relay worker and hot reload.

Lifecycle guarantees:
- startup: the policy must be valid (else exit 2 with every problem printed); the store
  recovers the spool (files of unacknowledged messages are dropped, acknowledged ones are
  delivered);
- hot reload (`LivePolicy`): a change under the policy dir is loaded, validated and compiled
  off the event loop; the new graph replaces the old one atomically. An invalid policy is
  logged with its problems and the running graph stays;
- delivery runs in a child process (`engine.relay.process`), woken after each accept;
- SIGTERM/SIGINT: stop accepting connections, let open sessions finish their transaction
  (up to `SHUTDOWN_GRACE` seconds), let in-flight delivery attempts finish, close the store.
  The queue stays on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from engine import aio
from engine.graph.compiler import load_graph
from engine.graph.live import LivePolicy
from engine.policy.models import Gateway
from engine.privileges import Account, drop_privileges, resolve_account
from engine.relay.process import RelayProcess
from engine.smtp.handler import InboundHandler
from engine.smtp.protocol import ConnectionLimits, GatewaySMTP, install_aiosmtpd_speedups
from engine.store import open_store, state_dir
from engine.store.base import Store
from engine.store.permissions import chown_state_dir

log = logging.getLogger("liveprism.serve")
SHUTDOWN_GRACE = 30.0
PURGE_INTERVAL = 3600.0


@contextlib.contextmanager
def _secret_file(reference: str, policy_dir: Path) -> Iterator[str]:
    """A path for a secret given as a path (relative to the policy dir) or `env:NAME` holding PEM
    text; the latter lives in a 0600 temporary file only while the block runs."""
    if not reference.startswith("env:"):
        path = Path(reference)
        yield str(path if path.is_absolute() else policy_dir / path)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as handle:
        os.chmod(handle.name, 0o600)
        handle.write(os.environ.get(reference[4:], ""))
        handle.flush()
        yield handle.name


def tls_context(gateway: Gateway, policy_dir: Path) -> ssl.SSLContext | None:
    """Server context for STARTTLS when `tls.cert` and `tls.key` are set."""
    if not gateway.tls.cert or not gateway.tls.key:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    with _secret_file(gateway.tls.cert, policy_dir) as cert, _secret_file(gateway.tls.key, policy_dir) as key:
        context.load_cert_chain(cert, key)
    return context


class GatewayService:
    """One gateway process: the SMTP front end and store owner; the relay runs as its child."""

    def __init__(self, policy: LivePolicy, state: Path, account: Account | None = None) -> None:
        self.policy = policy
        self.state = state
        self.account = account  # `--user`: the account to become once the ports are bound
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        install_aiosmtpd_speedups()
        gateway = self.policy.graph.gateway
        store = open_store(self.state)
        await store.open()
        relay = RelayProcess(self.state, store.lock_fd)
        handler = InboundHandler(
            current_graph=self.policy.current, store=store, relay=relay,
            log_format=lambda: self.policy.graph.gateway.log.format,
        )
        limits = ConnectionLimits(
            lambda: (self.policy.graph.gateway.limits.max_connections,
                     self.policy.graph.gateway.limits.max_connections_per_ip)
        )
        context = tls_context(gateway, self.policy.policy_dir)
        listener = gateway.listeners.inbound

        def factory() -> GatewaySMTP:
            current = self.policy.graph.gateway
            return GatewaySMTP(
                handler, limits,
                hostname=current.hostname, ident="LivePrism ESMTP",
                data_size_limit=current.limits.max_message_size, enable_SMTPUTF8=True, decode_data=False,
                tls_context=context, timeout=current.limits.command_timeout,
            )

        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, listener.address, listener.port, backlog=1024)
        if self.account is not None:  # ports bound: give up root before the relay child starts
            chown_state_dir(self.state, self.account.uid, self.account.gid)
            drop_privileges(self.account)
            log.info("running as %s (uid %d)", self.account.name, self.account.uid)
        elif os.geteuid() == 0:
            log.warning("running as root: use --user NAME to drop privileges after binding the ports")
        relay.publish(self.policy.graph)
        self.policy.on_reload.append(relay.publish)
        relay_task = asyncio.create_task(relay.supervise(), name="relay")
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        reload_task = asyncio.create_task(self.policy.watch(), name="reload")
        purge_task = asyncio.create_task(self._purge_periodically(store), name="purge")
        gc.freeze()  # what startup built lives on: gen-2 collections skip it (a 0.2 s pause each, issue 7)
        log.info("listening on %s:%d policy=%s state=%s", listener.address, listener.port,
                 self.policy.graph.version, self.state)
        await self._stopping.wait()

        log.info("stopping: no new connections; finishing open sessions")
        server.close()
        reload_task.cancel()
        purge_task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(limits.idle.wait(), SHUTDOWN_GRACE)
        await relay.stop()
        with contextlib.suppress(asyncio.CancelledError):
            await relay_task
        await store.close()
        log.info("stopped; queue left in %s", self.state)

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


def run_serve(policy_dir: Path, state_override: Path | None, user: str | None = None) -> int:
    """Load the policy and run the gateway until SIGTERM; exit 2 when the policy is invalid or
    `user` cannot be used."""
    account = resolve_account(user) if user is not None else None
    if isinstance(account, str):
        print(f"error: {account}", file=sys.stderr)
        return 2
    result = load_graph(policy_dir)
    if result.graph is None:
        for problem in result.problems:
            print(problem.format("text", policy_dir), file=sys.stderr)
        print("error: the policy is invalid; not starting", file=sys.stderr)
        return 2
    graph = result.graph
    logging.basicConfig(
        level=graph.gateway.log.level.upper(), stream=sys.stderr,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    logging.getLogger("mail.log").setLevel(logging.WARNING)  # aiosmtpd's per-command chatter
    os.umask(0o077)  # whatever this process or its relay child creates is private (the store also sets modes)
    service = GatewayService(LivePolicy(policy_dir, graph), state_dir(graph.gateway.storage, state_override), account)
    aio.run(service.run())
    return 0
