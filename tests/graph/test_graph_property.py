"""Property tests: the compiled matchers agree exactly with the naive evaluators in naive_eval.py.

Policies and messages are drawn from small alphabets (header names, words, regexes, file names)
so that leaves actually match; messages are sometimes nested (message/rfc822), sometimes broken
(missing boundary, bad base64, unknown or UTF-7 charsets that smuggle lone surrogates).
"""

from __future__ import annotations

import base64
import ipaddress
import quopri
import urllib.parse
from collections import Counter
from unittest.mock import patch

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import engine.graph.content as content_module
import engine.mime.view.html_text as html_text_module
import engine.mime.view.large_text as large_text_module
import engine.mime.view.walker as walker_module
from engine.graph.content import ContentIndex
from engine.graph.lists import ListEntry, ListIndex, parse_ip
from engine.mime.view import load_texts, matchable, parse_message
from engine.policy import models as m
from engine.policy.models import ListAction
from tests.graph import naive_eval

# ---------------------------------------------------------------- alphabets

HEADER_NAMES = ["Subject", "subject", "FROM", "From", "X-Mailer", "X-Tag", "Reply-To", "X-Absent"]
MESSAGE_HEADERS = ["Subject", "From", "X-Mailer", "X-Tag", "Reply-To", "X-TAG", "subject"]
WORDS = [
    "invoice",
    "Invoice",
    "overdue",
    "payment",
    "urgent",
    "gift card",
    "bitcoin",
    "hello",
    "ÜBER",
    "über",
    "straße",
    "STRASSE",
    "résumé",
    "Re:",
    "wire transfer",
    "x",
    "a",
    "",
    "123",
    "\ufffd",
    "<b>bold</b>",
    "&amp;",
    "paypa1",
    "ﬁle",
    "105",
    "1.5",
    "c++ $5",
]
KEYWORDS = [
    "invoice",
    "INVOICE",
    "gift card",
    "über",
    "straße",
    "résumé",
    "re:",
    "x",
    "a",
    "123",
    "\ufffd",
    "bold",
    "&",
    "wire",
    "ﬁle",
    "file",
    "e card",
    "1.5",
    "c++",
    "$5",
]
REGEXES = [
    "(?i)invoice",
    "^Re:",
    "pay(ment)?$",
    r"\bgift\b",
    "urgent|asap",
    "[0-9]{3}",
    "(?i)straße",
    "é",
    "a*",
    "^$",
    ".",
    r"\d+\s+\w+",
    "(?s)invoice.*payment",
    "(?m)^hello$",
    "x{0}",
    "(?i)über",
    r"\x{fffd}",
    "^",
    "$",
    r"(?i)\b(overdue|unpaid)\b.*\b(invoice|payment)\b",
    "[[:upper:]]{3}",
    r"\pL+card",
    "(?U)a+",
    "bold</b>",
    r"^[a-z]+@[a-z.]+>?$",
    "(?i)ﬁle",
]
FILENAME_REGEXES = [r"(?i)\.exe$", "invoice", r"^[a-z]+\.pdf$", r"\s", "é", r"(?i)\.(pdf|docx?)\s*\.(exe|js)$", "^"]
EXTENSIONS = ["exe", "pdf", "zip", "js", "html", "txt", "eml", "jpg"]
CONTENT_TYPES = [
    "application/pdf",
    "application/*",
    "text/html",
    "text/plain",
    "image/*",
    "message/rfc822",
    "application/octet-stream",
    "text/*",
    "multipart/*",
    "image/png",
]
FILENAMES = [
    "invoice.pdf.exe",
    "report.PDF",
    "photo.jpg",
    "résumé.zip",
    "script.js",
    "page.html",
    "a b.txt",
    "noext",
    "trail.exe. ",
    "invoice.pdf .js",
    "x.tar.gz",
    "dir/evil.exe",
    ".hidden",
]
CHARSETS = ["utf-8", "iso-8859-1", "us-ascii", "utf-7", "x-bogus", "windows-1252", "UTF-8"]

# ---------------------------------------------------------------- policies


def _text_match(draw: st.DrawFn) -> tuple[str | None, list[str]]:
    regex = draw(st.none() | st.sampled_from(REGEXES))
    contains = draw(st.lists(st.sampled_from(KEYWORDS), min_size=0 if regex is not None else 1, max_size=3))
    return regex, contains


@st.composite
def leaves(draw: st.DrawFn) -> m.Condition:
    kind = draw(st.sampled_from(["header", "header", "body", "body", "attachment", "mime"]))
    if kind == "header":
        name = draw(st.sampled_from(HEADER_NAMES))
        regex, contains = _text_match(draw)
        return m.HeaderCondition(header=m.HeaderMatch(name=name, regex=regex, contains=contains))
    if kind == "body":
        regex, contains = _text_match(draw)
        return m.BodyCondition(body=m.TextMatch(regex=regex, contains=contains))
    if kind == "mime":
        return m.MimeCondition(mime=m.MimeMatch(malformed=draw(st.booleans())))
    # One criterion most of the time (so that attachment leaves hold often), sometimes several.
    criteria = draw(st.sampled_from(["extension", "filename", "content_type", "all", "two"]))
    extension: list[str] = []
    filename = None
    content_type: list[str] = []
    if criteria in ("extension", "all", "two"):
        extension = draw(st.lists(st.sampled_from(EXTENSIONS), min_size=1, max_size=4))
    if criteria in ("filename", "all"):
        filename = draw(st.sampled_from(FILENAME_REGEXES))
    if criteria in ("content_type", "all", "two"):
        content_type = draw(st.lists(st.sampled_from(CONTENT_TYPES), min_size=1, max_size=3))
    nested = draw(st.integers(0, 3)) == 0
    return m.AttachmentCondition(
        attachment=m.AttachmentMatch(extension=extension, filename=filename, content_type=content_type, nested=nested)
    )


def _combine(children: st.SearchStrategy[m.Condition]) -> st.SearchStrategy[m.Condition]:
    return st.one_of(
        st.lists(children, min_size=1, max_size=4).map(lambda items: m.AnyCondition(any=items)),
        st.lists(children, min_size=1, max_size=4).map(lambda items: m.AllCondition(all=items)),
        children.map(lambda child: m.NotCondition.model_validate({"not": child})),
    )


conditions = st.recursive(leaves(), _combine, max_leaves=8)

# ---------------------------------------------------------------- messages


def _words(draw: st.DrawFn, max_size: int = 8) -> str:
    parts = draw(st.lists(st.sampled_from(WORDS), max_size=max_size))
    separators = draw(st.lists(st.sampled_from([" ", " ", "\n", "  ", ""]), min_size=len(parts), max_size=len(parts)))
    return "".join(p + s for p, s in zip(parts, separators, strict=True))


def _header_value(draw: st.DrawFn) -> str:
    text = _words(draw, 5).replace("\n", " ")
    style = draw(st.sampled_from(["raw", "raw", "b", "q", "utf7", "folded"]))
    if style == "b":
        return f"=?utf-8?B?{base64.b64encode(text.encode()).decode()}?="
    if style == "q":
        return f"=?iso-8859-1?Q?{quopri.encodestring(text.encode('latin-1', 'replace'), header=True).decode()}?="
    if style == "utf7":
        return f"{text} =?utf-7?Q?+2D0-?= invoice"
    if style == "folded":
        return text.replace(" ", "\n  ", 1)
    return text


def _encode_body(draw: st.DrawFn, text: str, ctype: str) -> tuple[list[str], bytes]:
    charset = draw(st.sampled_from(CHARSETS))
    if charset == "utf-7" and draw(st.booleans()):
        text += " +2D0- "  # a lone surrogate after decoding
    try:
        data = text.encode(charset if charset != "x-bogus" else "utf-8")
    except (UnicodeEncodeError, LookupError):
        data = text.encode("utf-8")
    cte = draw(st.sampled_from(["7bit", "8bit", "base64", "quoted-printable", "broken-base64"]))
    if cte == "base64":
        data = base64.encodebytes(data)
    elif cte == "broken-base64":
        data = base64.encodebytes(data)[:-3] + b"!*\n"
        cte = "base64"
    elif cte == "quoted-printable":
        data = quopri.encodestring(data)
    headers = [f"Content-Type: {ctype}; charset={charset}", f"Content-Transfer-Encoding: {cte}"]
    return headers, data


@st.composite
def _attachment_parts(draw: st.DrawFn) -> bytes:
    """A named (or at least `attachment`-disposition) binary part."""
    ctype = draw(
        st.sampled_from(
            [
                "application/pdf",
                "application/octet-stream",
                "image/png",
                "text/html",
                "application/x-msdownload",
                "application/zip",
            ]
        )
    )
    headers = [f"Content-Type: {ctype}"]
    name_style = draw(st.sampled_from(["disposition", "ctype-name", "rfc2231", "encoded-word", "utf7", "none"]))
    filename = draw(st.sampled_from(FILENAMES))
    if name_style == "disposition":
        headers.append(f'Content-Disposition: attachment; filename="{filename}"')
    elif name_style == "ctype-name":
        headers[0] += f'; name="{filename}"'
    elif name_style == "rfc2231":
        quoted = urllib.parse.quote(filename, safe="")
        headers.append(f"Content-Disposition: attachment; filename*=utf-8''{quoted}")
    elif name_style == "encoded-word":
        encoded = base64.b64encode(filename.encode()).decode()
        headers.append(f'Content-Disposition: attachment; filename="=?utf-8?B?{encoded}?="')
    elif name_style == "utf7":  # decodes to a lone surrogate
        headers.append(f'Content-Disposition: attachment; filename="=?utf-7?Q?+2D0-?={filename}"')
    else:
        headers.append("Content-Disposition: attachment")
    headers.append("Content-Transfer-Encoding: base64")
    return ("\n".join(headers) + "\n\n").encode() + base64.encodebytes(b"MZ\x90\x00payload" * 3)


@st.composite
def parts(draw: st.DrawFn, depth: int = 0) -> bytes:
    """One MIME entity (headers + body) as bytes."""
    kinds = ["plain", "plain", "html", "attachment", "attachment", "multipart"]
    if depth < 2:
        kinds += ["rfc822", "rfc822", "forward", "multipart"]
    kind = draw(st.sampled_from(kinds if depth < 3 else ["plain", "html", "attachment"]))
    if kind in ("plain", "html"):
        text = _words(draw)
        if kind == "html":
            text = f"<html><body><p>{text}</p><!-- invoice --><script>payment()</script></body></html>"
        headers, data = _encode_body(draw, text, f"text/{kind}")
        if draw(st.integers(0, 4)) == 0:
            headers.append(f'Content-Disposition: attachment; filename="{draw(st.sampled_from(FILENAMES))}"')
        return ("\n".join(headers) + "\n\n").encode() + data
    if kind == "attachment":
        return draw(_attachment_parts())
    if kind == "forward":  # a forwarded message carrying an attachment: what `nested` is for
        inner_parts = [draw(parts(depth + 2)), draw(_attachment_parts())]
        inner = b"Subject: fwd\nMIME-Version: 1.0\n" + _multipart(draw, "mixed", inner_parts, depth + 1)
        return b"Content-Type: message/rfc822\n\n" + inner
    if kind == "rfc822":
        inner = draw(messages(depth + 1))
        headers = ["Content-Type: message/rfc822"]
        if draw(st.booleans()):
            headers.append(f'Content-Disposition: attachment; filename="{draw(st.sampled_from(FILENAMES))}"')
        return ("\n".join(headers) + "\n\n").encode() + inner
    subtype = draw(st.sampled_from(["mixed", "alternative", "related"]))
    children = draw(st.lists(parts(depth + 1), min_size=1, max_size=3))
    return _multipart(draw, subtype, children, depth)


def _multipart(draw: st.DrawFn, subtype: str, children: list[bytes], depth: int) -> bytes:
    boundary = f"=_b{depth}_{draw(st.integers(0, 99))}"
    breakage = draw(st.sampled_from(["none", "none", "none", "no-boundary-param", "truncated", "wrong-boundary"]))
    declared = boundary if breakage != "wrong-boundary" else boundary + "x"
    ctype = f'Content-Type: multipart/{subtype}; boundary="{declared}"'
    if breakage == "no-boundary-param":
        ctype = f"Content-Type: multipart/{subtype}"
    body = b"preamble\n"
    for child in children:
        body += f"\n--{boundary}\n".encode() + child
    if breakage != "truncated":
        body += f"\n--{boundary}--\n".encode()
    return ctype.encode() + b"\n\n" + body


@st.composite
def messages(draw: st.DrawFn, depth: int = 0) -> bytes:
    headers = []
    for _ in range(draw(st.integers(0, 5))):
        headers.append(f"{draw(st.sampled_from(MESSAGE_HEADERS))}: {_header_value(draw)}")
    if draw(st.booleans()):
        headers.append(f"From: {draw(st.sampled_from(['Bob <bob@paypa1.example>', 'alice@acme.example', 'x']))}")
    headers.append("MIME-Version: 1.0")
    body = draw(parts(depth))
    return ("\n".join(headers) + "\n").encode() + body


# ---------------------------------------------------------------- the properties


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    rules=st.lists(conditions, min_size=1, max_size=12),
    raws=st.lists(messages(), min_size=1, max_size=3),
)
def test_content_index_matches_naive_evaluation(rules: list[m.Condition], raws: list[bytes]) -> None:
    index = ContentIndex(rules)
    assert index.rule_count == len(rules)
    for raw in raws:
        view = parse_message(raw)
        assert index.matching_rules(view) == naive_eval.matching_rules(rules, view), raw


# ---------------------------------------------------------------- lists

LOCALS = ["alice", "bob", "*"]
DOMAINS = [
    "example.com",
    "mail.example.com",
    "a.mail.example.com",
    "example.org",
    "com",
    "bad.example",
    "sub.bad.example",
    "xexample.com",
]


@st.composite
def list_entries(draw: st.DrawFn) -> list[ListEntry]:
    entries = []
    for index in range(draw(st.integers(0, 25))):
        field = draw(st.sampled_from(["senders", "domains", "networks"]))
        if field == "senders":
            domain = draw(st.sampled_from(DOMAINS))
            local = draw(st.sampled_from(LOCALS))
            if local == "*" and draw(st.booleans()):
                domain = "*." + domain
            value = f"{local}@{domain}"
        elif field == "domains":
            value = draw(st.sampled_from(DOMAINS))
        else:
            value = str(draw(networks()))
        name = draw(st.sampled_from(["l1", "l2", "l3"]))
        action = draw(st.sampled_from(list(ListAction)))
        entries.append(ListEntry(name, action, field, value, f"lists/{name}.yaml:{index + 1}"))
    return entries


@st.composite
def networks(draw: st.DrawFn) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if draw(st.booleans()):
        address = ipaddress.IPv4Address(0x0A000000 + draw(st.integers(0, 0xFFFF)) * draw(st.sampled_from([1, 256])))
        return ipaddress.ip_network(f"{address}/{draw(st.sampled_from([8, 16, 20, 24, 28, 31, 32]))}", strict=False)
    address6 = ipaddress.IPv6Address(
        (0x20010DB8 << 96) + draw(st.integers(0, 0xFFFF)) * draw(st.sampled_from([1, 1 << 64, 1 << 80]))
    )
    return ipaddress.ip_network(f"{address6}/{draw(st.sampled_from([32, 48, 64, 96, 127, 128]))}", strict=False)


@st.composite
def client_ips(draw: st.DrawFn) -> str:
    style = draw(st.sampled_from(["v4", "v4", "v6", "mapped", "garbage"]))
    if style == "garbage":
        return draw(st.sampled_from(["", "unknown", "10.0.0.256", "[10.0.0.1]"]))
    if style == "v6":
        return str(
            ipaddress.IPv6Address(
                (0x20010DB8 << 96) + draw(st.integers(0, 0xFFFF)) * draw(st.sampled_from([1, 1 << 64, 1 << 80]))
            )
        )
    v4 = ipaddress.IPv4Address(0x0A000000 + draw(st.integers(0, 0xFFFF)) * draw(st.sampled_from([1, 256])))
    return f"::ffff:{v4}" if style == "mapped" else str(v4)


addresses = st.builds(
    lambda local, domain, dot, upper: f"{local}@{domain}{dot}".upper() if upper else f"{local}@{domain}{dot}",
    st.sampled_from(["alice", "bob", "carol", ""]),
    st.sampled_from([*DOMAINS, "EXAMPLE.COM", "other.net"]),
    st.sampled_from(["", "", "."]),
    st.booleans(),
) | st.sampled_from(["", "no-at-sign", "<>"])


def _key(entries: list[ListEntry]) -> Counter[ListEntry]:
    return Counter(entries)


@settings(max_examples=200, deadline=None)
@given(entries=list_entries(), queries=st.lists(st.tuples(addresses, client_ips()), min_size=1, max_size=5))
def test_list_index_matches_naive_lookup(entries: list[ListEntry], queries: list[tuple[str, str]]) -> None:
    index = ListIndex(entries)
    for address, client_ip in queries:
        assert _key(index.match_address(address)) == _key(naive_eval.address_entries(entries, address)), address
        found = index.match_ip(client_ip)
        assert _key(found) == _key(naive_eval.ip_entries(entries, client_ip)), client_ip
        prefixes = [ipaddress.ip_network(entry.value).prefixlen for entry in found]
        assert prefixes == sorted(prefixes, reverse=True), "the most specific network comes first"


@settings(max_examples=300, deadline=None)
@given(
    text=st.ip_addresses().map(str)
    | st.ip_addresses(v=6).map(lambda address: address.exploded.upper())
    | st.text(alphabet="0123456789abcdefABCDEF:.%/ x\x00", max_size=45)
)
def test_parse_ip_agrees_with_ipaddress(text: str) -> None:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        assert parse_ip(text) is None
    else:
        assert parse_ip(text) == (address.version, int(address))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    rules=st.lists(conditions, min_size=1, max_size=12),
    raw=messages(),
    piece=st.integers(1, 12),
)
def test_large_texts_kept_as_utf8_bytes_match_like_str(rules: list[m.Condition], raw: bytes, piece: int) -> None:
    """Issue 7 item 10: a large text body is kept as its UTF-8 bytes and its keywords are searched
    piece by piece. With every text "large" and tiny pieces (keywords cut everywhere), the content
    index gives the naive answer on the str view."""
    index = ContentIndex(rules)
    expected = naive_eval.matching_rules(rules, parse_message(raw))
    with patch.object(walker_module, "UTF8_TEXT_SIZE", -1), patch.object(content_module, "_TEXT_PIECE", piece):
        as_bytes = parse_message(raw)
        assert index.matching_rules(as_bytes) == expected, raw


def _utf8(text: str | memoryview) -> bytes:
    return matchable(text).encode() if isinstance(text, str) else bytes(text)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(raw=messages(), piece=st.integers(1, 40))
def test_texts_decoded_in_pieces_are_the_whole_body_decoding(raw: bytes, piece: int) -> None:
    """Issue 7 item 10: every text body decoded in pieces (transfer encoding, charset, HTML; with
    tiny pieces) or deferred and loaded from a fresh read is the text the whole-body decode gives,
    with the same defects and attachment sizes."""
    whole = parse_message(raw)
    with (
        patch.object(walker_module, "UTF8_TEXT_SIZE", -1),
        patch.object(walker_module, "_PIECE", piece),  # _PIECE is read in these three modules
        patch.object(large_text_module, "_PIECE", piece),
        patch.object(html_text_module, "_PIECE", piece),
    ):
        pieces = parse_message(raw)
        deferred = parse_message(raw, defer_texts=True)
        loaded = load_texts(deferred, lambda a, b: [raw[i : min(i + piece, b)] for i in range(a, b, piece)])
    expected = [_utf8(text) for text in whole.texts]
    assert [_utf8(text) for text in pieces.texts] == expected, raw
    assert (pieces.defects, pieces.attachments) == (whole.defects, whole.attachments), raw
    assert sorted(_utf8(text) for text in loaded.texts) == sorted(expected), raw
    assert (loaded.defects, loaded.attachments) == (whole.defects, whole.attachments), raw
