"""DKIM canonicalization (RFC 6376 §3.4) as dkimpy does it, of a body fed in pieces cut anywhere.

Shared by the lean verifier (`engine.dkim.verify`), the dkimpy patch (`engine.dkim.dkimpy_patch`)
and the relay's signer (`engine.relay.signing`): one canonicalization for verifying and signing.
`canonical_body` / `canonical_header` give the same bytes as dkimpy (tests/checks compare them on
random bodies cut everywhere); `BodyHash` hashes a body in pieces, never joining it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")  # WSP runs that are not already one SP (most are): the same result
RELAXED_SPAN = 64 * 1024  # bytes canonicalized by "relaxed" at a time (its line list: ~10x that)
_WSP = (0x20, 0x09)  # SP, HTAB


def _relaxed_lines(data: bytes) -> bytes:
    """§3.4.4 a and b on `data` (WSP before each CRLF removed, not before its end; WSP runs made
    one SP); trailing empty lines are `BodyCanonicalizer`'s business."""
    if b" \r\n" in data or b"\t\r\n" in data:
        lines = data.split(b"\r\n")
        data = b"\r\n".join([*(line.rstrip(b" \t") for line in lines[:-1]), lines[-1]])
    if b"  " in data or b"\t" in data:
        data = _WSP_RUN.sub(b" ", data)
    return data


class BodyCanonicalizer:
    """The body canonicalized by "simple" (RFC 6376 §3.4.3) or "relaxed" (§3.4.4), as dkimpy does
    it on the whole body, of a body fed in pieces cut anywhere: `feed` each piece, then `finish`;
    the canonical bytes go to `write`, in order, in pieces.

    Both are line-local but for the end: a CR that ends a piece is held back (an LF may follow),
    and in "relaxed" the WSP run before it (a CRLF may follow: the run goes; else it becomes one
    SP, so at most " \r" is held); so are the CRLFs that end the output so far (only a count:
    trailing empty lines go, §3.4.3). Memory: "simple" writes slices of the pieces given;
    "relaxed" works on RELAXED_SPAN bytes at a time (a copy, and its lines when it has WSP to
    change), whatever the size of the pieces."""

    __slots__ = ("_content", "_empty", "_relaxed", "_tail", "_write")

    def __init__(self, algorithm: bytes, write: Callable[[bytes | memoryview], object]) -> None:
        if algorithm not in (b"simple", b"relaxed"):
            raise ValueError(f"unknown body canonicalization {algorithm!r}")
        self._relaxed = algorithm == b"relaxed"
        self._write = write
        self._tail = b""  # held back from the end of the last piece (SP, HTAB, CR only)
        self._empty = 0  # CRLFs that end the output so far, not yet written
        self._content = False  # whether anything but CRLFs was written

    def feed(self, piece: bytes | memoryview) -> None:
        if not self._relaxed or len(piece) <= RELAXED_SPAN:
            self._feed(piece)
            return
        view = memoryview(piece)  # "relaxed" splits what it changes into lines: a span at a time
        for at in range(0, len(view), RELAXED_SPAN):
            self._feed(view[at : at + RELAXED_SPAN])

    def _feed(self, piece: bytes | memoryview) -> None:
        if self._tail:
            piece = self._tail + piece
        cut = len(piece)
        if cut and piece[cut - 1] == 0x0D:  # it may pair with an LF
            cut -= 1
        if self._relaxed:  # WSP may precede a CRLF (then it goes)
            while cut and piece[cut - 1] in _WSP:
                cut -= 1
        tail = bytes(piece[cut:])
        if self._relaxed and len(tail) > 2:  # a WSP run becomes one SP anyway: the tail stays short
            tail = b" \r" if tail.endswith(b"\r") else b" "
        self._tail = tail
        if cut:
            self._canonical(piece if cut == len(piece) else memoryview(piece)[:cut])

    def finish(self) -> None:
        """The rest: the last line when it has no CRLF, then one CRLF after the last non-empty line
        (an empty body: CRLF in "simple", nothing in "relaxed")."""
        if self._tail:
            self._canonical(self._tail)
            self._tail = b""
        if self._content or not self._relaxed:
            self._write(b"\r\n")

    def _canonical(self, data: bytes | memoryview) -> None:
        """`data` (not ending with SP, HTAB or CR) canonicalized, its trailing CRLFs held back."""
        if self._relaxed:
            data = _relaxed_lines(data if isinstance(data, bytes) else bytes(data))
        size = end = len(data)
        while end >= 2 and data[end - 1] == 0x0A and data[end - 2] == 0x0D:
            end -= 2
        if end:
            if self._empty:
                self._write(b"\r\n" * self._empty)
            self._write(data if end == size else memoryview(data)[:end])
            self._content = True
            self._empty = 0
        self._empty += (size - end) // 2


class BodyHash:
    """The digest of a body fed in pieces, canonicalized by `algorithm` (`BodyCanonicalizer`),
    of its first `length` canonical bytes when given (l=, RFC 6376 §3.5)."""

    __slots__ = ("_canonicalizer", "_hash", "_left")

    def __init__(self, hash_name: str, algorithm: bytes, length: int | None = None) -> None:
        self._hash = hashlib.new(hash_name)
        self._left = length
        self._canonicalizer = BodyCanonicalizer(algorithm, self._take)

    def update(self, piece: bytes | memoryview) -> None:
        self._canonicalizer.feed(piece)

    def digest(self) -> bytes:
        self._canonicalizer.finish()
        return self._hash.digest()

    def _take(self, data: bytes | memoryview) -> None:
        if self._left is not None:
            if len(data) > self._left:
                data = data[: self._left]
            self._left -= len(data)
        self._hash.update(data)


def canonical_body(body: bytes, algorithm: bytes) -> bytes:
    """The body canonicalized by "simple" (§3.4.3) or "relaxed" (§3.4.4), as dkimpy does it: `body`
    itself when that changes nothing (a body ending with one CRLF, in "relaxed" also without WSP
    to change: base64, most text), else `BodyCanonicalizer`'s pieces joined."""
    if body.endswith(b"\r\n") and not body.endswith(b"\r\n\r\n") and (algorithm == b"simple" or (
            body != b"\r\n" and b"\t" not in body and b"  " not in body and b" \r\n" not in body)):
        return body
    out: list[bytes | memoryview] = []
    canonicalizer = BodyCanonicalizer(algorithm, out.append)
    canonicalizer.feed(body)
    canonicalizer.finish()
    return b"".join(out)


def canonical_header(name: bytes, value: bytes, algorithm: bytes) -> bytes:
    """`name:value` canonicalized by "simple" (§3.4.1) or "relaxed" (§3.4.2), as dkimpy does it."""
    if algorithm == b"simple":
        return name + b":" + value
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")  # = re.sub(rb"\r?\n", b"", value)
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return name.lower().rstrip() + b":" + value.strip() + b"\r\n"
