"""The spooled DATA reader (issue 7 item 10): large messages go to a file in the spool directory
while they arrive, de-stuffed per segment; the result equals the in-memory reader's, and no file
is left behind unless one is returned.

The line-by-line reference of aiosmtpd's semantics is the fuzz test's (tests/mime/test_fuzz.py);
here the same property runs with tiny spool thresholds, so that every cut, every read and every
end line falls on a segment boundary somewhere.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.smtp import data as data_module
from engine.smtp.data import SPOOL_ERROR, DataResult, read_data
from tests.mime.test_fuzz import DATA_PIECES, FUZZ, reference_data


def run_reader(
    wire: bytes, spool_dir: Path, *, size_limit: int | None = None, line_limit: int = 1000, spool_at: int = 0,
    chunk: int | None = None, flush: int | None = None, eof: bool = True,
) -> tuple[DataResult | None, bytes]:
    """`read_data` over `wire` (small reads and flushes when asked); returns the result and what
    is left in the reader for the next command."""

    async def go() -> tuple[DataResult | None, bytes]:
        reader = asyncio.StreamReader(limit=1 << 16)
        reader.feed_data(wire)
        if eof:
            reader.feed_eof()
        result = await read_data(reader, size_limit=size_limit, line_limit=line_limit, progress=lambda: None,
                                 spool_dir=spool_dir, spool_at=spool_at)
        rest = reader._buffer[:] if not eof else await reader.read()  # type: ignore[attr-defined]
        return result, bytes(rest)

    old = data_module.CHUNK, data_module.FLUSH
    data_module.CHUNK = chunk or old[0]
    data_module.FLUSH = flush or old[1]
    try:
        return asyncio.run(go())
    finally:
        data_module.CHUNK, data_module.FLUSH = old


def content_of(result: DataResult) -> bytes:
    if result.spool is not None:
        assert result.content == b""
        data = result.spool.read_bytes()
        assert len(data) == result.size
        return data
    return result.content


@FUZZ
@given(st.lists(DATA_PIECES, max_size=60), st.integers(1, 9), st.integers(1, 24), st.integers(0, 40),
       st.integers(0, 120), st.integers(8, 64))
def test_fuzz_spooled_reading_agrees_with_line_by_line_reading(
    pieces: list[bytes], chunk: int, flush: int, spool_at: int, size_limit: int, line_limit: int
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        check_spooled(Path(directory), pieces, chunk, flush, spool_at, size_limit, line_limit)


def check_spooled(
    spool: Path, pieces: list[bytes], chunk: int, flush: int, spool_at: int, size_limit: int, line_limit: int
) -> None:
    wire = b"".join(pieces) + b"\r\n.\r\nQUIT\r\n"
    result, rest = run_reader(wire, spool, size_limit=size_limit, line_limit=line_limit, spool_at=spool_at,
                              chunk=chunk, flush=flush)
    expected = reference_data(wire, size_limit, line_limit)
    assert result is not None
    got = (content_of(result) if result.error is None else b"", result.error[:3] if result.error else None, rest)
    assert got == expected
    left = sorted(os.listdir(spool))
    assert left == ([result.spool.name] if result.spool is not None else [])  # nothing else, ever


def test_large_message_is_spooled_and_destuffed_across_segment_edges(tmp_path: Path) -> None:
    lines = [b"..dot %d" % i if i % 3 == 0 else b"line %d with some text" % i for i in range(20_000)]
    message = b"\r\n".join(lines) + b"\r\n"
    wire = b"\r\n".join(b"." + line if line.startswith(b".") else line for line in lines) + b"\r\n.\r\n"
    result, _ = run_reader(wire, tmp_path, spool_at=1000, chunk=4093, flush=7919)
    assert result is not None and result.error is None and result.spool is not None
    assert result.spool.parent == tmp_path
    assert result.spool.read_bytes() == message
    assert oct(result.spool.stat().st_mode & 0o777) == "0o600"


def test_small_message_stays_in_memory(tmp_path: Path) -> None:
    result, _ = run_reader(b"Subject: x\r\n\r\n..hi\r\n.\r\n", tmp_path, spool_at=1 << 20)
    assert result == DataResult(content=b"Subject: x\r\n\r\n.hi\r\n", size=19)
    assert os.listdir(tmp_path) == []


def test_over_the_size_limit_is_refused_and_the_file_removed(tmp_path: Path) -> None:
    wire = b"x" * 50 + b"\r\n"
    result, rest = run_reader(wire * 2000 + b".\r\nNOOP\r\n", tmp_path, size_limit=10_000, spool_at=100,
                              chunk=512, flush=1024)
    assert result is not None and result.error is not None and result.error.startswith("552")
    assert rest == b"NOOP\r\n"
    assert os.listdir(tmp_path) == []


def test_pipelined_commands_after_a_spooled_message_go_back_to_the_reader(tmp_path: Path) -> None:
    body = b"a" * 70 + b"\r\n"
    result, rest = run_reader(body * 1000 + b".\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n", tmp_path,
                              spool_at=10, chunk=1000, flush=3000)
    assert result is not None and result.spool is not None
    assert result.spool.read_bytes() == body * 1000
    assert rest == b"MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n"


def test_hang_up_mid_data_removes_the_spool_file(tmp_path: Path) -> None:
    result, _ = run_reader(b"y" * 70 + b"\r\n" * 5000, tmp_path, spool_at=10, chunk=999, flush=2000)
    assert result is None
    assert os.listdir(tmp_path) == []


def test_cancelled_reader_removes_the_spool_file(tmp_path: Path) -> None:
    async def go() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data((b"z" * 98 + b"\r\n") * 5000)  # then nothing: the client stalls
        task = asyncio.create_task(read_data(reader, size_limit=None, line_limit=1000, progress=lambda: None,
                                             spool_dir=tmp_path, spool_at=10))
        for _ in range(200):
            await asyncio.sleep(0)
            if os.listdir(tmp_path):
                break
        assert os.listdir(tmp_path), "the spool file should exist while the message arrives"
        task.cancel()  # what the idle timeout does to a stalled session
        with pytest.raises(asyncio.CancelledError):
            await task

    old = data_module.FLUSH
    data_module.FLUSH = 4096
    try:
        asyncio.run(go())
    finally:
        data_module.FLUSH = old
    assert os.listdir(tmp_path) == []


def test_unwritable_spool_gives_451_after_reading_to_the_end(tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    result, rest = run_reader((b"w" * 60 + b"\r\n") * 2000 + b".\r\nQUIT\r\n", missing, spool_at=10,
                              chunk=700, flush=1500)
    assert result == DataResult(error=SPOOL_ERROR)
    assert rest == b"QUIT\r\n"  # the session stays in step: the reply goes to DATA, the next command is read
