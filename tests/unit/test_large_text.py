"""Large text bodies kept as UTF-8 bytes (issue 7 item 10): the view holds no second copy of a
25 MB text, and content rules give the same answers as on the decoded str."""

from __future__ import annotations

import binascii
import quopri
import random
from unittest.mock import patch

import pytest

import engine.graph.content as content_module
from engine.graph.content import ContentIndex
from engine.mime.view import BAD_CHARSET, UTF8_TEXT_SIZE, _decode_qp, parse_message, text_pieces, text_str
from engine.policy import models as m

BIG = UTF8_TEXT_SIZE + 1000


def _message(body: bytes, ctype: str = "text/plain; charset=utf-8", cte: str = "8bit") -> bytes:
    return (f"From: a@example.com\r\nSubject: big\r\nContent-Type: {ctype}\r\n"
            f"Content-Transfer-Encoding: {cte}\r\n\r\n").encode() + body


def _body(size: int = BIG, seed: int = 1) -> bytes:
    rnd = random.Random(seed)
    words = ["lorem", "ipsum", "Über", "straße", "ΟΔΟΣ", "İstanbul", "invoice", "x"]
    out: list[str] = []
    length = 0
    while length < size:
        word = rnd.choice(words) + rnd.choice([" ", " ", "\r\n"])
        out.append(word)
        length += len(word.encode())
    return "".join(out).encode()


def test_a_large_utf8_body_is_kept_as_its_bytes_in_the_raw_message() -> None:
    body = _body()
    raw = _message(body)
    view = parse_message(raw)
    (text,) = view.texts
    assert isinstance(text, memoryview)
    assert text.obj is raw  # a view into the message, not a copy
    assert bytes(text) == body
    assert text_str(text) == body.decode()
    assert not view.defects


def test_small_and_non_utf8_bodies_are_str_as_before() -> None:
    assert parse_message(_message(b"small \xc3\xbc")).texts == ("small ü",)
    latin = "caf\u00e9 ".encode("latin-1") * (BIG // 5)
    view = parse_message(_message(latin, "text/plain; charset=iso-8859-1"))
    assert view.texts == (latin.decode("latin-1"),)
    broken = b"x" * BIG + b"\xff"
    view = parse_message(_message(broken))
    assert isinstance(view.texts[0], str) and view.texts[0].endswith("\ufffd")
    assert BAD_CHARSET in view.defects
    html = b"<p>" + b"y " * BIG + b"</p>"
    assert isinstance(parse_message(_message(html, "text/html; charset=utf-8")).texts[0], str)


def test_a_large_quoted_printable_body_is_kept_as_its_decoded_bytes() -> None:
    body = _body()
    view = parse_message(_message(quopri.encodestring(body), cte="quoted-printable"))
    (text,) = view.texts
    assert isinstance(text, memoryview) and bytes(text) == body


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64])
def test_text_pieces_cut_where_lowercasing_piecewise_is_exact(size: int) -> None:
    text = "ΟΔΟΣ ΟΔΟΣ\nİİ ÜBER-STRASSE Σ ΣΑΣ\r\nabcdefghijklmnopqrstuvwxyz" * 3
    data = memoryview(text.encode())
    pieces = list(text_pieces(data, size))
    assert b"".join(pieces) == text.encode()
    assert all(p[-1:] in (b" ", b"\n") for p in pieces[:-1])
    assert "".join(p.decode().lower() for p in pieces) == text.lower()


def _index(*keywords: str, regex: str | None = None) -> ContentIndex:
    return ContentIndex([m.BodyCondition(body=m.TextMatch(contains=[k], regex=None)) for k in keywords]
                        + ([m.BodyCondition(body=m.TextMatch(regex=regex))] if regex else []))


@pytest.mark.parametrize("piece", [1, 2, 3, 4, 6, 9, 17])
def test_keywords_across_piece_cuts_and_case_mappings_are_found(piece: int) -> None:
    keywords = ["gift card", "οδος", "i̇i̇", "über-strasse", "not there", "σας", "xyz abc"]
    text = "ΟΔΟΣ gift   GIFT CARD\nİİ ÜBER-STRASSE ΣΑΣ xyz abc"
    index = _index(*keywords, regex=r"(?i)gift\s+card")
    expected = index.matching_rules(parse_message(_message(text.encode())))
    assert expected == [0, 1, 2, 3, 5, 6, 7]
    with patch.object(content_module, "_TEXT_PIECE", piece):
        view = parse_message(_message(text.encode() + b" " * BIG))
        assert isinstance(view.texts[0], memoryview)
        assert index.matching_rules(view) == expected


def test_a_large_body_matches_regexes_and_keywords_like_its_str() -> None:
    body = _body(3 * UTF8_TEXT_SIZE, seed=7) + "tail ΤΕΛΟΣ".encode()
    index = _index("istanbul", "i̇stanbul", "τελος", "absent", regex=r"(?i)straße\s+ΟΔΟΣ")
    view = parse_message(_message(body))
    assert isinstance(view.texts[0], memoryview)
    as_str = parse_message(_message(body[:100]))  # (the same index on a str view of the same text)
    as_str = type(as_str)(**{**{f: getattr(as_str, f) for f in as_str.__slots__}, "texts": (body.decode(),)})
    assert index.matching_rules(view) == index.matching_rules(as_str)
    assert 2 in index.matching_rules(view) and 3 not in index.matching_rules(view)


@pytest.mark.parametrize("seed", range(40))
def test_quoted_printable_in_pieces_decodes_like_binascii(seed: int) -> None:
    rnd = random.Random(seed)
    atoms = [b"=", b"=\r\n", b"=\n", b"=3D", b"=C3=BC", b"=c3", b"\r\n", b"\n", b"\r", b" ", b"\t", b"abc", b"=4", b"_"]
    data = b"".join(rnd.choice(atoms) for _ in range(rnd.randint(0, 300)))
    for piece in (1, 2, 3, 7, 50):
        assert bytes(_decode_qp(data, piece)) == binascii.a2b_qp(data), (data, piece)
