"""Large text bodies kept as UTF-8 bytes (issue 7 item 10): the view holds no second copy of a
25 MB text, and content rules give the same answers as on the decoded str."""

from __future__ import annotations

import quopri
import random
from unittest.mock import patch

import pytest

import engine.graph.content as content_module
import engine.mime.view.html_text as html_text_module
from engine.graph.content import ContentIndex
from engine.mime.view import (
    BAD_CHARSET,
    UTF8_TEXT_SIZE,
    DeferredText,
    _html_text,
    decoded_text,
    load_texts,
    parse_message,
    text_pieces,
    text_str,
)
from engine.policy import models as m
from tests.support.messages import message

BIG = UTF8_TEXT_SIZE + 1000


def text_message(body: bytes, ctype: str = "text/plain; charset=utf-8", cte: str = "8bit") -> bytes:
    """A message whose only part is the text `body`, bytes as given."""
    return message(body, raw=True, sender="a@example.com", to=None, subject="big", date=None, message_id=None,
                   content_type=ctype, transfer_encoding=cte)


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
    raw = text_message(body)
    view = parse_message(raw)
    (text,) = view.texts
    assert isinstance(text, memoryview)
    assert text.obj is raw  # a view into the message, not a copy
    assert bytes(text) == body
    assert text_str(text) == body.decode()
    assert not view.defects


def test_other_large_bodies_are_decoded_to_utf8_bytes_like_the_str_path() -> None:
    assert parse_message(text_message(b"small \xc3\xbc")).texts == ("small ü",)
    latin = "caf\u00e9 ".encode("latin-1") * (BIG // 5)
    view = parse_message(text_message(latin, "text/plain; charset=iso-8859-1"))
    assert bytes(view.texts[0]) == latin.decode("latin-1").encode() and not view.defects
    broken = b"x" * BIG + b"\xff" + b"y" * 10
    view = parse_message(text_message(broken))
    assert bytes(view.texts[0]) == broken.decode("utf-8", "replace").encode()
    assert BAD_CHARSET in view.defects
    html = b"<p>" + b"y &amp; " * BIG + b"</p>"
    html_view = parse_message(text_message(html, "text/html; charset=utf-8"))
    assert bytes(html_view.texts[0]) == b"\n" + b"y & " * BIG + b"\n"
    body = _body()
    view = parse_message(text_message(quopri.encodestring(body), cte="quoted-printable"))
    assert isinstance(view.texts[0], memoryview) and bytes(view.texts[0]) == body


def test_deferred_texts_are_decoded_later_from_a_fresh_read() -> None:
    body = _body()
    raw = text_message(quopri.encodestring(body), cte="quoted-printable")
    view = parse_message(raw, defer_texts=True)
    assert view.texts == () and len(view.deferred) == 1
    reads: list[tuple[int, int]] = []

    def read(start: int, end: int) -> list[bytes]:
        reads.append((start, end))
        return [raw[pos : min(pos + 1000, end)] for pos in range(start, end, 1000)]

    loaded = load_texts(view, read)
    assert loaded.deferred == () and [bytes(t) for t in loaded.texts] == [body]
    assert reads == [(view.deferred[0].start, len(raw))]
    assert load_texts(loaded, read) is loaded


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 64])
def test_text_pieces_cut_where_lowercasing_piecewise_is_exact(size: int) -> None:
    texts = [
        "ΟΔΟΣ ΟΔΟΣ\nİİ ÜBER-STRASSE Σ ΣΑΣ\r\nabcdefghijklmnopqrstuvwxyz" * 3,
        "ΔΣabcΣdefΣ'ΣΣ.Σx:ΣyΣ^Σ`ΣzzΣ1Σ-Σ" * 5,  # no spaces: cut between ASCII characters
        "aΣ'" * 20 + "b" * 30 + "'Σ" * 10,
        "ΣΣΣΣΣΣΣΣ" * 4 + "ab" + "ΣΣΣ" * 3,
    ]
    for text in texts:
        data = memoryview(text.encode())
        pieces = list(text_pieces(data, size))
        assert b"".join(pieces) == text.encode()
        assert "".join(p.decode().lower() for p in pieces) == text.lower(), (text, size)
    assert [len(p) for p in text_pieces(memoryview(b"x" * 100), 10)] == [9] * 10 + [10]  # no space: still cut


def _index(*keywords: str, regex: str | None = None) -> ContentIndex:
    return ContentIndex([m.BodyCondition(body=m.TextMatch(contains=[k], regex=None)) for k in keywords]
                        + ([m.BodyCondition(body=m.TextMatch(regex=regex))] if regex else []))


@pytest.mark.parametrize("piece", [1, 2, 3, 4, 6, 9, 17])
def test_keywords_across_piece_cuts_and_case_mappings_are_found(piece: int) -> None:
    keywords = ["gift card", "οδος", "i̇i̇", "über-strasse", "not there", "σας", "xyz abc"]
    text = "ΟΔΟΣ gift   GIFT CARD\nİİ ÜBER-STRASSE ΣΑΣ xyz abc"
    index = _index(*keywords, regex=r"(?i)gift\s+card")
    expected = index.matching_rules(parse_message(text_message(text.encode())))
    assert expected == [0, 1, 2, 3, 5, 6, 7]
    with patch.object(content_module, "_TEXT_PIECE", piece):
        view = parse_message(text_message(text.encode() + b" " * BIG))
        assert isinstance(view.texts[0], memoryview)
        assert index.matching_rules(view) == expected


def test_a_large_body_matches_regexes_and_keywords_like_its_str() -> None:
    body = _body(3 * UTF8_TEXT_SIZE, seed=7) + "tail ΤΕΛΟΣ".encode()
    index = _index("istanbul", "i̇stanbul", "τελος", "absent", regex=r"(?i)straße\s+ΟΔΟΣ")
    view = parse_message(text_message(body))
    assert isinstance(view.texts[0], memoryview)
    as_str = parse_message(text_message(body[:100]))  # (the same index on a str view of the same text)
    as_str = type(as_str)(**{**{f: getattr(as_str, f) for f in as_str.__slots__}, "texts": (body.decode(),)})
    assert index.matching_rules(view) == index.matching_rules(as_str)
    assert 2 in index.matching_rules(view) and 3 not in index.matching_rules(view)


def _in_pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


@pytest.mark.parametrize("charset", ["utf-8", "shift_jis", "gb18030", "euc-jp", "cp1252", "koi8-r", "latin-1", None])
@pytest.mark.parametrize("seed", range(12))
def test_charset_decoding_in_pieces_is_the_whole_decoding(charset: str | None, seed: int) -> None:
    rnd = random.Random(seed)
    sample = "aé€😀日本語 \r\n+-".encode(charset or "utf-8", "replace")
    atoms = [sample[i : i + rnd.randint(1, 4)] for i in range(0, len(sample), 2)]
    atoms += [b"\xff", b"\x80", b"\xe2\x82", b"+"]
    data = b"".join(rnd.choice(atoms) for _ in range(rnd.randint(0, 60)))
    codec = charset or "utf-8"
    try:
        expected, bad = data.decode(codec), False
    except UnicodeDecodeError:
        expected, bad = data.decode(codec, "replace"), True
    expected = "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in expected)  # as RE2 sees it
    for size in (1, 2, 3, 5, 64):
        defects: set[str] = set()
        text = decoded_text(_in_pieces(data, size), DeferredText(0, len(data), None, charset, False), defects)
        assert bytes(text).decode() == expected, (data, size)
        assert (BAD_CHARSET in defects) == bad


HTML = (
    "<html><head><style>\np { color: red }\n</style><title>T</title></head>\n<body>\n"
    "<p>one &amp; two</p><!-- a\ncomment --><script type=x>\nif (a < b) {}\n</script>\n"
    "<a\nhref='x'>link\ntext</a> &lt;not a tag&gt; 3 < 4\n<br\n/>caf&eacute;<div\n>x</div\n>\n"
    "<!-- unclosed at the end? no -->\nend\n"
)


MINIFIED = (  # no line ends: cut after ">", never inside a character reference the next part completes
    "<p>a &amp; b</p><i>&#123;</i>&notit;<b>x</b>&#x1F600;<br>&am<b>p;</b>&#00000000000000000065;"
    "<span title='a>b'>t&lt;</span>&#x<i>41;</i><!-- c > d --><p>&" + "n" * 31 + "<b>;</b>end&amp"
)


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 8, 13, 40, 1000])
def test_html_visible_text_in_pieces_is_the_whole_documents(piece: int) -> None:
    for html in (HTML, HTML * 3, HTML + "<!-- open to the end\n x", HTML + "<script>\nx", HTML + "<b\nclass=y",
                 HTML + "<a <br> x\n more</a>\n" + HTML, HTML.replace("\n", ""), MINIFIED, MINIFIED * 4):
        expected = _html_text(html).encode()
        with patch.object(html_text_module, "_PIECE", piece):
            text = decoded_text(_in_pieces(html.encode(), piece), DeferredText(0, 0, None, "utf-8", True), set())
        assert bytes(text) == expected, (html, piece)


def test_stateful_charsets_are_decoded_whole() -> None:
    """UTF-16, ISO-2022, UTF-7: their decoders' state does not survive a switch to replacement."""
    for charset in ("utf-16", "iso-2022-jp", "utf-7"):
        body = ("text \u65e5\u672c " * (BIG // 8)).encode(charset)
        view = parse_message(text_message(body, f"text/plain; charset={charset}", "binary"), defer_texts=True)
        assert view.deferred == () and view.texts == (body.decode(charset),), charset
