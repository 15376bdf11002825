"""Fuzzing harness (issue 7 "Also"): hypothesis-generated hostile input for the MIME view and the
SMTP command/DATA parsers, so that the next stall or crash is found by the project itself.

Bounded in the test suite (`LIVEPRISM_FUZZ_EXAMPLES`, default 150 per property); `bench/fuzz.py`
runs the same properties with many more examples. No timings here: bench/mime_hostile.py
measures growth ratios.
"""

from __future__ import annotations

import asyncio
import base64
import os
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.mime.view.walker as walker_module
from engine.mime.view import MAX_PARTS, MessageView, load_texts, parse_message
from engine.smtp import data as data_module
from engine.smtp.data import read_data
from engine.smtp.protocol import address_problem

EXAMPLES = int(os.environ.get("LIVEPRISM_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- MIME view

EOL = st.sampled_from(["\r\n", "\n", "\r", "\r\r\n"])
WORDS = st.sampled_from([
    "=?utf-8?b?w6k=?=", "=?utf-8?q?caf=C3=A9?=", "=?iso-8859-1?q?=E9?=", "=?bogus?b?@@@?=", "=?utf-8?q?",
    "=?", "?=", "=?utf-8*fr?B?QUJD?=", "plain", "\u00e9", "\x00", "\x1b[31m", " ", "\t",
])
NAMES = st.sampled_from(["Subject", "From", "To", "Content-Type", "Content-Transfer-Encoding",
                         "Content-Disposition", "Received", "X-Spam-Flag", "From ", ":", " folded"])
CTYPES = st.sampled_from([
    "text/plain", "text/html; charset=utf-8", "multipart/mixed; boundary=b", 'multipart/alternative; boundary="b b"',
    "message/rfc822", "application/octet-stream; name*=utf-8''%C3%A9.exe", "multipart/digest; boundary=b",
    "text/plain; charset*0=utf; charset*1=-8", "multipart/mixed", "text/plain; charset=utf-16",
])


@st.composite
def header_lines(draw: st.DrawFn) -> str:
    eol = draw(EOL)
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        value = " ".join(draw(st.lists(WORDS, max_size=6)))
        lines.append(f"{draw(NAMES)}: {value}{eol}")
        if draw(st.booleans()):
            lines.append(f" {' '.join(draw(st.lists(WORDS, max_size=3)))}{eol}")
    return "".join(lines)


@st.composite
def entities(draw: st.DrawFn, depth: int = 0) -> str:
    eol = draw(EOL)
    ctype = draw(CTYPES)
    encoding = draw(st.sampled_from(["", "base64", "quoted-printable", "x-uuencode", "7bit"]))
    head = draw(header_lines()) + f"Content-Type: {ctype}{eol}"
    if encoding:
        head += f"Content-Transfer-Encoding: {encoding}{eol}"
    if ctype.startswith("multipart/") and depth < 3:
        boundary = draw(st.sampled_from(["b", "b b", "c"]))
        parts = [draw(entities(depth + 1)) for _ in range(draw(st.integers(0, 3)))]
        inner = "".join(f"--{boundary}{eol}{part}{eol}" for part in parts)
        close = f"--{boundary}--{eol}" if draw(st.booleans()) else ""
        return f"{head}{eol}preamble{eol}{inner}{close}"
    if ctype == "message/rfc822" and depth < 3:
        return f"{head}{eol}{draw(entities(depth + 1))}"
    body = draw(st.text(max_size=80))
    if encoding == "base64" and draw(st.booleans()):
        body = base64.b64encode(body.encode("utf-8", "surrogatepass")).decode()
    return f"{head}{eol}{body}"


def check_view(raw: bytes) -> MessageView:
    view = parse_message(raw)  # never raises
    assert isinstance(view, MessageView)
    assert view.size == len(raw)
    assert list(view.defects) == sorted(set(view.defects))
    assert 1 <= len(view.content_types) <= MAX_PARTS
    assert all(name == name.lower() for name in view.headers)
    with patch.object(walker_module, "UTF8_TEXT_SIZE", -1):  # every text body deferred, then loaded
        loaded = load_texts(parse_message(raw, defer_texts=True), lambda start, end: [raw[start:end]])
    assert loaded.deferred == () and len(loaded.texts) == len(view.texts)
    assert all(isinstance(text, (str, memoryview)) for text in loaded.texts)
    return view


@FUZZ
@given(entities())
def test_fuzz_mime_view_structured(text: str) -> None:
    check_view(text.encode("utf-8", "surrogateescape"))


@FUZZ
@given(st.binary(max_size=3000))
def test_fuzz_mime_view_bytes(raw: bytes) -> None:
    check_view(raw)


@FUZZ
@given(st.lists(WORDS, min_size=1, max_size=200), EOL)
def test_fuzz_encoded_word_headers_decode_to_text(words: list[str], eol: str) -> None:
    raw = ("Subject: " + f"{eol} ".join(words) + f"{eol}{eol}body").encode("utf-8", "surrogateescape")
    view = check_view(raw)
    assert view.headers.get("subject") is not None or "bad-header" in view.defects or "\r" in eol


# ---------------------------------------------------------------- SMTP command and DATA parsers

ADDRESS_CHARS = st.sampled_from([*"ab.@<>\" \\:,;()[]%!+=", "\x00", "\x01", "\x1b", "\x7f", "\x85",
                                  "\u2028", "é", "ü", "\udcff"])


@FUZZ
@given(st.text(ADDRESS_CHARS, max_size=40), st.booleans())
def test_fuzz_address_problem_refuses_every_control_character(arg: str, smtputf8: bool) -> None:
    problem = address_problem(arg, smtputf8=smtputf8)
    if any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or ch in "\u2028\u2029" for ch in arg):
        assert problem is not None and problem.startswith("501")
    elif not arg.isascii() and not smtputf8:
        assert problem is not None and problem.startswith("553")
    else:
        assert problem is None


def reference_data(wire: bytes, size_limit: int, line_limit: int) -> tuple[bytes | None, str | None, bytes]:
    """aiosmtpd's DATA semantics, line by line: (content, error, what is left after the end line)."""
    lines, pos, total, too_long = [], 0, 0, False
    while True:
        eol = wire.find(b"\r\n", pos)
        if eol < 0:
            return None, None, b""
        line = wire[pos : eol + 2]
        pos = eol + 2
        if line == b".\r\n":
            break
        total += len(line)
        too_long = too_long or len(line) > line_limit
        lines.append(line[1:] if line.startswith(b".") else line)
    if size_limit and total > size_limit:
        return b"", "552", wire[pos:]
    if too_long:
        return b"", "500", wire[pos:]
    return b"".join(lines), None, wire[pos:]


DATA_PIECES = st.sampled_from([b"a", b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.", b"\r\n.\r", b"x" * 30, b"\r\n.\r\n"])


@FUZZ
@given(st.lists(DATA_PIECES, max_size=40), st.lists(st.integers(1, 9), min_size=1, max_size=5),
       st.integers(0, 120), st.integers(8, 64))
def test_fuzz_read_data_agrees_with_line_by_line_reading(
    pieces: list[bytes], chunks: list[int], size_limit: int, line_limit: int
) -> None:
    wire = b"".join(pieces) + b"\r\n.\r\nQUIT\r\n"

    async def run() -> tuple[bytes | None, str | None, bytes]:
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.feed_data(wire)
        reader.feed_eof()
        old = data_module.CHUNK
        data_module.CHUNK = chunks[0]  # small reads: the end line and long lines cross chunk edges
        try:
            result = await read_data(reader, size_limit=size_limit, line_limit=line_limit, progress=lambda: None)
        finally:
            data_module.CHUNK = old
        rest = await reader.read()
        if result is None:
            return None, None, rest
        return (result.content, result.error[:3] if result.error else None, rest)

    content, error, rest = asyncio.run(run())
    expected = reference_data(wire, size_limit, line_limit)
    assert (content if error is None else b"", error, rest) == expected
