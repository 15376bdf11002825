"""Reading the DATA phase (RFC 5321 §4.1.1.4, §4.5.2) in chunks instead of aiosmtpd's line loop.

Contract: `read_data` reads from the session's StreamReader until the end-of-data line
(CRLF "." CRLF; the message's first line counts as following a CRLF), and returns the message
with dot-stuffing undone, or why it was refused (552 over `size_limit`, counted like aiosmtpd in
wire bytes; 500 for a line longer than `line_limit`; 451 when the spool file cannot be written),
or None when the client hung up. Bytes the client pipelined after the end-of-data line go back to
the reader for the next command.

Large messages go to disk while they arrive (issue 7 item 10: eight concurrent 25 MB messages
held 3.3x their size in memory). Once more than `spool_at` bytes have come and `spool_dir` is
given, what has been read is de-stuffed and written to a new file in `spool_dir` (mode 0600,
`O_EXCL`) every `FLUSH` bytes, cut just before a CRLF so that no "CRLF ." pair and no end line
straddles a cut: the memory a session holds stays about `FLUSH` + `CHUNK` bytes whatever the
message size. The result then names the file (`DataResult.spool`); the caller owns it from then
on (the store adopts it, or the caller removes it). Whenever no file is returned — refusal,
hang-up, exception — the file is already removed. Smaller messages stay in memory (the fast path).

Why chunks: aiosmtpd handles DATA one line at a time on the event loop, and `readuntil` does not
suspend while lines are buffered; its de-stuffing loop after the final dot ran over every line at
once. A 200,000-part message (600,000 short lines) held the loop for over a second (issue 7 item 1).
Here each step works on a whole chunk with C-level `bytes` methods, and the loop runs other
sessions between chunks. `progress` is called after every chunk (the caller resets its idle
timer: the command timeout applies per read, RFC 5321 §4.5.3.2.6, not to the whole upload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 64 * 1024
SPOOL_AT = 1024 * 1024
"""Messages larger than this (wire bytes) are written to a spool file while they arrive."""
FLUSH = 256 * 1024
"""Bytes gathered in memory before they are written to the spool file."""
SPOOL_ERROR = "451 4.3.0 temporary storage failure, try again later"
_END = b"\r\n.\r\n"
_KEEP = len(_END) - 1  # bytes that may begin an end line split across reads

log = logging.getLogger("liveprism.smtp")


@dataclass(frozen=True, slots=True)
class DataResult:
    """The message (``content``, or the file ``spool`` holding it) or the refusal (``error``)."""

    content: bytes = b""
    error: str | None = None
    spool: Path | None = None  # the de-stuffed message is in this file (content is then b"")
    size: int = 0  # message bytes (de-stuffed), in content or in the file


def read_range(path: Path, start: int, end: int, piece: int = 1024 * 1024) -> Iterator[bytes]:
    """Bytes [start, end) of the file at `path`, in pieces of `piece` bytes (blocking reads)."""
    with open(path, "rb") as source:
        source.seek(start)
        left = end - start
        while left > 0 and (data := source.read(min(piece, left))):
            left -= len(data)
            yield data


def discard(path: Path | None) -> None:
    """Remove a spool file (gone already is fine: the store may have adopted it)."""
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


class _Spool:
    """The spool file being written: de-stuffed segments appended as they are cut."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / f"incoming-{secrets.token_hex(12)}"
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        self.size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self.fd, view)
            view = view[written:]
        self.size += len(data)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


async def read_data(
    reader: asyncio.StreamReader, *, size_limit: int | None, line_limit: int, progress: Callable[[], None],
    spool_dir: Path | None = None, spool_at: int | None = None,
) -> DataResult | None:
    """Read one message after `354`; see the module docstring."""
    state = _Reading(spool_dir, SPOOL_AT if spool_at is None else spool_at)
    result: DataResult | None = None
    try:
        result = await state.run(reader, size_limit, line_limit, progress)
        return result
    finally:
        if state.spool is not None:
            state.spool.close()
            if result is None or result.spool is None:
                discard(state.spool.path)


class _Reading:
    """One DATA phase: the wire bytes not yet written out, and the spool file once there is one."""

    def __init__(self, spool_dir: Path | None, spool_at: int) -> None:
        self.spool_dir = spool_dir
        self.spool_at = spool_at
        self.spool: _Spool | None = None
        self.failed = False  # the spool file could not be written: read on to the end, then 451
        self.wire = bytearray(b"\r\n")  # the CRLF "before" line 1, so that ".\r\n" first ends an empty message
        self.base = 0  # wire bytes already written out (or dropped) before `wire`

    def flush(self, cut: int) -> None:
        """De-stuff wire[:cut] and append it to the spool file (opened on first use). `cut` is the
        position of a CRLF, so no "CRLF ." pair straddles it (see the module docstring)."""
        wire = self.wire
        segment = bytes(wire[:cut]).replace(b"\r\n.", b"\r\n")
        if self.base == 0:
            segment = segment[2:]  # (the CRLF put before line 1)
        del wire[:cut]
        self.base += cut
        if self.failed:
            return
        try:
            if self.spool is None:
                assert self.spool_dir is not None
                self.spool = _Spool(self.spool_dir)
            self.spool.write(segment)
        except OSError as exc:
            log.error("cannot write the spool file in %s: %s; the client will get 451", self.spool_dir, exc)
            self.failed = True

    async def run(
        self, reader: asyncio.StreamReader, size_limit: int | None, line_limit: int, progress: Callable[[], None]
    ) -> DataResult | None:
        wire = self.wire
        too_much = too_long = False  # once too much, only the last bytes are kept, to find the end
        open_line = 0  # length of the line not yet ended (its CRLF excluded), for the line limit
        while True:
            chunk = await reader.read(CHUNK)
            if not chunk:
                return None
            progress()
            search_from = max(len(wire) - len(_END) + 1, 0)
            wire += chunk
            found = wire.find(_END, search_from)
            if not too_long and not too_much:  # the longest CRLF-ended line (aiosmtpd's unit) so far
                begin = len(wire) - len(chunk) - 1  # from one byte back: a CR there may pair with an LF here
                stop = found + 2 if found >= 0 else len(wire)
                if stop > begin:
                    lines = wire[begin:stop].split(b"\r\n")
                    first = open_line + len(lines[0]) - 1  # (that byte was counted with the last chunk)
                    if len(lines) == 1:
                        open_line = first
                    else:
                        too_long = max(first, max(map(len, lines[1:-1]), default=0)) + 2 > line_limit
                        open_line = len(lines[-1])
                    too_long = too_long or open_line > line_limit
            if found < 0:
                # Over the limit for sure (the last 3 bytes may be the "." CR of the end line, which does
                # not count): read on to the end keeping only what may start the end line. A line over
                # the limit is refused too: nothing more of the message is kept either.
                if too_much or (size_limit and self.base + len(wire) - 2 - (len(_END) - 2) > size_limit):
                    too_much = True
                if too_much or too_long:
                    drop = max(0, len(wire) - _KEEP)
                    del wire[:drop]
                    self.base += drop
                elif self.spool_dir is not None and len(wire) >= FLUSH and (
                    self.spool is not None or self.failed or self.base + len(wire) > self.spool_at
                ):
                    cut = wire.rfind(b"\r\n", 0, len(wire) - 2)  # keeps >= 4 bytes: an end line may start there
                    if cut > 0:
                        self.flush(cut)
                continue
            leftover = bytes(wire[found + len(_END) :])
            if leftover:  # commands pipelined after the end of data (RFC 2920): the command loop's
                reader._buffer[0:0] = leftover  # type: ignore[attr-defined]
            if too_much or (size_limit and self.base + found > size_limit):  # (wire[2:found + 2] is the message)
                return DataResult(error="552 Error: Too much mail data")
            if too_long:
                return DataResult(error="500 Line too long (see RFC5321 4.5.3.1.6)")
            if self.spool is None and not self.failed:
                content = bytes(wire[: found + 2]).replace(b"\r\n.", b"\r\n")[2:]
                return DataResult(content=content, size=len(content))
            self.flush(found + 2)
            if self.failed or self.spool is None:
                return DataResult(error=SPOOL_ERROR)
            return DataResult(spool=self.spool.path, size=self.spool.size)
