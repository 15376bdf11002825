"""The SMTP protocol object of the gateway's listeners: aiosmtpd's `SMTP`, made fit for an MX.

Adds what aiosmtpd lacks — total and per-client-IP connection limits (421), refusal of source
routes, a line limit real mail fits in — and removes two per-connection / per-command costs of
aiosmtpd 1.4 (`install_aiosmtpd_speedups`, `GatewaySMTP._getaddr`), both checked against
aiosmtpd's own results in `tests/smtp/test_smtp_speedups.py`. What happens at each command is
the handler's business (`engine.smtp.handler`).
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import aiosmtpd.smtp
from aiosmtpd.smtp import MISSING, SMTP, Session

from engine import metrics
from engine.mime.printable import escape, has_control
from engine.smtp.data import discard, read_data
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
_SMTPUTF8_PARAM = re.compile(r"(?i)>.*\sSMTPUTF8(?:\s|$)")
DEFAULT_MAX_ERRORS = 20  # (the policy's limits.max_errors / max_junk_commands when the handler has them)
DEFAULT_MAX_JUNK = 100
session_log = logging.getLogger("liveprism.session")


def address_problem(arg: str | None, *, smtputf8: bool) -> str | None:
    """The refusal for a MAIL/RCPT argument holding control characters (C0 with NUL, DEL, C1,
    U+2028/9: 501, RFC 5321 §4.1.2 allows none), or non-ASCII without SMTPUTF8 (553 5.6.7,
    RFC 6531 §3.5); None when the argument may be parsed."""
    if not arg:
        return None
    if has_control(arg):
        return "501 5.5.2 syntax error: control characters in the address"
    if not smtputf8 and not arg.isascii():
        return "553 5.6.7 non-ASCII address needs SMTPUTF8 (RFC 6531)"
    return None


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
    methods stay bound to the right instance. `tests/smtp/test_smtp_speedups.py` checks that the
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


class _YieldingReader(asyncio.StreamReader):
    """asyncio's StreamReader whose `readuntil` lets other tasks run every `_YIELD_EVERY` lines.

    aiosmtpd reads commands line by line, and `readuntil` does not suspend while lines are
    buffered: a client pipelining thousands of commands would keep the loop busy for whole buffers
    at a time while every other session waited (issue 7 items 1 and 7). DATA is read in chunks
    (`smtp_DATA`).
    """

    _lines = 0

    async def readuntil(self, separator: Any = b"\n") -> bytes:
        self._lines += 1
        if self._lines % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
        return await super().readuntil(separator)


_YIELD_EVERY = 64


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with total and per-client-IP connection limits (421 beyond them), and a
    421 before closing a connection idle past the command timeout."""

    line_length_limit = MAX_LINE_LENGTH  # a class attribute: SMTP.__init__ sizes its reader with it

    def __init__(self, handler: object, limits: ConnectionLimits, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limits = limits
        self.errors = 0  # 4xx/5xx replies sent in this session
        self.junk = 0  # NOOP/RSET/VRFY/EXPN/HELP commands in this session
        self.closed_because: str | None = None
        self._closing_for_errors = False
        reader = self._stream_reader  # type: ignore[attr-defined]
        if type(reader) is asyncio.StreamReader:  # (aiosmtpd makes a plain one in SMTP.__init__)
            reader.__class__ = _YieldingReader

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

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message in chunks (`engine.smtp.data`): the event loop is
        never held by one message's lines, and the command timeout applies per read."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        spool_dir = getattr(self.event_handler, "spool_dir", None)  # large messages go to disk as they come
        result = await read_data(
            self._reader, size_limit=self.data_size_limit, line_limit=self.line_length_limit,
            progress=self._reset_timeout, spool_dir=spool_dir if isinstance(spool_dir, Path) else None,
        )
        if result is None:  # the client hung up
            return
        if result.error is not None:
            self._set_post_data_state()  # type: ignore[no-untyped-call]
            await self.push(result.error)
            return
        envelope = self.envelope
        envelope.content = envelope.original_content = result.content
        if isinstance(envelope, GatewayEnvelope):
            envelope.spool, envelope.size = result.spool, result.size
        try:
            status = await self._call_handler_hook("DATA")
        finally:  # accepted (the store has taken the file over), refused, or failed: no file is left behind
            discard(result.spool)
        self._set_post_data_state()  # type: ignore[no-untyped-call]
        await self.push("250 OK" if status is MISSING else status)

    async def smtp_MAIL(self, arg: str | None) -> None:
        """aiosmtpd's MAIL, refusing control characters and (without SMTPUTF8) non-ASCII first."""
        problem = address_problem(arg, smtputf8=bool(arg and _SMTPUTF8_PARAM.search(arg)))
        if problem is not None:
            await self.push(problem)
            return
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        """Refuse source routes (`<@relay:user@domain>`, RFC 5321 Appendix C) instead of stripping them,
        and addresses `address_problem` refuses."""
        if arg is not None and _SOURCE_ROUTE.match(arg):
            await self.push("550 5.7.1 relaying denied (source routes are not accepted)")
            return
        if self.envelope is not None and self.envelope.mail_from is not None:  # (else aiosmtpd's 503)
            problem = address_problem(arg, smtputf8=bool(self.envelope.smtp_utf8))
            if problem is not None:
                await self.push(problem)
                return
        await super().smtp_RCPT(arg)

    # ------------------------------------------------------------ per-session error limits

    async def push(self, status: Any) -> None:
        """aiosmtpd's push, counting 4xx/5xx replies: at `limits.max_errors` the session gets 421
        and is closed (RFC 5321 §3.8; Postfix's smtpd_hard_error_limit). Final reply lines (not
        `250-` continuations) are counted in the metrics by code class."""
        await super().push(status)
        reply = status if isinstance(status, str) else status.decode("utf-8", "replace")
        if reply[3:4] != "-":
            metrics.count_reply(reply)
        # "452 4.5.3 too many recipients" is not the client's error: it sends the rest in the next
        # transaction (Postfix only counts far beyond the limit, smtpd_recipient_overshoot_limit).
        if reply[:1] in ("4", "5") and not reply.startswith("452 4.5.3") and not self._closing_for_errors:
            self.errors += 1
            if self.errors >= self._max_errors()[0]:
                await self._close_for("too many errors")

    async def _junk(self) -> bool:
        """Count a junk command; True (after 421) when the session is over the junk limit."""
        self.junk += 1
        if self.junk > self._max_errors()[1]:
            await self._close_for("too many junk commands")
            return True
        return False

    async def _close_for(self, reason: str) -> None:
        self._closing_for_errors = True
        self.closed_because = reason
        await super().push(f"421 4.7.0 {self.hostname} {reason}, closing connection")
        metrics.count_reply("421")
        transport = self.transport
        if transport is not None:
            transport.close()

    def _max_errors(self) -> tuple[int, int]:
        limits = getattr(self.event_handler, "session_limits", None)
        return limits() if callable(limits) else (DEFAULT_MAX_ERRORS, DEFAULT_MAX_JUNK)

    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_NOOP(arg)

    async def smtp_RSET(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_RSET(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_VRFY(arg)

    async def smtp_EXPN(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_EXPN(arg)

    async def smtp_HELP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_HELP(arg)

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
        metrics.session_opened()
        try:
            await super()._handle_client()
        finally:
            metrics.session_closed()
            self._limits.release(ip)
            if self.envelope is not None and self.session is not None:
                self.event_handler.log_unfinished(self.session, self.envelope)
            if self.errors or self.closed_because:  # one summary line per session, not one per refusal
                session_log.info("client=%s helo=%s errors=%d junk=%d%s", ip,
                                 escape(self.session.host_name or "")[:200] if self.session else "",
                                 self.errors, self.junk,
                                 f" disconnected={self.closed_because!r}" if self.closed_because else "")


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
