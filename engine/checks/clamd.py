"""Antivirus: one message scanned by clamd over its INSTREAM command (TCP or unix socket).

Protocol (clamd(8), "INSTREAM"): send `zINSTREAM\\0`, then the data as chunks each prefixed by
its length (4 bytes, network order), then a zero-length chunk; clamd answers one NUL-terminated
line: `stream: OK`, `stream: NAME FOUND` or `… ERROR` (e.g. `INSTREAM size limit exceeded.
ERROR` when the stream passes its StreamMaxLength, after which it may close the socket).
The whole raw message is sent: clamd decodes MIME parts and unpacks archives itself.

Contract: `scan` never raises. It returns `clean`, `virus` (with clamd's signature name) or
`error` (with a reason: unreachable, timeout, size limit, protocol error); the connect, the
upload and the answer together take at most `timeout` seconds. Chunks are `chunk_size` bytes
(keep it below clamd's StreamMaxLength, default 25 MB, so one chunk never exceeds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

ScanStatus = Literal["clean", "virus", "error"]

REASON_UNREACHABLE = "clamd-unreachable"
REASON_TIMEOUT = "clamd-timeout"
REASON_SIZE_LIMIT = "clamd-size-limit"
REASON_PROTOCOL = "clamd-protocol-error"
REASON_CLAMD_ERROR = "clamd-error"
_MAX_REPLY = 4096


@dataclass(frozen=True, slots=True)
class ScanResult:
    """What clamd said about one message."""

    status: ScanStatus
    virus: str = ""  # signature name when status is virus
    reason: str = ""  # reason token when status is error
    detail: str = ""  # clamd's reply or the OS error, for logs and explain
    elapsed: float = 0.0
    address: str = ""


async def _connect(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    parts = urlsplit(address)
    if parts.scheme == "unix":
        return await asyncio.open_unix_connection(parts.path)
    if parts.scheme == "tcp" and parts.hostname and parts.port:
        return await asyncio.open_connection(parts.hostname, parts.port)
    raise ValueError(f"invalid clamd address {address!r}: expected tcp://HOST:PORT or unix:///path")


def parse_reply(reply: str) -> tuple[ScanStatus, str, str]:
    """(status, virus name, reason token) of clamd's one-line INSTREAM reply."""
    text = reply.strip("\0\r\n ")
    body = text.split(": ", 1)[1] if text.startswith("stream: ") else text
    if body == "OK":
        return "clean", "", ""
    if body.endswith(" FOUND"):
        name = body[: -len(" FOUND")].strip()
        return ("virus", name, "") if name else ("error", "", REASON_PROTOCOL)
    if "size limit exceeded" in body.lower():
        return "error", "", REASON_SIZE_LIMIT
    if body.endswith("ERROR"):
        return "error", "", REASON_CLAMD_ERROR
    return "error", "", REASON_PROTOCOL


async def _exchange(address: str, data: bytes, chunk_size: int) -> str:
    reader, writer = await _connect(address)
    try:
        try:
            writer.write(b"zINSTREAM\0")
            view = memoryview(data)
            for offset in range(0, len(view), chunk_size):
                chunk = view[offset: offset + chunk_size]
                writer.write(struct.pack("!I", len(chunk)))
                writer.write(chunk)
                await writer.drain()
            writer.write(struct.pack("!I", 0))
            await writer.drain()
        except (ConnectionError, OSError):
            pass  # clamd stops reading past its limit and closes: its reply (if any) says why
        reply = await reader.readuntil(b"\0") if not reader.at_eof() else b""
    except asyncio.IncompleteReadError as exc:
        reply = exc.partial
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return reply[:_MAX_REPLY].decode("utf-8", "replace")


async def scan(address: str, data: bytes, *, timeout: float, chunk_size: int = 65_536) -> ScanResult:
    """Scan `data` with the clamd at `address`; see the module docstring."""
    started = time.monotonic()

    def result(status: ScanStatus, virus: str = "", reason: str = "", detail: str = "") -> ScanResult:
        return ScanResult(status, virus, reason, detail, time.monotonic() - started, address)

    try:
        async with asyncio.timeout(timeout):
            reply = await _exchange(address, data, chunk_size)
    except TimeoutError:
        return result("error", reason=REASON_TIMEOUT, detail=f"no answer within {timeout:g} s")
    except (OSError, ValueError) as exc:
        return result("error", reason=REASON_UNREACHABLE, detail=str(exc) or type(exc).__name__)
    except asyncio.LimitOverrunError as exc:
        return result("error", reason=REASON_PROTOCOL, detail=str(exc))
    if not reply:
        return result("error", reason=REASON_PROTOCOL, detail="connection closed without a reply")
    status, virus, reason = parse_reply(reply)
    return result(status, virus, reason, reply.strip("\0\r\n "))
