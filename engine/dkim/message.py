"""A message as DKIM verification reads it: dkimpy's header fields, and the body left in place.

`Message.parse` splits only the header section (dkimpy's `rfc822_parse` on it: the same fields);
the body stays in `raw` and is canonicalized and hashed in pieces of BODY_PIECE bytes, each hash
computed once per message whatever the number of signatures asking for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import dkim

from engine.dkim.canonical import BodyHash

BODY_PIECE = 1024 * 1024  # bytes of body canonicalized and hashed at a time
_BARE_LF = re.compile(rb"(?<!\r)\n")


def body_start(raw: bytes) -> int:
    """Where dkimpy's `rfc822_parse` starts the body: after the first empty line (lines end at
    CRLF or LF); `len(raw)` when there is none."""
    if raw.startswith(b"\n"):
        return 1
    if raw.startswith(b"\r\n"):
        return 2
    crlf = raw.find(b"\n\r\n")
    lf = raw.find(b"\n\n", 0, len(raw) if crlf < 0 else crlf + 2)
    if lf >= 0:
        return lf + 2
    return len(raw) if crlf < 0 else crlf + 3


@dataclass(slots=True)
class Message:
    """One message's header fields (as `dkim.rfc822_parse` gives them) and where its body starts in
    `raw` (never copied whole), parsed once for all its signatures, with the canonical body hashes
    computed so far."""

    headers: list[list[bytes]]
    raw: bytes
    body_offset: int
    _body_hashes: dict[tuple[str, bytes, int | None], bytes] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes) -> Message:
        start = body_start(raw)
        headers, _ = dkim.rfc822_parse(raw[:start])  # the header section only: the same fields
        return cls(headers, raw, start)

    def body_pieces(self) -> Iterator[bytes | memoryview]:
        """The body as dkimpy's `rfc822_parse` gives it (every line end CRLF: an LF without its
        CR gets one, RFC 6376 §3.4), in pieces of about BODY_PIECE bytes, none ending with CR."""
        raw, pos, end = self.raw, self.body_offset, len(self.raw)
        view = memoryview(raw)
        while pos < end:
            cut = min(pos + BODY_PIECE, end)
            while cut < end and raw[cut - 1] == 0x0D:  # a CR and the LF after it stay together
                cut += 1
            if raw.count(b"\n", pos, cut) != raw.count(b"\r\n", pos, cut):
                yield _BARE_LF.sub(b"\r\n", raw[pos:cut])
            else:
                yield view[pos:cut]
            pos = cut

    def body_hash(self, hash_name: str, algorithm: bytes, length: int | None) -> bytes:
        """The `hash_name` digest of the body canonicalized by `algorithm` (b"simple"/b"relaxed"), cut at l=."""
        key = (hash_name, algorithm, length)
        digest = self._body_hashes.get(key)
        if digest is None:
            hasher = BodyHash(hash_name, algorithm, length)
            for piece in self.body_pieces():
                hasher.update(piece)
            digest = self._body_hashes[key] = hasher.digest()
        return digest
