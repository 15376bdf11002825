"""SMTP client side of the relay: a connection pool and one mail transaction per call.

Pool. Connections are kept per hop (host, port, TLS mode) and reused for the next message
to the same hop (RFC 5321 §3.3 allows any number of transactions per session); a connection
idle for `idle_timeout` seconds is closed with QUIT. At most `per_destination` connections
per hop are open at once; further senders wait for one to come back, so a burst to one
tenant server is funnelled through a few sessions instead of opening one per message.

Connecting (RFC 5321 §3.1, §4.1.1.1): greeting, EHLO (HELO when EHLO is refused), then
STARTTLS (RFC 3207) when the hop's TLS mode is not `none` and the server offers it, and EHLO
again. Certificates are not verified in either mode — as Postfix's `may` and `encrypt`
levels: `required` guarantees an encrypted session, not the server's identity. A failed
handshake fails the hop when TLS is required, and for mail exchangers found in DNS (the world:
plain text only when STARTTLS is not offered, RFC 3207 practice; the next MX or a later retry
is tried instead); on an opportunistic tenant route the session is redone in plain text (a
tenant's own server with a broken TLS stack still gets its mail). A route that requires TLS on a server without
STARTTLS fails the hop. A hop with a `tls_name` (an MX host under an enforced MTA-STS policy,
RFC 8461 §4.2) requires STARTTLS and a certificate chain valid (system CAs + `tls_ca_file`)
for that name, else the hop fails with 4.7.5 — Postfix's `secure` level.

Transaction: MAIL (with SIZE, BODY=8BITMIME and SMTPUTF8 when offered and needed, RFC 1870,
RFC 6152, RFC 6531), one RCPT per recipient, DATA for the accepted ones. Every recipient gets
a reply: 2xx delivered, 5xx failed for good, 4xx or no reply (timeout, lost connection) to be
retried. Command timeouts follow RFC 5321 §4.5.3.2 (5 minutes; 10 for the end of DATA). A
pooled connection that turns out dead at MAIL is reported `stale` so the caller retries once
on a fresh one.

A large message (`compose.StreamedCopy`) is sent in pieces as it is read from the store: line
ends normalised and leading dots doubled per piece (`DataStuffer`, the same bytes aiosmtplib's
`data` sends for the whole message), each piece written after the transport drained the last,
each wait bounded by the DATA block timeout (RFC 5321 §4.5.3.2.5). It uses aiosmtplib's protocol
object (command lock, `read_response`, flow control) as `SMTP.data` does (aiosmtplib 5.x).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal

import aiosmtplib

from engine.policy.models import RouteTls
from engine.relay.compose import LineEnds, StreamedCopy
from engine.relay.mta_sts import verified_context
from engine.relay.nexthop import Hop

log = logging.getLogger("liveprism.relay")

COMMAND_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.2-4: MAIL, RCPT, DATA initiation
BLOCK_TIMEOUT = 180.0  # RFC 5321 §4.5.3.2.5: each write of the DATA block
DATA_TIMEOUT = 600.0  # RFC 5321 §4.5.3.2.6: DATA termination
QUIT_TIMEOUT = 5.0

Outcome = Literal["delivered", "failed", "retry"]


@dataclass(frozen=True, slots=True)
class HopReply:
    """What a hop (a remote SMTP server) answered; `code` 0 is a local diagnostic (no reply, no
    route), its text starting with an RFC 3463 status whose class says whether it is permanent."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code else self.text

    @property
    def outcome(self) -> Outcome:
        if 200 <= self.code < 300:
            return "delivered"
        if 500 <= self.code < 600 or (not self.code and self.text.startswith("5.")):
            return "failed"
        return "retry"


def _reply(code: int, message: str) -> HopReply:
    return HopReply(code, " ".join(message.split()))


@dataclass(slots=True)
class Connection:
    """One SMTP session to a hop, leased from the pool."""

    key: tuple[str, int, RouteTls, str | None]
    label: str  # host:port
    client: aiosmtplib.SMTP
    tls: bool
    reused: bool = False
    idle_since: float = 0.0


@dataclass(frozen=True, slots=True)
class HopFailure:
    """The hop could not be used at all; every recipient is retried on the next hop (a 4.x.x `reply`)."""

    reply: HopReply


@dataclass(frozen=True, slots=True)
class TransactionResult:
    replies: dict[str, HopReply]  # one per recipient given
    reusable: bool  # the session is clean and may carry the next message
    stale: bool = False  # a pooled session was dead before the first reply: retry on a fresh one


@dataclass(slots=True)
class _Destination:
    limit: asyncio.Semaphore
    users: int = 0  # leases held or awaited
    idle: list[Connection] = field(default_factory=list)


def _tls_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # see the module docstring: encryption, not authentication
    return context


class SmtpPool:
    """Connections to hops, bounded per hop and reused while they stay clean."""

    def __init__(
        self,
        local_hostname: str,
        *,
        per_destination: int = 10,
        idle_timeout: float = 10.0,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self._local_hostname = local_hostname
        self._per_destination = per_destination
        self._idle_timeout = idle_timeout
        self._command_timeout = command_timeout
        self._tls_context = _tls_context()
        self._verified_context = ssl.create_default_context()
        self._destinations: dict[tuple[str, int, RouteTls, str | None], _Destination] = {}
        self.connections_opened = 0

    def configure(self, ca_file: str | None) -> None:
        """Trust the CA certificates in `ca_file` too (PEM; None: system CAs only) from the next
        verified session on (`delivery.tls_ca_file`, a policy reload)."""
        self._verified_context = verified_context(ca_file)

    async def acquire(
        self, hop: Hop, connect_timeout: float, abort: asyncio.Event, *, fresh: bool = False
    ) -> Connection | HopFailure | None:
        """A clean session to `hop` (pooled unless `fresh`); the caller must `release` it.

        None when `abort` is set before one of the hop's `per_destination` slots is free.
        """
        key = (hop.host, hop.port, hop.tls, hop.tls_name)
        dest = self._destinations.get(key)
        if dest is None:
            dest = self._destinations[key] = _Destination(asyncio.Semaphore(self._per_destination))
        dest.users += 1
        if not await _wait_slot(dest.limit, abort):
            dest.users -= 1
            if not dest.users and not dest.idle:
                del self._destinations[key]
            return None
        while dest.idle and not fresh:
            conn = dest.idle.pop()
            if conn.client.is_connected:
                conn.reused = True
                return conn
        try:
            result = await self._connect(hop, connect_timeout, tls=hop.tls is not RouteTls.none)
        except BaseException:  # cancelled while connecting
            self._done(key, dest)
            raise
        if isinstance(result, HopFailure):
            self._done(key, dest)
        return result

    def release(self, conn: Connection, *, reusable: bool) -> None:
        """Give a session back: pooled when `reusable` and still connected, else closed."""
        dest = self._destinations[conn.key]
        if reusable and conn.client.is_connected:
            conn.idle_since = time.monotonic()
            dest.idle.append(conn)
        else:
            conn.client.close()
        self._done(conn.key, dest)

    def _done(self, key: tuple[str, int, RouteTls, str | None], dest: _Destination) -> None:
        dest.limit.release()
        dest.users -= 1
        if not dest.users and not dest.idle:
            del self._destinations[key]

    async def reap(self) -> None:
        """Close sessions idle for longer than the idle timeout."""
        cutoff = time.monotonic() - self._idle_timeout
        expired: list[Connection] = []
        for key, dest in list(self._destinations.items()):
            keep: list[Connection] = []
            for conn in dest.idle:
                (keep if conn.idle_since > cutoff and conn.client.is_connected else expired).append(conn)
            dest.idle = keep
            if not dest.users and not dest.idle:
                del self._destinations[key]
        await asyncio.gather(*(_quit(c) for c in expired))

    async def close(self) -> None:
        """QUIT every idle session."""
        idle = [c for dest in self._destinations.values() for c in dest.idle]
        for dest in self._destinations.values():
            dest.idle = []
        self._destinations = {key: dest for key, dest in self._destinations.items() if dest.users}
        await asyncio.gather(*(_quit(c) for c in idle))

    async def _connect(self, hop: Hop, connect_timeout: float, *, tls: bool) -> Connection | HopFailure:
        client = aiosmtplib.SMTP(
            hostname=hop.host,
            port=hop.port,
            local_hostname=self._local_hostname,
            timeout=self._command_timeout,
            start_tls=False,
        )
        try:
            await client.connect(timeout=connect_timeout)
            self.connections_opened += 1
            await _hello(client)
            if tls and client.supports_extension("starttls"):
                try:
                    if hop.tls_name:
                        await client.starttls(tls_context=self._verified_context, server_hostname=hop.tls_name)
                    else:
                        await client.starttls(tls_context=self._tls_context)
                    await _hello(client)
                except (aiosmtplib.SMTPException, ssl.SSLError, OSError) as exc:
                    client.close()
                    if hop.tls_name:
                        return HopFailure(HopReply(0, f"4.7.5 TLS with {hop.label} failed, a certificate valid for"
                                                      f" {hop.tls_name} is required (MTA-STS): {exc}"))
                    if hop.mx_name:  # a mail exchanger found in DNS: never downgrade after a failed handshake
                        return HopFailure(HopReply(0, f"4.7.5 TLS handshake with {hop.label} failed: {exc}"))
                    if hop.tls is RouteTls.required:
                        return HopFailure(HopReply(0, f"4.7.5 TLS with {hop.label} failed: {exc}"))
                    log.info("relay=%s tls=failed fallback=plaintext error=%r", hop.label, str(exc))
                    return await self._connect(hop, connect_timeout, tls=False)
            elif hop.tls is RouteTls.required:
                await _quit_client(client)
                why = f"MTA-STS requires TLS with {hop.tls_name}" if hop.tls_name else "the route requires TLS"
                return HopFailure(HopReply(0, f"4.7.4 {hop.label} does not offer STARTTLS and {why}"))
        except aiosmtplib.SMTPResponseException as exc:  # refused greeting or EHLO/HELO: try the next hop
            client.close()
            return HopFailure(HopReply(0, f"4.4.1 {hop.label} refused the session: {_reply(exc.code, exc.message)}"))
        except (aiosmtplib.SMTPException, OSError) as exc:  # refused, unreachable, timed out, dropped
            client.close()
            return HopFailure(HopReply(0, f"4.4.1 cannot talk to {hop.label}: {exc}"))
        tls_active = client.get_transport_info("sslcontext") is not None
        return Connection((hop.host, hop.port, hop.tls, hop.tls_name), hop.label, client, tls_active)


async def _wait_slot(slot: asyncio.Semaphore, abort: asyncio.Event) -> bool:
    """Acquire `slot` unless `abort` is set first; whether it was acquired."""
    if abort.is_set():
        return False
    acquire = asyncio.ensure_future(slot.acquire())
    aborted = asyncio.ensure_future(abort.wait())
    try:
        await asyncio.wait((acquire, aborted), return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled: leave no slot taken
        aborted.cancel()
        acquire.cancel()
        if acquire.done() and not acquire.cancelled():
            slot.release()
        raise
    aborted.cancel()
    if not acquire.done():
        acquire.cancel()  # Semaphore.acquire hands a slot it was woken for on to the next waiter
        return False
    if abort.is_set():
        slot.release()
        return False
    return True


async def _hello(client: aiosmtplib.SMTP) -> None:
    try:
        await client.ehlo()
    except aiosmtplib.SMTPHeloError:
        await client.helo()


async def _quit_client(client: aiosmtplib.SMTP) -> None:
    try:
        await client.quit(timeout=QUIT_TIMEOUT)
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        client.close()


async def _quit(conn: Connection) -> None:
    await _quit_client(conn.client)


_LINE_START_DOT = re.compile(rb"(?<=\n)\.")


class DataStuffer:
    """aiosmtplib's DATA encoding (every CR, LF and CRLF sent as CRLF, a CRLF added at the end
    when missing: `LineEnds`; a dot that starts a line doubled, RFC 5321 §4.5.2, then "." CRLF)
    applied to a message fed in pieces: the concatenated output equals what `SMTP.data` sends for
    the whole."""

    def __init__(self) -> None:
        self.lines = LineEnds()
        self.line_start = True  # the output so far ends a line (or is empty)

    def feed(self, data: bytes) -> bytes:
        out = self.lines.feed(data)
        if not out:
            return b""
        out = _LINE_START_DOT.sub(b"..", out)
        if self.line_start and out.startswith(b"."):
            out = b"." + out
        self.line_start = out.endswith(b"\r\n")
        return out

    def finish(self) -> bytes:
        self.line_start = True
        return self.lines.finish() + b".\r\n"


async def _send_streamed(client: aiosmtplib.SMTP, copy: StreamedCopy) -> aiosmtplib.SMTPResponse:
    """DATA with `copy` read and sent in pieces (module docstring); raises as `SMTP.data` does."""
    protocol = client.protocol
    lock = protocol._command_lock if protocol is not None else None
    if protocol is None or lock is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    try:
        async with lock:
            protocol._response_pending = True
            protocol.write(b"DATA\r\n")
            start = await protocol.read_response(timeout=COMMAND_TIMEOUT)
            if start.code != aiosmtplib.SMTPStatus.start_input:
                raise aiosmtplib.SMTPDataError(start.code, start.message)
            protocol._response_pending = True
            stuffer = DataStuffer()
            for piece in copy.chunks():
                protocol.write(stuffer.feed(piece))
                try:
                    async with asyncio.timeout(BLOCK_TIMEOUT):
                        await protocol._drain_helper()
                except TimeoutError as exc:
                    raise aiosmtplib.SMTPTimeoutError("Timed out sending the message") from exc
                except ConnectionError as exc:
                    raise aiosmtplib.SMTPServerDisconnected(str(exc) or "Connection lost") from exc
            protocol.write(stuffer.finish())
            response = await protocol.read_response(timeout=DATA_TIMEOUT)
            if response.code != aiosmtplib.SMTPStatus.completed:
                raise aiosmtplib.SMTPDataError(response.code, response.message)
            return response
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError):
        client.close()
        raise


async def transaction(
    conn: Connection, mail_from: str, rcpts: list[str], data: bytes | StreamedCopy
) -> TransactionResult:
    """One mail transaction on `conn` for `rcpts`; see the module docstring."""
    client = conn.client
    options: list[str] = []
    if client.supports_extension("size"):
        options.append(f"SIZE={len(data) if isinstance(data, bytes) else data.size}")
    if not data.isascii() and client.supports_extension("8bitmime"):
        options.append("BODY=8BITMIME")
    encoding = "ascii"
    if not all(address.isascii() for address in (mail_from, *rcpts)):
        if not client.supports_extension("smtputf8"):
            refusal = HopReply(0, f"5.6.7 {conn.label} does not support SMTPUTF8, needed for these addresses")
            return TransactionResult(dict.fromkeys(rcpts, refusal), reusable=True)
        options.append("SMTPUTF8")
        encoding = "utf-8"

    try:
        await client.mail(mail_from, options=options, encoding=encoding)
    except aiosmtplib.SMTPSenderRefused as exc:
        stale = conn.reused and exc.code == 421
        return TransactionResult(
            dict.fromkeys(rcpts, _reply(exc.code, exc.message)), reusable=await _reset(client), stale=stale
        )
    except (aiosmtplib.SMTPException, OSError) as exc:
        client.close()
        lost = HopReply(0, f"4.4.2 connection to {conn.label} lost at MAIL: {exc}")
        return TransactionResult(dict.fromkeys(rcpts, lost), reusable=False, stale=conn.reused)

    replies: dict[str, HopReply] = {}
    accepted: list[str] = []
    for rcpt in rcpts:
        try:
            await client.rcpt(rcpt, encoding=encoding)
        except aiosmtplib.SMTPRecipientRefused as exc:
            # RFC 5321 §4.5.3.1.10: 552 to RCPT means "too many recipients": retry, like 452
            code = 452 if exc.code == 552 else exc.code
            replies[rcpt] = _reply(code, exc.message)
        except (aiosmtplib.SMTPException, OSError) as exc:
            client.close()
            lost = HopReply(0, f"4.4.2 connection to {conn.label} lost at RCPT: {exc}")
            return TransactionResult({r: replies.get(r, lost) for r in rcpts}, reusable=False)
        else:
            accepted.append(rcpt)
    if not accepted:
        return TransactionResult(replies, reusable=await _reset(client))

    try:
        if isinstance(data, bytes):
            response = await client.data(data, timeout=DATA_TIMEOUT)
        else:
            response = await _send_streamed(client, data)
    except aiosmtplib.SMTPDataError as exc:
        replies.update(dict.fromkeys(accepted, _reply(exc.code, exc.message)))
        return TransactionResult(replies, reusable=await _reset(client))
    except (aiosmtplib.SMTPException, OSError) as exc:
        # The end of DATA may have reached the server: retrying may deliver twice, which
        # RFC 5321 §6.1 prefers to losing the message.
        client.close()
        replies.update(dict.fromkeys(accepted, HopReply(0, f"4.4.2 connection to {conn.label} lost at DATA: {exc}")))
        return TransactionResult(replies, reusable=False)
    replies.update(dict.fromkeys(accepted, _reply(response.code, response.message)))
    return TransactionResult(replies, reusable=True)


async def _reset(client: aiosmtplib.SMTP) -> bool:
    """RSET after a failed transaction (RFC 5321 §4.1.1.5); whether the session is still usable."""
    if not client.is_connected:
        return False
    try:
        await client.rset()
    except (aiosmtplib.SMTPException, OSError):
        client.close()
        return False
    return True
