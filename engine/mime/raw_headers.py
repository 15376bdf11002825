"""Byte-level reading of a raw message's top-level header section (never re-serialised).

The header section is scanned the way RFC 5322 §2.2 defines it: a field starts with a name
of printable characters other than ':' followed by ':'; a line starting with SP or HT
continues the previous field (folding, RFC 5322 §2.2.3); an empty line — or any line that is
neither — ends the section. Nothing here raises on malformed input.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from email.header import decode_header, make_header

_FIELD_NAME = re.compile(rb"[!-9;-~]+[ \t]*:")


def fields(raw: bytes) -> Iterator[tuple[int, int, bytes]]:
    """(start, end, lowercase name) of each header field; `end` is past its last line break."""
    pos = 0
    start = -1
    name = b""
    while pos < len(raw):
        eol = raw.find(b"\n", pos)
        nxt = len(raw) if eol < 0 else eol + 1
        if raw[pos : pos + 1] in (b" ", b"\t") and start >= 0:
            pos = nxt
            continue
        if start >= 0:
            yield start, pos, name
            start = -1
        match = _FIELD_NAME.match(raw, pos)
        if match is None:
            return
        start, name = pos, raw[pos : match.end() - 1].rstrip(b" \t").lower()
        pos = nxt
    if start >= 0:
        yield start, pos, name


def header_value(raw: bytes, name: str) -> str | None:
    """The unfolded, RFC 2047-decoded value of the first top-level `name` field; None when absent."""
    wanted = name.lower().encode("ascii")
    for start, end, field_name in fields(raw):
        if field_name == wanted:
            value = raw[raw.index(b":", start) + 1 : end]
            text = re.sub(r"\r?\n(?=[ \t])", "", value.decode("utf-8", "replace")).strip()
            try:
                return str(make_header(decode_header(text)))
            except (ValueError, LookupError):  # malformed encoded-word or unknown charset: show it as sent
                return text
    return None


def header_section(raw: bytes) -> bytes:
    """The header fields of `raw` (without the empty line that ends them)."""
    ends = [end for _, end, _ in fields(raw)]
    return raw[: ends[-1]] if ends else b""
