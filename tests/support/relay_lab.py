"""Harness of the relay tests: real aiosmtpd servers as tenants and remote MXs (`Recorder`, from
tests/support/peers.py), a tiny DNS server, a real store and a relay worker (`LabGateway`), all on
one event loop that the `relay_lab` fixture (tests/conftest.py) owns.

Everything a test starts through the lab (servers, DNS, stores, workers) is stopped in the
fixture's teardown, which runs even when an assertion failed; waiting is on events (a predicate
polled until true), never on a fixed sleep.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
from aiosmtpd.smtp import SMTP as SMTPServer

from engine.policy.models import DeliverySettings, Direction, DnsSettings, Route
from engine.relay.nexthop import NextHops
from engine.relay.worker import RelayWorker
from engine.store import open_store
from engine.store.base import Accepted, CopyPlan, Store, new_queue_id
from tests.support.messages import accepted, copy_plan
from tests.support.peers import Recorder

T = TypeVar("T")

RAW = (
    b"From: Alice <alice@sender.example>\r\n"
    b"To: bob@acme.example\r\n"
    b"Subject: quarterly numbers\r\n"
    b"Message-ID: <m1@sender.example>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b".a line starting with a dot\r\n"
    b"\r\n"
    b"trailing spaces   \r\n"
)
HEADERS = (
    b"Received: from client.example by mxpath.test; Sat, 28 Nov 2026 18:00:00 +0000\r\nX-LivePrism-Action: deliver\r\n"
)
# the lab's MX hosts are 127.0.0.1: DSNs may go there (the default refuses internal next hops)
FAST = DeliverySettings(retry_initial=1, retry_max=1, give_up_after=3600, connect_timeout=2, private_next_hops="allow")


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def wait_until_async(predicate: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.05)


class _CountingSMTP(SMTPServer):
    """aiosmtpd's server, counting closed sessions in its Recorder."""

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        cast(Recorder, self.event_handler).disconnections += 1


@dataclass
class LabGateway:
    """A store, tenants' routes and a relay worker, as `serve` wires them."""

    store: Store
    routes: dict[str, list[Route]]
    domains: dict[str, str]
    settings: DeliverySettings = FAST
    dns: DnsSettings = field(default_factory=DnsSettings)
    mx_port: int = 25
    mta_sts_port: int = 443
    tls_ca_file: str | None = None
    worker_options: dict[str, Any] = field(default_factory=dict)
    worker: RelayWorker | None = None
    task: asyncio.Task[None] | None = None

    def start(self) -> RelayWorker:
        hops = NextHops(lambda t: self.routes.get(t, []), self.domains.get, self.dns, mx_port=self.mx_port,
                        mta_sts_port=self.mta_sts_port, tls_ca_file=self.tls_ca_file)
        options = {"poll_interval": 0.1, **self.worker_options}
        self.worker = RelayWorker(self.store, hops, lambda: self.settings, "mxpath.test", **options)
        self.worker.pool.configure(self.tls_ca_file)
        self.task = asyncio.create_task(self.worker.run())
        return self.worker

    async def stop(self) -> None:
        """Stop the worker (idempotent; the lab's teardown calls it too)."""
        if self.worker is not None and self.task is not None and not self.task.done():
            await self.worker.stop()
            await self.task

    async def accept(
        self,
        *,
        mail_from: str = "alice@sender.example",
        rcpts: Sequence[str] = ("bob@acme.example",),
        tenant: str = "acme",
        action: str = "deliver",
        raw: bytes = RAW,
        subject_prefix: str | None = None,
        archive: bool = False,
        spooled: bool = False,
        outbound: bool = False,
        copies: Sequence[CopyPlan] = (),
    ) -> Accepted:
        """Store a message as the front end would: one inbound copy for `tenant` (routed by its
        routes), or with `outbound` one copy routed by address (to the recipients' MX), as the
        outbound listener stores tenants' mail to the world; or the `copies` given. `spooled`
        hands the body over as a file in the store's spool, as the SMTP layer does for large mail."""
        route_by: Literal["tenant", "address"] = "address" if outbound else "tenant"
        body = None
        if spooled:
            body = self.store.spool_dir / f"incoming-{new_queue_id()}"
            body.write_bytes(raw)
        copies = tuple(copies) or (copy_plan(tenant, action, *rcpts, headers=HEADERS, subject_prefix=subject_prefix,
                                             route_by=route_by, reason="", hits=()),)
        msg = accepted(*copies, raw=raw, mail_from=mail_from, client_ip="192.0.2.1", subject="",
                       direction=Direction.outbound if outbound else Direction.inbound, policy_version="test",
                       verdict={"action": action}, archive=archive)
        msg = replace(msg, envelope=replace(msg.envelope, rcpts=tuple(rcpts)), body=body, body_size=len(raw))
        if body is not None:
            msg = replace(msg, raw=b"")
        await self.store.accept(msg)
        if self.worker is not None:
            self.worker.wake()
        return msg

    async def queue_empty(self) -> bool:
        summary = await self.store.queue_summary()
        return summary.queued == 0 and summary.inflight == 0


class FakeDns(asyncio.DatagramProtocol):
    """A tiny authoritative DNS server: (name, type) → record texts; other names NXDOMAIN."""

    def __init__(self, records: dict[tuple[str, str], list[str]]) -> None:
        self.records = records
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        values = self.records.get((name, rdtype))
        if values:
            response.answer.append(dns.rrset.from_text(name, 60, "IN", rdtype, *values))
        elif not any(known == name for known, _ in self.records):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)


@dataclass
class RelayLab:
    """Owns one event loop and everything started on it; see the module docstring."""

    tmp_path: Path
    loop: asyncio.AbstractEventLoop
    _closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    async def serve(
        self, handler: Recorder, port: int = 0, tls_context: ssl.SSLContext | None = None, timeout: float = 300
    ) -> int:
        """A tenant (or remote MX) SMTP server on 127.0.0.1; its port."""

        def factory() -> SMTPServer:
            handler.connections += 1
            return _CountingSMTP(handler, hostname="tenant.test", tls_context=tls_context, timeout=timeout)

        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", port)

        async def close() -> None:
            server.close()
            await server.wait_closed()

        self._closers.append(close)
        return int(server.sockets[0].getsockname()[1])

    async def dns(self, records: dict[tuple[str, str], list[str]]) -> DnsSettings:
        """A DNS server answering `records` (other names NXDOMAIN); the settings that ask it."""
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            lambda: FakeDns(records), local_addr=("127.0.0.1", 0)
        )

        async def close() -> None:
            transport.close()

        self._closers.append(close)
        port = transport.get_extra_info("sockname")[1]
        return DnsSettings.model_validate({"nameservers": ["127.0.0.1"], "port": port, "timeout": 1.0})

    async def store(self) -> Store:
        """The store under tmp_path/state, opened (closed at teardown if the test did not)."""
        store = open_store(self.tmp_path / "state")
        await store.open()
        self._closers.append(store.close)
        return store

    async def gateway(self, routes: dict[str, list[Route]], **kwargs: Any) -> LabGateway:
        """A store and a relay worker (not started) for `routes`, as `serve` wires them."""
        domains = {"acme.example": "acme", "sender.example": "senders"}
        return self.attach(LabGateway(await self.store(), routes, domains, **kwargs))

    def attach(self, gateway: LabGateway) -> LabGateway:
        """Stop this gateway's worker at teardown."""
        self._closers.append(gateway.stop)
        return gateway

    async def close(self) -> None:
        """Run every closer, newest first; the first error is raised after all ran."""
        errors = []
        for closer in reversed(self._closers):
            try:
                await closer()
            except Exception as exc:
                errors.append(exc)
        self._closers.clear()
        if errors:
            raise errors[0]
