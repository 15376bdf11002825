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
- the child never reads the policy YAML: the parent publishes what delivery needs (routes,
  tenant domains, retry and DNS settings, host name) from its current, valid graph as
  `relay-policy.json` in the state dir, at start and after each successful reload, and writes
  POLICY_BYTE; the child reloads the file then. So an invalid policy on disk can never stop
  delivery, and both processes always route by the same policy version;
- the snapshot names each signing tenant's DKIM key (absolute path or env:NAME, never the key
  itself); the child loads the keys when it reads a snapshot. A new version in which a key that
  signs now cannot be loaded is refused (logged; the child keeps the previous version and its
  keys). A tenant whose key could not be loaded before either (at start, a new tenant, a key
  never created) does not hold back the version — other tenants' changes must not wait for
  it — but its outbound copies wait (4.7.0) until a version with a loadable key arrives:
  never sent unsigned.
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

from pydantic import BaseModel, ConfigDict

from engine.dkim.keys import KeyProblem
from engine.graph.filter_graph import FilterGraph
from engine.policy.models import DeliverySettings, DnsSettings, Route
from engine.relay.nexthop import NextHops
from engine.relay.signing import Signer, TenantKey, load_signers, problems, tenant_key
from engine.relay.worker import RelayWorker
from engine.serve import aio
from engine.serve.malloc import return_large_buffers
from engine.store import open_store

log = logging.getLogger("liveprism.relay")
RESTART_DELAY = 1.0
STOP_TIMEOUT = 60.0
STOP_BYTE = b"S"  # written by a parent that stops on purpose, before it closes the pipe
POLICY_BYTE = b"P"  # a new relay-policy.json was published
SNAPSHOT_NAME = "relay-policy.json"


class RelayPolicy(BaseModel):
    """What delivery needs of the policy, as the parent's current graph has it."""

    model_config = ConfigDict(frozen=True)

    version: str
    hostname: str
    log_level: str
    delivery: DeliverySettings
    dns: DnsSettings
    routes: dict[str, tuple[Route, ...]]  # tenant -> routes, in priority order
    domains: dict[str, str]  # domain -> tenant
    dkim: dict[str, TenantKey] = {}  # tenant -> its outbound.dkim, the key path made absolute
    tls_ca_file: str | None = None  # delivery.tls_ca_file made absolute

    @classmethod
    def of(cls, graph: FilterGraph) -> RelayPolicy:
        gateway = graph.gateway
        ca_file = gateway.delivery.tls_ca_file
        if ca_file is not None and graph.root is not None:
            ca_file = str(graph.root / ca_file)  # an absolute path stays as it is
        return cls(
            version=graph.version, hostname=gateway.hostname, log_level=gateway.log.level,
            delivery=gateway.delivery, dns=gateway.dns,
            routes={name: plan.routes for name, plan in graph.tenants.items()},
            domains={domain: name for name, plan in graph.tenants.items() for domain in plan.domains},
            dkim={name: tenant_key(graph.root, plan.outbound.dkim, plan.domains)
                  for name, plan in graph.tenants.items() if plan.outbound.dkim is not None},
            tls_ca_file=ca_file,
        )

    def publish(self, state: Path) -> None:
        """Write atomically (temporary file + rename): the child never reads half a file."""
        path = state / SNAPSHOT_NAME
        temporary = path.with_suffix(".tmp")
        temporary.write_text(self.model_dump_json())
        os.replace(temporary, path)

    @classmethod
    def read(cls, state: Path) -> RelayPolicy:
        return cls.model_validate_json((state / SNAPSHOT_NAME).read_text())
ORPHAN_GRACE = 5.0  # seconds in-flight attempts get when the parent is gone without a word


class RelayProcess:
    """Parent side: starts, wakes, supervises and stops the relay child."""

    def __init__(self, state: Path, lock_fd: int | None) -> None:
        self._state = state
        self._argv = [sys.executable, "-m", "engine", "relay", "--state", str(state)]
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

    @property
    def alive(self) -> bool:
        """The child is running (False between a crash and its restart)."""
        return self._proc is not None and self._proc.returncode is None

    def publish(self, graph: FilterGraph) -> None:
        """Hand the routing of `graph` (the parent's current, valid policy) to the child."""
        RelayPolicy.of(graph).publish(self._state)
        self._write(POLICY_BYTE)

    def _write(self, data: bytes) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None and proc.returncode is None:
            with contextlib.suppress(ConnectionError, RuntimeError):
                proc.stdin.write(data)

    def wake(self) -> None:
        """Tell the child a message was queued (one write per event-loop turn at most)."""
        if not self._wake_pending:
            self._wake_pending = True
            asyncio.get_running_loop().call_soon(self._send_wake)

    def _send_wake(self) -> None:
        self._wake_pending = False
        self._write(b".")

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


class _Routing:
    """The child's current RelayPolicy, replaced when the parent publishes a new one."""

    def __init__(self, state: Path) -> None:
        self._state = state
        self.policy = RelayPolicy.read(state)
        self.signers = load_signers(self.policy.dkim)
        for line in problems(self.signers):
            log.error("relay policy %s: %s; this tenant's outbound mail waits until the key can be loaded",
                      self.policy.version, line)

    def reload(self) -> None:
        try:
            policy = RelayPolicy.read(self._state)
        except (OSError, ValueError) as exc:  # keep routing by the last one read
            log.error("cannot read %s: %s", SNAPSHOT_NAME, exc)
            return
        signers = load_signers(policy.dkim)
        broken = {tenant: item for tenant, item in signers.items() if isinstance(item, KeyProblem)}
        regressions = problems({t: p for t, p in broken.items() if isinstance(self.signers.get(t), Signer)})
        if regressions:
            for line in regressions:
                log.error("relay policy %s refused: %s", policy.version, line)
            log.error("relay keeps policy %s (a DKIM key that signs now cannot be loaded in %s)",
                      self.policy.version, policy.version)
            return
        for line in problems(broken):
            log.error("relay policy %s: %s; this tenant's outbound mail waits until the key can be loaded",
                      policy.version, line)
        if policy.version != self.policy.version:
            log.info("relay policy %s -> %s", self.policy.version, policy.version)
        self.policy, self.signers = policy, signers

    def signer(self, tenant: str) -> Signer | KeyProblem | None:
        return self.signers.get(tenant)

    def tenant_routes(self, tenant: str) -> tuple[Route, ...]:
        return self.policy.routes.get(tenant, ())

    def tenant_of_domain(self, domain: str) -> str | None:
        return self.policy.domains.get(domain.lower().rstrip("."))


async def _child(state: Path) -> None:
    routing = _Routing(state)
    store = open_store(state, owner=False, fsync_commits=False)
    await store.open()
    requeued = await store.requeue_inflight(time.time())
    if requeued:
        log.info("relay start: %d in-flight deliveries due again", requeued)
    delivery = routing.policy.delivery
    next_hops = NextHops(
        routing.tenant_routes, routing.tenant_of_domain, routing.policy.dns, mx_port=delivery.mx_port,
        mta_sts_port=delivery.mta_sts_port, tls_ca_file=routing.policy.tls_ca_file, store=store,
    )
    relay = RelayWorker(store, next_hops, lambda: routing.policy.delivery, routing.policy.hostname,
                        signing=routing.signer)
    relay.pool.configure(routing.policy.tls_ca_file)
    worker = asyncio.create_task(relay.run(), name="relay")
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: None)  # a reload is the parent's business, not a stop

    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    announced = orphaned = False

    async def commands() -> None:
        nonlocal announced, orphaned
        while data := await reader.read(4096):
            announced = announced or STOP_BYTE in data
            if POLICY_BYTE in data:
                routing.reload()
                policy = routing.policy
                next_hops.configure(policy.dns, policy.delivery.mx_port, mta_sts_port=policy.delivery.mta_sts_port,
                                    tls_ca_file=policy.tls_ca_file)
                relay.pool.configure(policy.tls_ca_file)
            relay.wake()
        orphaned = not announced  # EOF: the parent is stopping (it sent STOP_BYTE first) or gone
        stop.set()

    command_task = asyncio.create_task(commands(), name="commands")
    await stop.wait()
    command_task.cancel()
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


def run_relay(state: Path) -> int:
    """Entry point of `liveprism relay` (started by `serve`, which published relay-policy.json)."""
    try:
        level = RelayPolicy.read(state).log_level.upper()
    except (OSError, ValueError) as exc:
        print(f"error: {exc}; the relay is started by `liveprism serve`", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format=f"%(asctime)s %(name)s[relay {os.getpid()}] %(levelname)s %(message)s",
    )
    return_large_buffers()
    aio.run(_child(state))
    return 0
