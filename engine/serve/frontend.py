"""The SMTP front end of one process (the parent `serve` or a worker): the STARTTLS context, the
listening sockets (bound by the parent, inherited by the workers) and the servers on them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.graph.build.live import LivePolicy
from engine.policy.models import Gateway, Listener
from engine.smtp.handler import Waker
from engine.smtp.inbound import InboundHandler
from engine.smtp.outbound import OutboundHandler, OutboundSMTP
from engine.smtp.protocol import ConnectionLimits, GatewaySMTP, install_aiosmtpd_speedups
from engine.store.base import Store

SHUTDOWN_GRACE = 30.0


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


def listening_socket(listener: Listener) -> socket.socket:
    """A listening socket, bound here and shared (inherited) by the worker processes."""
    family = socket.AF_INET6 if ":" in listener.address else socket.AF_INET
    sock = socket.create_server((listener.address, listener.port), family=family, backlog=1024)
    sock.setblocking(False)
    return sock


@dataclass
class FrontEnd:
    """The SMTP servers of one process (the parent or a worker) on the shared sockets: the inbound
    listener, and the outbound one when `listeners.outbound` is set (same limits and protections,
    each listener counting its own connections)."""

    servers: list[asyncio.AbstractServer]
    limits: list[ConnectionLimits]

    @classmethod
    async def start(cls, policy: LivePolicy, store: Store, waker: Waker | None, sock: socket.socket,
                    outbound_sock: socket.socket | None = None) -> FrontEnd:
        install_aiosmtpd_speedups()
        common: dict[str, Any] = {
            "current_graph": policy.current, "store": store, "relay": waker,
            "log_format": lambda: policy.graph.gateway.log.format,
        }
        context = tls_context(policy.graph.gateway, policy.directory)
        loop = asyncio.get_running_loop()

        def connection_limits() -> ConnectionLimits:
            return ConnectionLimits(lambda: (policy.graph.gateway.limits.max_connections,
                                             policy.graph.gateway.limits.max_connections_per_ip))

        def options() -> dict[str, Any]:
            current = policy.graph.gateway
            return {"hostname": current.hostname, "ident": "LivePrism ESMTP",
                    "data_size_limit": current.limits.max_message_size, "enable_SMTPUTF8": True,
                    "decode_data": False, "tls_context": context, "timeout": current.limits.command_timeout}

        handler = InboundHandler(**common)
        limits = connection_limits()
        front = cls([await loop.create_server(lambda: GatewaySMTP(handler, limits, **options()), sock=sock)], [limits])
        if outbound_sock is not None:
            outbound = OutboundHandler(policy_dir=lambda: policy.directory, **common)
            outbound_limits = connection_limits()
            front.servers.append(await loop.create_server(
                lambda: OutboundSMTP(outbound, outbound_limits, **options()), sock=outbound_sock))
            front.limits.append(outbound_limits)
        return front

    async def stop(self) -> None:
        """Stop accepting; let open sessions finish (up to SHUTDOWN_GRACE)."""
        for server in self.servers:
            server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(limits.idle.wait() for limits in self.limits)), SHUTDOWN_GRACE)
