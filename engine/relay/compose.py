"""Byte-level composition of a tenant's copy from the raw message (never re-serialised).

A copy is the gateway's header lines, prepended, followed by the message exactly as received,
except that a `tag` copy gets a prefix in its first top-level Subject field (RFC 5322 §3.6.5),
forged copies of the gateway's own verdict fields are dropped, and lines over 998 octets are
folded on the way out (`fold_long_lines`, as Postfix does).
Working on bytes keeps signatures (DKIM, RFC 6376 §5.4) and odd-but-valid formatting intact:
the `email` package would re-fold and re-encode what it touches.
The header section is read by `engine.mime.raw_headers`.

Large messages are never composed in memory (issue 7 item 10): `compose_streamed` reads only the
message's first bytes up to the line after its header section, composes that part exactly as
`build_copy` would (every change `build_copy` makes lies in the header section) and folds it; the
body is then read from the stored file in `STREAM_CHUNK` pieces and folded line by line
(`LineFolder`). The bytes are the same as `fold_long_lines(build_copy(raw, ...))`
(tests/relay/test_relay_stream.py). `StreamedCopy.head` is the final header section: the place
where a signer adds its field, after hashing `StreamedCopy.body()`.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from engine.mime.raw_headers import fields

_MAX_LINE = 998  # RFC 5322 §2.1.1, without the CRLF


def _encode_prefix(prefix: str) -> bytes:
    """The prefix as header text: ASCII as is, anything else as one RFC 2047 encoded-word."""
    clean = " ".join(prefix.split())  # no CR/LF or runs of white space in a header
    if clean.isascii():
        return clean.encode("ascii")
    return b"=?utf-8?b?" + base64.b64encode(clean.encode("utf-8")) + b"?="


# Fields the gateway writes itself. A sender's own copies are dropped from the top-level header,
# so a tenant's filters never trust a forged verdict (as Rspamd and SpamAssassin do).
GATEWAY_FIELDS = frozenset({b"x-liveprism-verdict", b"x-liveprism-policy", b"x-spam-flag", b"x-spam-score"})


def strip_gateway_fields(raw: bytes) -> bytes:
    """`raw` without top-level header fields named in GATEWAY_FIELDS (unchanged when it has none)."""
    end = raw.find(b"\n\r\n")
    head = (raw if end < 0 else raw[:end]).lower()
    if b"x-liveprism-" not in head and b"x-spam-" not in head:  # the usual case: one quick look
        return raw
    spans = [(start, end) for start, end, name in fields(raw) if name in GATEWAY_FIELDS]
    if not spans:
        return raw
    kept: list[bytes] = []
    pos = 0
    for start, end in spans:
        kept.append(raw[pos:start])
        pos = end
    kept.append(raw[pos:])
    return b"".join(kept)


# Of the fields the gateway prepends, those kept on a copy leaving for the world (outbound mail and
# DSNs): its Received trace (RFC 5321 §4.4 requires it). Verdict fields (X-LivePrism-*, X-Spam-*)
# and Authentication-Results describe the gateway's internal view and are not for strangers.
WORLD_DROPPED_FIELDS = GATEWAY_FIELDS | {b"authentication-results"}


def world_headers(headers: bytes) -> bytes:
    """The gateway's prepended header lines without WORLD_DROPPED_FIELDS (and without any
    X-LivePrism-* field), for a copy that leaves for the world."""
    if not headers:
        return headers
    return b"".join(
        headers[start:end] for start, end, name in fields(headers)
        if name not in WORLD_DROPPED_FIELDS and not name.startswith(b"x-liveprism-")
    )


_BARE_CR = re.compile(rb"\r(?!\n)")
_EMPTY_LINE = re.compile(rb"(?:\A|\r\n|\n|\r(?!\n))(\r\n|\n|\r)")


def normalise_header_section(raw: bytes) -> bytes:
    """`raw` with its header section made unambiguous before anything reads its fields.

    A bare CR in the header section becomes CRLF: `Subject: x<CR>X-Spam-Flag: NO` is one field to
    a reader that splits lines at LF but two to one that splits at CR, and an SMTP client sends it
    as two (RFC 5321 §2.3.8 forbids bare CR; Postfix: smtpd_forbid_bare_newline). So the forged
    field is seen, and dropped, here. Continuation lines that open the message (no field before
    them) are dropped, as `engine.mime.view` drops them: they would otherwise continue the last
    field the gateway prepends.
    """
    while raw[:1] in (b" ", b"\t"):
        eol = raw.find(b"\n")
        raw = b"" if eol < 0 else raw[eol + 1 :]
    blank = _EMPTY_LINE.search(raw)  # (CRLF, LF and a lone CR all end a line, as in engine.mime.view)
    end = blank.start(1) if blank else len(raw)
    head = raw[:end]
    if b"\r" not in head or not _BARE_CR.search(head):
        return raw
    return _BARE_CR.sub(b"\r\n", head) + raw[end:]


def build_copy(raw: bytes, headers: bytes, subject_prefix: str | None) -> bytes:
    """`headers` + `raw`, with `subject_prefix` put in front of the first top-level Subject.

    Without a Subject field one is added after `headers`. A subject that already starts with
    the prefix is left alone, so a message that passes the gateway twice is not tagged twice.
    The header section is made unambiguous first (`normalise_header_section`), then top-level
    fields the gateway itself writes (GATEWAY_FIELDS) are dropped from `raw`; nothing else of
    `raw` changes.
    """
    raw = strip_gateway_fields(normalise_header_section(raw))
    prefix = _encode_prefix(subject_prefix) if subject_prefix else b""
    if not prefix:
        return headers + raw
    for start, end, name in fields(raw):
        if name != b"subject":
            continue
        colon = raw.index(b":", start)
        value = raw[colon + 1 : end]
        if re.sub(rb"\r?\n(?=[ \t])", b"", value).strip().startswith(prefix):
            return headers + raw
        first_line_end = raw.find(b"\n", colon)
        first_line = (first_line_end if first_line_end >= 0 else end) - start
        after = raw[colon + 1 : colon + 2]
        if first_line + len(prefix) + 2 > _MAX_LINE:
            # fold after the prefix: "Subject: [P]" CRLF " <original value>", which unfolds to "[P] value"
            insert = b" " + prefix + b"\r\n" + (b"" if after in (b" ", b"\t") else b" ")
        else:
            insert = b" " + prefix + (b"" if after in (b" ", b"\t", b"\r", b"\n") else b" ")
        return headers + raw[: colon + 1] + insert + raw[colon + 1 :]
    return headers + b"Subject: " + prefix + b"\r\n" + raw


def _fold_line(line: bytes, limit: int, out: list[bytes]) -> None:
    """Append `line` (its LF excluded; a final CR is kept) to `out`, folded every `limit` octets."""
    cr = line.endswith(b"\r")
    body = line[:-1] if cr else line
    while len(body) > limit:
        out.append(body[:limit] + b"\r\n")
        body = b" " + body[limit:]
    out.append(body + (b"\r" if cr else b""))


def fold_long_lines(data: bytes, limit: int = _MAX_LINE) -> bytes:
    """Break lines longer than `limit` octets (the CR of a CRLF not counted) by inserting CRLF SP,
    as Postfix's SMTP client does (`smtp_line_length_limit`): the gateway accepts such lines, but
    RFC 5321 §4.5.3.1.6 lets the next server refuse them. Each line is folded on its own, so the
    message can be folded in pieces (`LineFolder`). A message without long lines is returned
    unchanged."""
    lines = data.split(b"\n")
    if max(map(len, lines)) <= limit:
        return data
    out: list[bytes] = []
    for line in lines:
        _fold_line(line, limit, out)
        out.append(b"\n")
    joined = b"".join(out)
    return joined[:-1]  # the split added a "\n" after the last piece


class LineFolder:
    """`fold_long_lines` over a message fed in pieces: `feed` returns what is final so far,
    `finish` the rest. Memory: one piece plus the line not yet ended (at most `limit` + 1 bytes)."""

    def __init__(self, limit: int = _MAX_LINE) -> None:
        self.limit = limit
        self.line = b""  # the current line not yet ended (already folded up to its last `limit` + 1 bytes)

    def feed(self, data: bytes) -> bytes:
        limit = self.limit
        lines = (self.line + data).split(b"\n") if self.line else data.split(b"\n")
        rest = lines.pop()
        if lines and max(map(len, lines)) <= limit:  # the usual case: nothing to fold but the rest
            out = [b"\n".join(lines), b"\n"]
        else:
            out = []
            for line in lines:
                _fold_line(line, limit, out)
                out.append(b"\n")
        while len(rest) > limit + 1:  # folded whether or not a CR ends it (see _fold_line)
            out.append(rest[:limit] + b"\r\n")
            rest = b" " + rest[limit:]
        self.line = rest
        return b"".join(out)

    def finish(self) -> bytes:
        out: list[bytes] = []
        if self.line:
            _fold_line(self.line, self.limit, out)
        self.line = b""
        return b"".join(out)


_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")


class LineEnds:
    """Every CR, LF and CRLF made CRLF, and a final CRLF when missing, over a message fed in pieces:
    what an SMTP client transmits (aiosmtplib normalises line ends so before dot-stuffing; RFC 5321
    §2.3.8 allows no bare CR or LF). The concatenated output of `feed`s and `finish` equals
    `engine.relay.signing.as_sent` of the whole; a CR that ends a piece waits for the next one."""

    __slots__ = ("cr", "ends_crlf")

    def __init__(self) -> None:
        self.cr = False  # the last piece ended with a CR: it may pair with an LF in the next
        self.ends_crlf = False  # the output so far ends with CRLF (False while empty)

    def feed(self, data: bytes) -> bytes:
        if self.cr:
            data = b"\r" + data
        self.cr = data.endswith(b"\r")
        if self.cr:
            data = data[:-1]
        if not data:
            return b""
        crlf = data.count(b"\r\n")
        if data.count(b"\n") != crlf or data.count(b"\r") != crlf:  # the usual case needs no regex pass
            data = _LINE_ENDS.sub(b"\r\n", data)
        self.ends_crlf = data.endswith(b"\r\n")
        return data

    def finish(self) -> bytes:
        """The end of the output (a CRLF or nothing); the state is reset for another message."""
        end = b"\r\n" if self.cr or not self.ends_crlf else b""
        self.cr = self.ends_crlf = False
        return end


STREAM_CHUNK = 256 * 1024
HEAD_LIMIT = 2 * 1024 * 1024  # a header section longer than this: the copy is composed in memory


def head_end(data: bytes) -> int | None:
    """Where the part of `data` holding the whole header section ends: after the line end that
    follows its empty line (`normalise_header_section`'s rule); None when `data` has no such end."""
    blank = _EMPTY_LINE.search(data)
    if blank is None:
        return None
    eol = data.find(b"\n", blank.end(1) - 1)
    return None if eol < 0 else eol + 1


@dataclass(slots=True)
class StreamedCopy:
    """A tenant's copy of a large stored message: `head` (the composed, folded header section and
    what followed it up to a line end) then the rest of `source`, read and folded in pieces.

    `head` is final: a signer (DKIM, RFC 6376) hashes `body()` and prepends its field to `head`.
    `body()` may be iterated more than once (each pass reads the file again)."""

    head: bytes
    source: BinaryIO
    body_offset: int
    body_size: int
    _ascii: bool | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        """Bytes of the copy before folding (for SIZE, RFC 1870: an estimate is enough)."""
        return len(self.head) + self.body_size

    def body(self) -> Iterator[bytes]:
        """The folded body in pieces (blocking file reads of `STREAM_CHUNK` bytes)."""
        folder = LineFolder()
        self.source.seek(self.body_offset)
        while chunk := self.source.read(STREAM_CHUNK):
            folded = folder.feed(chunk)
            if folded:
                yield folded
        last = folder.finish()
        if last:
            yield last

    def chunks(self) -> Iterator[bytes]:
        """The whole copy: `head`, then the body."""
        yield self.head
        yield from self.body()

    def isascii(self) -> bool:
        """Whether every byte is ASCII (for BODY=8BITMIME, RFC 6152); the file is read once for it."""
        if self._ascii is None:
            self._ascii = self.head.isascii() and all(chunk.isascii() for chunk in self._raw_body())
        return self._ascii

    def _raw_body(self) -> Iterator[bytes]:
        self.source.seek(self.body_offset)
        while chunk := self.source.read(STREAM_CHUNK):
            yield chunk

    def close(self) -> None:
        self.source.close()


def compose_streamed(source: BinaryIO, headers: bytes, subject_prefix: str | None) -> StreamedCopy | None:
    """The copy `fold_long_lines(build_copy(raw, headers, subject_prefix))` of the message in
    `source`, with only its header section in memory; None when that section does not end within
    `HEAD_LIMIT` bytes (the caller composes in memory then). Takes `source` over (see `close`)."""
    source.seek(0)
    start = source.read(HEAD_LIMIT)
    cut = head_end(start)
    if cut is None:
        return None
    total = source.seek(0, 2)
    head = fold_long_lines(build_copy(start[:cut], headers, subject_prefix))
    return StreamedCopy(head, source, cut, total - cut)
