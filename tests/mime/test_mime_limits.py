"""engine.mime.view under hostile input (issue 7 item 1): RFC 2047 decoding is linear and the work
per message is capped; beyond a cap the message carries a defect token (so the `malformed-mime`
hit), never an exception. No timings here: bench/mime_hostile.py measures the growth ratios."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.mime import view as mime_view
from engine.mime.view import (
    _HEADER_BLOCK,
    DECODE_LIMIT,
    HEADERS_TOO_LARGE,
    MAX_PARTS,
    TOO_MANY_PARTS,
    _Builder,
    _header_block_end,
    header_text,
    parse_message,
)
from engine.mime.view import walker as mime_walker
from tests.support.messages import folded_subject, many_parts


def test_many_adjacent_words_decode_together() -> None:
    # 20,000 adjacent words of one charset: one run, decoded once (the run is a list, not bytes +=)
    assert header_text(parse_message(folded_subject(20_000)), "subject") == ("ABC" * 20_000,)


def test_split_multibyte_character_across_words_still_decodes() -> None:
    raw = b"Subject: =?utf-8?b?w6k=?= =?utf-8?q?=C3?= =?utf-8?q?=A9?=\r\n\r\n"
    assert header_text(parse_message(raw), "subject") == ("éé",)


def test_unclosed_encoded_word_openings_are_kept_as_text() -> None:
    value = "=?utf-8?q?x " * 1000 + "tail"  # no "?=" anywhere
    assert _Builder().decode_words(value) == value


def test_header_block_beyond_the_cap_is_cut_and_the_rest_read_as_body() -> None:
    words = mime_view.MAX_HEADER_BYTES // 10 + 1000
    view = parse_message(folded_subject(words))
    assert HEADERS_TOO_LARGE in view.defects and view.malformed
    assert header_text(view, "subject")[0].startswith("ABC")  # what fits is decoded
    assert "=?utf-8?b?QUJD?=" in view.texts[0]  # the rest is still seen, by body rules


def test_header_bytes_beyond_the_decode_budget_stay_raw(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime_walker, "MAX_HEADER_BYTES", 200)
    part = b'--b\r\nContent-Disposition: attachment; filename="=?utf-8?q?caf=C3=A9?=.txt"\r\n\r\nx\r\n'
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + part * 20 + b"--b--\r\n"
    view = parse_message(raw)
    names = [attachment.filename for attachment in view.attachments]
    assert names[0] == "café.txt" and names[-1] == "=?utf-8?q?caf=C3=A9?=.txt"
    assert HEADERS_TOO_LARGE in view.defects


def test_parts_beyond_the_cap_are_not_visited() -> None:
    view = parse_message(many_parts(MAX_PARTS + 500))
    assert TOO_MANY_PARTS in view.defects
    assert len(view.content_types) == MAX_PARTS
    assert "part 0" in view.texts[0]


def test_parts_at_the_cap_are_not_a_defect() -> None:
    view = parse_message(many_parts(MAX_PARTS - 1))  # the message itself is the MAX_PARTS-th entity
    assert view.defects == ()
    assert len(view.content_types) == MAX_PARTS


def test_decoded_bytes_beyond_the_budget_are_counted_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mime_walker, "MAX_DECODED_BYTES", 100)
    raw = (b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\n" + b"a" * 80
           + b"\r\n--b\r\n\r\n" + b"z" * 80 + b"\r\n--b--\r\n")
    view = parse_message(raw)
    assert DECODE_LIMIT in view.defects
    assert view.texts == ("a" * 80,)


LINES = [b"Subject: x", b" folded", b"\tmore", b"From a@b", b"X-A:", b"no colon", b"", b":bad", b"a" * 20]
ENDS = [b"\r\n", b"\n", b"\r"]


@settings(max_examples=400)
@given(st.lists(st.tuples(st.sampled_from(LINES), st.sampled_from(ENDS)), max_size=30), st.integers(1, 40))
def test_header_block_scanned_in_slices_ends_where_one_scan_ends(lines: list[tuple[bytes, bytes]], size: int) -> None:
    data = b"".join(line + end for line, end in lines)
    whole = _HEADER_BLOCK.match(data)
    assert _header_block_end(data, 0, len(data), slice_size=size) == (whole.end() if whole else 0)
