"""The SMTP protocol object of the gateway's listeners: aiosmtpd's `SMTP`, made fit for an MX.

Adds what aiosmtpd lacks — total and per-client-IP connection limits (421), refusal of source
routes, a line limit real mail fits in — and removes two per-connection / per-command costs of
aiosmtpd 1.4 (`install_aiosmtpd_speedups`, `GatewaySMTP._getaddr`), both checked against
aiosmtpd's own results in `tests/unit/test_smtp_speedups.py`. What happens at each command is
the handler's business (`engine.smtp.handler`).
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import re
from collections.abc import Callable
from typing import Any, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import SMTP, Session

from engine.smtp.envelope import GatewayEnvelope


def client_ip(session: Session) -> str:
    """The connecting client's address ("unknown" when the transport has none)."""
    peer = session.peer
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unknown"


# Longest line accepted (in DATA and commands alike). RFC 5321 §4.5.3.1.6 says 1000 octets, but
# real mail (unwrapped HTML, long headers) breaks that daily and Postfix accepts it: a 500 here
# would bounce legitimate mail.
MAX_LINE_LENGTH = 64 * 1024
_SOURCE_ROUTE = re.compile(r"(?i)\s*TO:\s*<\s*@")


# A plain `<dot-atom@domain>` path, optionally followed by parameters: the common case, parsed
# without the email package's full RFC 5322 machinery. Anything else takes aiosmtpd's parser.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_PATH = re.compile(rf"\s*<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(.*)", re.DOTALL)


class _MemberCache:
    """Stands in for `inspect` and `dir` inside `aiosmtpd.smtp` (aiosmtpd 1.4).

    `SMTP.__init__` runs `inspect.getmembers(self)`, `inspect.getmembers(handler)`, `dir(self)`
    and `dir(handler)` on every connection to find its `auth_*`, `smtp_*` and `handle_*` methods:
    about 100 µs, a fifth of the gateway's CPU per message. A class's member names do not change,
    so they are listed once per type; values are still read from the object itself, so bound
    methods stay bound to the right instance. `tests/unit/test_smtp_speedups.py` checks that the
    result is what aiosmtpd computes without it.
    """

    def __init__(self) -> None:
        self._names: dict[type, list[str]] = {}
        self._signatures: dict[tuple[object, bool], inspect.Signature] = {}

    def signature(self, function: Any) -> inspect.Signature:
        """`inspect.signature`, remembered per underlying function (bound or not)."""
        key = (getattr(function, "__func__", function), hasattr(function, "__self__"))
        found = self._signatures.get(key)
        if found is None:
            found = self._signatures[key] = inspect.signature(function)
        return found

    def _names_of(self, obj: object) -> list[str]:
        kind = type(obj)
        names = self._names.get(kind)
        if names is None:
            names = self._names[kind] = sorted(builtins.dir(kind))
        return names

    def getmembers(self, obj: object) -> list[tuple[str, Any]]:
        return [(name, getattr(obj, name)) for name in self._names_of(obj) if name.startswith("auth_")]

    def dir(self, obj: object) -> list[str]:
        return self._names_of(obj)


_members = _MemberCache()


def install_aiosmtpd_speedups() -> None:
    """Make `aiosmtpd.smtp` use the member cache (idempotent). Called by `serve`."""
    aiosmtpd.smtp.inspect = _members  # type: ignore[attr-defined,assignment]
    aiosmtpd.smtp.dir = _members.dir  # type: ignore[attr-defined]


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with total and per-client-IP connection limits (421 beyond them), and a
    421 before closing a connection idle past the command timeout."""

    line_length_limit = MAX_LINE_LENGTH  # a class attribute: SMTP.__init__ sizes its reader with it

    def __init__(self, handler: object, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits

    def _create_envelope(self) -> GatewayEnvelope:
        """aiosmtpd's envelope factory (checked against aiosmtpd 1.4.6): every transaction gets a
        `GatewayEnvelope`, which carries its evaluation."""
        return GatewayEnvelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's `_getaddr` with a fast path for plain `<local@domain>` (the parent builds a
        typing.Protocol class on every call, and runs the full RFC 5322 parser)."""
        simple = _SIMPLE_PATH.match(arg) if arg else None
        rest = simple.group(2).lstrip() if simple is not None else ""
        if simple is None or rest.startswith("("):  # a comment: RFC 5322 CFWS, leave it to the parser
            return super()._getaddr(arg)
        address = simple.group(1)
        if self.local_part_limit and len(address.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return address, rest

    async def smtp_RCPT(self, arg: str | None) -> None:
        """Refuse source routes (`<@relay:user@domain>`, RFC 5321 Appendix C) instead of stripping them."""
        if arg is not None and _SOURCE_ROUTE.match(arg):
            await self.push("550 5.7.1 relaying denied (source routes are not accepted)")
            return
        await super().smtp_RCPT(arg)

    def _timeout_cb(self) -> None:
        """A silent client: say why before hanging up (aiosmtpd just closes), as Postfix does."""
        transport = cast(asyncio.WriteTransport | None, self.transport)  # uvloop's is not a subclass
        if transport is not None and not transport.is_closing():
            transport.write(f"421 4.4.2 {self.hostname} Error: timeout exceeded\r\n".encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def _handle_client(self) -> None:
        assert self.session is not None
        ip = client_ip(self.session)
        if not self._limits.acquire(ip):
            await self.push("421 4.7.0 too many connections, try again later")
            assert self.transport is not None
            self.transport.close()
            return
        try:
            await super()._handle_client()
        finally:
            self._limits.release(ip)
            if self.envelope is not None and self.session is not None:
                self.event_handler.log_unfinished(self.session, self.envelope)


class ConnectionLimits:
    """Counts open connections in total and per client IP; live limits come from the current policy."""

    def __init__(self, limits: Callable[[], tuple[int, int]]) -> None:
        self._limits = limits  # () -> (max_connections, max_connections_per_ip)
        self.total = 0
        self._per_ip: dict[str, int] = {}
        self.idle = asyncio.Event()
        self.idle.set()

    def acquire(self, ip: str) -> bool:
        max_total, max_per_ip = self._limits()
        if self.total >= max_total or self._per_ip.get(ip, 0) >= max_per_ip:
            return False
        self.total += 1
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self.idle.clear()
        return True

    def release(self, ip: str) -> None:
        self.total -= 1
        left = self._per_ip.get(ip, 1) - 1
        if left:
            self._per_ip[ip] = left
        else:
            self._per_ip.pop(ip, None)
        if self.total == 0:
            self.idle.set()
