"""Streamed relay copies (issue 7 item 10): a large stored message is composed with only its
header section in memory and sent in pieces; the bytes on the wire are the same as the in-memory
composition's (`fold_long_lines(build_copy(...))` through aiosmtplib's `data`)."""

from __future__ import annotations

import io
import itertools
import os
from pathlib import Path

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from engine.relay import compose, worker
from engine.relay.client import DataStuffer
from engine.relay.compose import LineFolder, build_copy, compose_streamed, fold_long_lines
from tests.mime.test_fuzz import FUZZ
from tests.support.peers import Recorder
from tests.support.policies import route
from tests.support.relay_lab import HEADERS, RelayLab, wait_until, wait_until_async

PIECES = st.sampled_from([
    b"a", b"b" * 7, b"\r\n", b"\r", b"\n", b".", b"..", b"\r\n.", b" ", b"\t", b"\r\n\r\n", b"\n\n", b"\r\r",
    b"Subject: hi", b"X-Spam-Flag: NO", b"X-LivePrism-Verdict: deliver", b"From: a@b.example", b":", b"\xc3\xa9",
])
SPLITS = st.lists(st.integers(0, 400), max_size=12)


def pieces_of(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@FUZZ
@given(st.lists(PIECES, max_size=80), SPLITS, st.integers(3, 12))
def test_fuzz_line_folder_folds_like_fold_long_lines(parts: list[bytes], cuts: list[int], limit: int) -> None:
    data = b"".join(parts)
    folder = LineFolder(limit)
    streamed = b"".join(folder.feed(piece) for piece in pieces_of(data, cuts)) + folder.finish()
    assert streamed == fold_long_lines(data, limit)


def aiosmtplib_data(message: bytes) -> bytes:
    """What aiosmtplib's `SMTP.data` writes after the 354 for `message` (protocol.execute_data_command)."""
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"


@FUZZ
@given(st.lists(PIECES, max_size=80), SPLITS)
def test_fuzz_data_stuffer_sends_what_aiosmtplib_sends(parts: list[bytes], cuts: list[int]) -> None:
    data = b"".join(parts)
    stuffer = DataStuffer()
    streamed = b"".join(stuffer.feed(piece) for piece in pieces_of(data, cuts)) + stuffer.finish()
    assert streamed == aiosmtplib_data(data)


@FUZZ
@given(st.lists(PIECES | st.just(b"Q" * 1100), max_size=120), st.sampled_from([None, "[SPAM]", "Ünïcode"]),
       st.integers(1, 40))
def test_fuzz_streamed_composition_equals_the_in_memory_copy(
    parts: list[bytes], prefix: str | None, chunk: int
) -> None:
    raw = b"".join(parts)
    expected = fold_long_lines(build_copy(raw, HEADERS, prefix))
    old = compose.STREAM_CHUNK
    compose.STREAM_CHUNK = chunk
    try:
        copy = compose_streamed(io.BytesIO(raw), HEADERS, prefix)
        if copy is None:  # no end of the header section at all: the worker composes in memory then
            assert compose.head_end(raw) is None
            return
        streamed = copy.head + b"".join(copy.body())
        again = b"".join(copy.chunks())  # body() can be read twice (a signer hashes it first)
    finally:
        compose.STREAM_CHUNK = old
    assert streamed == again == expected
    assert copy.size == len(copy.head) + len(raw) - copy.body_offset
    assert copy.isascii() == expected.isascii()


def test_streamed_composition_folds_like_the_in_memory_copy() -> None:
    raw = (b"Subject: " + b"s" * 1500 + b"\r\nX-Spam-Flag: YES\r\nFrom: a@b.example\r\n\r\n"
           + b"x" * 2500 + b"\r\n.dot\r\n" + b"y" * 999 + b"\ntail without end " + b"z" * 1200)
    expected = fold_long_lines(build_copy(raw, HEADERS, "[SPAM]"))
    copy = compose_streamed(io.BytesIO(raw), HEADERS, "[SPAM]")
    assert copy is not None
    assert copy.head + b"".join(copy.body()) == expected
    assert b"X-Spam-Flag: YES" not in copy.head  # forged gateway field dropped from the header section


def big_message(lines: int) -> bytes:
    """Header section, then lines that test the wire: leading dots, a long line, bare LF and CR."""
    head = b"From: Alice <alice@sender.example>\r\nTo: bob@acme.example\r\nSubject: big one\r\n\r\n"
    body = []
    for i in range(lines):
        body.append(b"." * (i % 4) + b"line %d " % i + b"w" * (i % 90))
        if i % 997 == 0:
            body.append(b"L" * 2100)  # folded on the way out (RFC 5321 §4.5.3.1.6)
        if i % 1499 == 0:
            body.append(b"bare\nlf and bare\rcr")
    return head + b"\r\n".join(body) + b"\r\n.\r\nno final line end"


@pytest.mark.parametrize("action", ["deliver", "tag"])
def test_relay_streams_a_stored_file_byte_identical_to_the_in_memory_copy(
    relay_lab: RelayLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, action: str
) -> None:
    raw = big_message(30_000)  # about 1.8 MB
    monkeypatch.setattr(compose, "STREAM_CHUNK", 4099)  # many pieces: every edge case meets a boundary
    streamed_copies: list[compose.StreamedCopy | None] = []

    def spy(*args: object) -> compose.StreamedCopy | None:
        copy = compose_streamed(*args)  # type: ignore[arg-type]
        streamed_copies.append(copy)
        return copy

    monkeypatch.setattr(worker, "compose_streamed", spy)

    async def scenario() -> None:
        tenant = Recorder()
        port = await relay_lab.serve(tenant)
        gw = await relay_lab.gateway({"acme": [route(port)]})
        gw.start()
        prefix = "[SPAM]" if action == "tag" else None
        monkeypatch.setattr(worker, "STREAM_AT", 1 << 40)
        await gw.accept(raw=raw, action=action, subject_prefix=prefix)  # the in-memory path
        await wait_until(lambda: len(tenant.messages) == 1)
        monkeypatch.setattr(worker, "STREAM_AT", 0)
        spooled = await gw.accept(raw=raw, action=action, subject_prefix=prefix, spooled=True, archive=True)
        body_file = gw.store.state_dir / "bodies" / spooled.queue_id  # type: ignore[attr-defined]
        assert body_file.read_bytes() == raw and not spooled.body.exists()  # type: ignore[union-attr]
        await wait_until(lambda: len(tenant.messages) == 2, timeout=30)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        in_memory, streamed = tenant.messages
        assert len(streamed_copies) == 1 and streamed_copies[0] is not None  # the second went the streamed way
        assert streamed.data == in_memory.data
        assert streamed.data == fold_long_lines(build_copy(raw, HEADERS, prefix)).replace(b"\r\n", b"\n").replace(
            b"\r", b"\n").replace(b"\n", b"\r\n") + b"\r\n"  # (the wire has CRLF only, and a final CRLF)
        assert await gw.store.read_message(spooled.queue_id) == raw  # archived: the file stays, readable
        await gw.store.close()
        assert os.listdir(tmp_path / "state" / "spool") == []

    relay_lab.run(scenario(), timeout=60)
