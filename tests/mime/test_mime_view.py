"""Unit tests for engine.mime.view: decoding, attachment discovery, defects and robustness."""

import base64
import re
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.mime.view import MAX_NESTING, MessageView, header_text, parse_message


def mime(text: str, crlf: bool = True) -> bytes:
    """Message bytes from *text* written with newlines (leading newline dropped), CRLF by default."""
    body = text.removeprefix("\n")
    return (body.replace("\n", "\r\n") if crlf else body).encode("utf-8", "surrogateescape")


def multipart(*parts: str, boundary: str = "BOUND", closed: bool = True, subtype: str = "mixed") -> str:
    """A multipart message whose parts are *parts* (each: headers, blank line, body)."""
    inner = "".join(f"--{boundary}\n{part}\n" for part in parts)
    end = f"--{boundary}--\n" if closed else ""
    return (
        "From: a@example.com\nSubject: t\nMIME-Version: 1.0\n"
        f'Content-Type: multipart/{subtype}; boundary="{boundary}"\n\npreamble\n{inner}{end}'
    )


def wrap_rfc822(inner: str, level: int) -> str:
    """*inner* message encapsulated in *level* nested message/rfc822 attachments."""
    for i in range(level):
        inner = multipart(
            "Content-Type: Text/Plain\n\nlevel text", f"Content-Type: message/rfc822\n\n{inner}", boundary=f"L{i}"
        )
    return inner


# --- headers -----------------------------------------------------------------------------------


def test_encoded_word_subject_b_and_q_utf8_and_latin1() -> None:
    view = parse_message(
        mime(
            "Subject: =?UTF-8?B?w6l0w6k=?= =?iso-8859-1?Q?caf=E9_cr=E8me?= plain\n"
            "Comment: before =?utf-8?q?x=3Dy?= after\n\nbody\n"
        )
    )
    # Whitespace between adjacent encoded-words is dropped; around plain text it is kept.
    assert header_text(view, "subject") == ("étécafé crème plain",)
    assert header_text(view, "COMMENT") == ("before x=y after",)
    assert view.defects == ()


def test_adjacent_encoded_words_join_split_multibyte_character() -> None:
    euro = "€".encode()
    first, second = (base64.b64encode(chunk).decode() for chunk in (euro[:1], euro[1:]))
    view = parse_message(mime(f"Subject: =?utf-8?B?{first}?=\n =?utf-8?B?{second}?=!\n\nb\n"))
    assert header_text(view, "subject") == ("€!",)
    assert view.defects == ()


def test_encoded_word_language_suffix_and_unknown_charset() -> None:
    view = parse_message(mime("Subject: =?utf-8*en?Q?hi?= =?x-nope?Q?caf=C3=A9?=\n\nb\n"))
    assert header_text(view, "subject") == ("hicafé",)
    assert view.defects == ("bad-charset",)


def test_broken_base64_encoded_word_is_kept_verbatim() -> None:
    view = parse_message(mime("Subject: a =?utf-8?B?QUJDD?= b\n\nb\n"))
    assert header_text(view, "subject") == ("a =?utf-8?B?QUJDD?= b",)
    assert view.defects == ("bad-encoded-word",)


def test_non_ascii_inside_base64_encoded_word() -> None:
    view = parse_message("Subject: =?utf-8?B?é?= ok\n\nb\n".encode())
    assert header_text(view, "subject") == ("=?utf-8?B?é?= ok",)
    assert view.defects == ("bad-encoded-word",)


def test_headers_are_unfolded_ordered_and_read_only() -> None:
    raw = mime("Received: one\n\tcontinued\nReceived: two\nX-Long: a\n  b\n\nbody\n")
    view = parse_message(raw)
    assert view.headers["received"] == ("one\tcontinued", "two")
    assert header_text(view, "x-long") == ("a  b",)
    assert header_text(view, "missing") == ()
    with pytest.raises(TypeError):
        view.headers["x"] = ("y",)  # type: ignore[index]


def test_raw_utf8_header_is_decoded() -> None:
    view = parse_message("Subject: grüße\nFrom: Jörg <JOERG@Example.COM>\n\nb\n".encode())
    assert header_text(view, "subject") == ("grüße",)
    assert view.from_addresses == ("joerg@example.com",)


def test_raw_invalid_8bit_header_is_replaced_and_flagged() -> None:
    view = parse_message(b"Subject: caf\xe9\n\nb\n")
    assert header_text(view, "subject") == ("caf\ufffd",)
    assert view.defects == ("bad-charset",)


@pytest.mark.parametrize(
    ("from_value", "expected"),
    [
        ("Alice Martin <Alice.Martin@Example.com>", ("alice.martin@example.com",)),
        ("bob@example.net", ("bob@example.net",)),
        ('"Martin, Alice" <alice@example.com>, carol@example.org', ("alice@example.com", "carol@example.org")),
        ("undisclosed-recipients:;", ()),
    ],
)
def test_from_addresses(from_value: str, expected: tuple[str, ...]) -> None:
    assert parse_message(mime(f"From: {from_value}\n\nb\n")).from_addresses == expected


@given(
    st.text(alphabet="aZ0 _'-.<>@\"+,", max_size=30),
)
def test_from_address_fast_path_agrees_with_getaddresses(from_value: str) -> None:
    view = parse_message(f"From: {from_value}\n\nb\n".encode())
    expected = tuple(addr.lower() for _, addr in getaddresses([from_value.strip()]) if addr)
    assert view.from_addresses == expected


# --- bodies ------------------------------------------------------------------------------------


def test_plain_non_mime_message() -> None:
    view = parse_message(mime("From: Ann <ann@example.com>\nTo: b@example.com\nSubject: hello\n\nJust text.\n"))
    assert view.texts == ("Just text.\r\n",)
    assert view.content_types == ("text/plain",)
    assert view.attachments == ()
    assert view.from_addresses == ("ann@example.com",)
    assert view.defects == ()
    assert not view.malformed


def test_base64_text_body() -> None:
    encoded = base64.b64encode("Grüße aus Köln".encode()).decode()
    raw = mime(f"Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: base64\n\n{encoded}\n")
    view = parse_message(raw)
    assert view.texts == ("Grüße aus Köln",)
    assert view.defects == ()


def test_quoted_printable_soft_breaks_and_hex_escapes() -> None:
    raw = mime(
        "Content-Type: text/plain; charset=iso-8859-1\nContent-Transfer-Encoding: quoted-printable\n\n"
        "caf=E9 cr=E8me br=\nul=E9e =3D ok\n"
    )
    assert parse_message(raw).texts == ("café crème brulée = ok\r\n",)


def test_charset_given_as_rfc2231_parameter() -> None:
    raw = mime("Content-Type: text/plain; charset*=us-ascii'en'iso-8859-1\n\n") + b"caf\xe9"
    assert parse_message(raw).texts == ("café",)


def test_unknown_charset_falls_back_to_utf8() -> None:
    raw = mime("Content-Type: text/plain; charset=x-unknown-charset\n\n") + "café ".encode() + b"\xff"
    view = parse_message(raw)
    assert view.texts == ("café \ufffd",)
    assert view.defects == ("bad-charset",)


@pytest.mark.parametrize("charset", ["punycode", "unicode_escape", "base64", "rot13"])
def test_non_text_or_unsafe_codecs_are_refused(charset: str) -> None:
    view = parse_message(mime(f"Content-Type: text/plain; charset={charset}\n\nabc\\u0041\n"))
    assert view.texts == ("abc\\u0041\r\n",)
    assert view.defects == ("bad-charset",)


def test_bytes_invalid_in_declared_charset() -> None:
    raw = mime("Content-Type: text/plain; charset=utf-8\n\n") + b"ok \xff"
    view = parse_message(raw)
    assert view.texts == ("ok \ufffd",)
    assert view.defects == ("bad-charset",)


def test_us_ascii_declared_but_utf8_sent() -> None:
    raw = mime('Content-Type: text/plain; charset="us-ascii"\n\n') + "naïve".encode()
    view = parse_message(raw)
    assert view.texts == ("naïve",)
    assert view.defects == ()


def test_invalid_base64_body() -> None:
    raw = mime("Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\naGVsbG8gd29ybGQ!!!\n")
    view = parse_message(raw)
    assert view.defects == ("bad-base64",)
    assert view.texts == ("hello world",)


def test_html_visible_text() -> None:
    html = (
        "<html><head><title>T</title><style>p { color: red }</style>"
        "<SCRIPT type='text/javascript'>var hidden = 1;</SCRIPT></head>"
        "<body><!-- secret comment --><p>Fish &amp; chips &lt;today&gt; &eacute;t&#xE9;</p>"
        "<p>V<b></b>iagra<br>next</p><div>a < b</div></body></html>"
    )
    view = parse_message(mime(multipart("Content-Type: text/html; charset=utf-8\n\n" + html)))
    (text,) = view.texts
    assert "Fish & chips <today> été" in text
    assert "Viagra\nnext" in text  # inline tags join, block tags separate
    assert "a < b" in text
    for hidden in ("hidden", "color", "secret", "<p>", "</", "&amp;"):
        assert hidden not in text


def test_html_unterminated_script_hides_the_rest() -> None:
    view = parse_message(mime("Content-Type: text/html\n\n<p>shown</p><script>evil(); <p>never closed"))
    assert view.texts[0].split() == ["shown"]


# --- attachments -------------------------------------------------------------------------------


def test_rfc2231_filename_with_charset_and_continuations() -> None:
    part = (
        "Content-Type: application/octet-stream\n"
        "Content-Disposition: attachment;\n"
        " filename*0*=utf-8''%E2%82%AC%20rates;\n"
        " filename*1*=%20and%20more.PDF;\n"
        ' filename*2=".exe"\n\ndata'
    )
    (attachment,) = parse_message(mime(multipart(part))).attachments
    assert attachment.filename == "€ rates and more.PDF.exe"
    assert attachment.extension == "exe"
    assert attachment.content_type == "application/octet-stream"
    assert attachment.size == 4
    assert attachment.depth == 0


def test_content_type_name_fallback_with_rfc2231_language() -> None:
    part = "Content-Type: application/pdf; name*=iso-8859-1'fr'caf%E9.pdf\n\n%PDF"
    (attachment,) = parse_message(mime(multipart(part))).attachments
    assert (attachment.filename, attachment.extension, attachment.content_type) == (
        "café.pdf",
        "pdf",
        "application/pdf",
    )


def test_rfc2047_encoded_filename() -> None:
    part = 'Content-Type: application/pdf\nContent-Disposition: attachment; filename="=?utf-8?B?w6kuUERG?="\n\nx'
    (attachment,) = parse_message(mime(multipart(part))).attachments
    assert (attachment.filename, attachment.extension) == ("é.PDF", "pdf")


def test_malformed_rfc2231_filename_falls_back_to_raw_value() -> None:
    part = (
        "Content-Type: application/octet-stream\n"
        "Content-Disposition: attachment; filename*0=ev; filename*=utf-8''il%2Eexe\n\nx"
    )
    view = parse_message(mime(multipart(part)))
    assert [(a.filename, a.extension) for a in view.attachments] == [("evil.exe", "exe")]
    assert view.defects == ("bad-header",)


@pytest.mark.parametrize(
    ("filename", "extension"),
    [
        ("a.PDF.EXE", "exe"),
        ("noext", None),
        ("Invoice.PDF.exe", "exe"),
        ("evil.exe. ", "exe"),
        ("dir.d/noext", None),
        ("C:\\dir.d\\report.Docm", "docm"),
        ("trailing.", None),
    ],
)
def test_extension(filename: str, extension: str | None) -> None:
    part = f'Content-Type: application/octet-stream\nContent-Disposition: attachment; filename="{filename}"\n\nx'
    (attachment,) = parse_message(mime(multipart(part))).attachments
    assert attachment.extension == extension


def test_attachment_rules() -> None:
    view = parse_message(
        mime(
            multipart(
                "Content-Type: text/plain\n\nbody text",
                "Content-Type: text/plain\nContent-Disposition: attachment\n\nunnamed attached text",
                "Content-Type: text/plain; name=notes.txt\n\nnamed text",
                "Content-Type: image/png\n\nPNG",
                "Content-Type: text/csv\n\na,b",
            )
        )
    )
    listed = [(a.filename, a.content_type, a.size) for a in view.attachments]
    assert listed == [(None, "text/plain", 21), ("notes.txt", "text/plain", 10), (None, "image/png", 3)]
    # Text parts are read whether or not they are attachments; other text/* types are not.
    assert view.texts == ("body text", "unnamed attached text", "named text")


def test_non_multipart_binary_message_is_one_attachment() -> None:
    raw = mime("Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\nJVBERi0=\n")
    view = parse_message(raw)
    assert view.texts == ()
    assert [(a.content_type, a.size, a.depth) for a in view.attachments] == [("application/pdf", 5, 0)]


def test_nested_rfc822_with_exe_attachment() -> None:
    inner = multipart(
        "Content-Type: text/plain\n\ninner body",
        "Content-Type: application/octet-stream\nContent-Disposition: attachment; filename=run.exe\n"
        "Content-Transfer-Encoding: base64\n\nTVqQAA==",
        boundary="INNER",
    )
    outer = multipart(
        "Content-Type: text/plain\n\nouter body",
        'Content-Type: message/rfc822\nContent-Disposition: attachment; filename="fwd.eml"\n\n' + inner,
    )
    view = parse_message(mime(outer))
    assert [(a.content_type, a.filename, a.depth, a.size) for a in view.attachments] == [
        ("message/rfc822", "fwd.eml", 0, 14),
        ("application/octet-stream", "run.exe", 1, 4),
    ]
    assert view.texts == ("outer body", "inner body")
    assert view.content_types == (
        "multipart/mixed",
        "text/plain",
        "message/rfc822",
        "multipart/mixed",
        "text/plain",
        "application/octet-stream",
    )
    assert header_text(view, "subject") == ("t",)  # top-level only
    assert len(view.headers["from"]) == 1
    assert view.defects == ()


def test_ten_levels_of_nesting() -> None:
    innermost = multipart("Content-Type: text/plain\n\ndeep text", "Content-Type: application/zip; name=d.zip\n\nPK")
    view = parse_message(mime(wrap_rfc822(innermost, 10)))
    assert view.defects == ()
    assert "deep text" in view.texts
    assert view.texts.count("level text") == 10
    (zip_attachment,) = (a for a in view.attachments if a.content_type == "application/zip")
    assert zip_attachment.depth == 10
    assert [a.depth for a in view.attachments if a.content_type == "message/rfc822"] == list(range(10))


def test_nesting_beyond_limit_is_cut_off() -> None:
    view = parse_message(mime(wrap_rfc822("Content-Type: text/plain\n\ntoo deep", 40)))
    assert view.defects == ("nesting-too-deep",)
    assert "too deep" not in view.texts
    assert max(a.depth for a in view.attachments) < 40
    assert len(view.content_types) <= 3 * MAX_NESTING


def test_absurd_nesting_is_cut_off_without_parsing_it() -> None:
    # (The stdlib feedparser used to overflow the stack here, adding parse-error; nothing below
    # MAX_NESTING is parsed now.)
    raw = b"Subject: deep\n" + b"Content-Type: message/rfc822\n\n" * 2000 + b"x"
    view = parse_message(raw)
    assert view.defects == ("nesting-too-deep",)
    assert header_text(view, "subject") == ("deep",)
    assert view.content_types == ("message/rfc822",) * (MAX_NESTING + 1)


def test_message_delivery_status_is_a_leaf() -> None:
    report = multipart(
        "Content-Type: text/plain\n\nUndeliverable",
        "Content-Type: message/delivery-status\n\nReporting-MTA: dns; mx.example.com\n\n"
        "Final-Recipient: rfc822; x@example.com\nAction: failed\n",
        subtype="report",
    )
    view = parse_message(mime(report))
    assert view.content_types == ("multipart/report", "text/plain", "message/delivery-status")
    assert view.texts == ("Undeliverable",)
    ((content_type, size),) = [(a.content_type, a.size) for a in view.attachments]
    assert content_type == "message/delivery-status"
    assert size > 40


# --- malformation ------------------------------------------------------------------------------


def test_truncated_multipart_keeps_content() -> None:
    view = parse_message(
        mime(multipart("Content-Type: text/plain\n\nfirst", "Content-Type: text/plain\n\nlast", closed=False))
    )
    assert view.defects == ("truncated-multipart",)
    assert view.malformed
    assert view.texts[0] == "first"
    assert view.texts[1].startswith("last")


def test_start_boundary_never_found() -> None:
    raw = mime('Content-Type: multipart/mixed; boundary="nope"\n\nsome text without parts\n')
    view = parse_message(raw)
    assert view.defects == ("truncated-multipart",)
    assert view.texts == ("some text without parts\r\n",)


def test_multipart_without_boundary_is_read_as_text() -> None:
    view = parse_message(mime("Content-Type: multipart/mixed\n\nhidden payload\n"))
    assert view.defects == ("missing-boundary",)
    assert view.texts == ("hidden payload\r\n",)
    assert view.attachments == ()


def test_encoded_multipart_is_flagged() -> None:
    raw = mime(
        multipart("Content-Type: text/plain\n\nx").replace("MIME-Version", "Content-Transfer-Encoding: base64\nX")
    )
    assert parse_message(raw).defects == ("bad-transfer-encoding",)


def test_stdlib_parser_failure_keeps_headers() -> None:
    raw = mime("Subject: s\nContent-Type: multipart/mixed; boundary*0=a; boundary*=b\n\n--ab\n\nx\n--ab--\n")
    view = parse_message(raw)
    assert view.defects == ("parse-error",)
    assert header_text(view, "subject") == ("s",)


def test_headers_without_body_separator() -> None:
    view = parse_message(mime("Subject: hi\nFrom: a@example.com\nthis line has no colon\nmore body\n"))
    assert view.defects == ("bad-header",)
    assert header_text(view, "subject") == ("hi",)
    assert view.texts == ("this line has no colon\r\nmore body\r\n",)


def test_first_header_line_is_continuation() -> None:
    view = parse_message(mime(" folded\nSubject: hi\n\nbody"))
    assert view.defects == ("bad-header",)
    assert header_text(view, "subject") == ("hi",)


def test_headers_only_is_well_formed() -> None:
    view = parse_message(mime("Subject: hi\nFrom: a@example.com\n"))
    assert view.defects == ()
    assert view.texts == ("",)


def test_empty_input() -> None:
    view = parse_message(b"")
    assert view.defects == ("no-headers",)
    assert view.malformed
    assert view.size == 0
    assert view.headers == {}
    assert view.from_addresses == ()
    assert view.attachments == ()


def test_body_without_headers() -> None:
    view = parse_message(b"\n\njust a body")
    assert view.defects == ("no-headers",)
    assert view.texts == ("\njust a body",)  # the first newline ends the (empty) header block


def test_size_is_raw_length() -> None:
    raw = mime(multipart("Content-Type: text/plain\n\nx"))
    assert parse_message(raw).size == len(raw)


# --- multipart splitting -----------------------------------------------------------------------


def test_delimiter_padding_and_mixed_line_ends() -> None:
    raw = (
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\npreamble\n'
        b"--b \t\r\nContent-Type: text/plain\r\n\r\none\r\n"
        b"--b\nContent-Type: text/plain\n\ntwo\r"
        b"--b\r\n\r\nthree\n\n"
        b"--b-- \t\r\nepilogue text\r\n"
    )
    view = parse_message(raw)
    assert view.texts == ("one", "two", "three\n")  # the line end before a delimiter belongs to it
    assert view.content_types == ("multipart/mixed", "text/plain", "text/plain", "text/plain")
    assert view.defects == ()


def test_only_whole_delimiter_lines_split() -> None:
    part = "Content-Type: text/plain\n\nsee --BOUND here\n--BOUNDARY2 is longer\n--BOUND-- x is text\n --BOUND\nend"
    view = parse_message(mime(multipart(part)))
    assert view.texts == ("see --BOUND here\r\n--BOUNDARY2 is longer\r\n--BOUND-- x is text\r\n --BOUND\r\nend",)
    assert view.defects == ()


def test_close_delimiter_at_end_of_input_without_line_end() -> None:
    view = parse_message(mime(multipart("Content-Type: text/plain\n\nx")).rstrip(b"\r\n"))
    assert view.texts == ("x",)
    assert view.defects == ()


def test_close_delimiter_before_any_part() -> None:
    raw = mime('Content-Type: multipart/mixed; boundary="b"\n\nvisible\n--b--\nepilogue\n')
    view = parse_message(raw)
    assert view.defects == ("truncated-multipart",)
    assert view.texts == ("visible\r\n",)


def test_epilogue_is_ignored() -> None:
    raw = mime(multipart("Content-Type: text/plain\n\nx") + "epilogue\n--BOUND\nContent-Type: text/plain\n\nlate\n")
    view = parse_message(raw)
    assert view.texts == ("x",)
    assert view.defects == ()


def test_delimiter_lines_right_after_a_delimiter_are_skipped() -> None:
    # As the stdlib feedparser does; so a close delimiter up front cannot hide the parts that follow.
    raw = mime('Content-Type: multipart/mixed; boundary="b"\n\n--b\n--b--\n--b\nContent-Type: text/plain\n\nx\n--b--\n')
    view = parse_message(raw)
    assert view.texts == ("x",)
    assert view.content_types == ("multipart/mixed", "text/plain")
    assert view.defects == ()


def test_inner_multipart_ended_by_outer_delimiter() -> None:
    inner = "Content-Type: multipart/alternative; boundary=IN\n\n--IN\nContent-Type: text/plain\n\ninner"
    view = parse_message(mime(multipart(inner, "Content-Type: text/plain\n\nafter")))
    assert view.texts == ("inner", "after")
    assert view.defects == ("truncated-multipart",)


def test_inner_close_delimiter_right_before_outer_delimiter() -> None:
    inner = "Content-Type: multipart/alternative; boundary=IN\n\n--IN\nContent-Type: text/plain\n\ninner\n--IN--"
    view = parse_message(mime(multipart(inner, "Content-Type: text/plain\n\nafter")))
    assert view.texts == ("inner", "after")
    assert view.defects == ()


def test_boundary_parameters_read_by_the_stdlib() -> None:
    for value in ('multipart/mixed; boundary="a;b"; x=y', "multipart/mixed; BOUNDARY*=us-ascii'en'a%3Bb"):
        raw = mime(f"Content-Type: {value}\n\n--a;b\nContent-Type: text/plain\n\nx\n--a;b--\n")
        view = parse_message(raw)
        assert (view.texts, view.defects) == (("x",), ()), value


def test_digest_parts_default_to_message_rfc822() -> None:
    raw = mime(multipart("\nFrom: c@example.com\nSubject: one\n\ndigest body", subtype="digest"))
    view = parse_message(raw)
    assert view.content_types == ("multipart/digest", "message/rfc822", "text/plain")
    assert view.texts == ("digest body",)
    assert [(a.content_type, a.depth) for a in view.attachments] == [("message/rfc822", 0)]


def test_message_without_body_separator_before_delimiter() -> None:
    view = parse_message(mime(multipart("Content-Type: text/plain", "Content-Type: text/html\n")))
    assert view.texts == ("", "")
    assert view.defects == ()


# --- transfer encodings and 8-bit parameters ---------------------------------------------------


def test_base64_missing_padding_is_decoded_and_flagged() -> None:
    raw = mime("Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\naGk\n")
    view = parse_message(raw)
    assert view.texts == ("hi",)
    assert view.defects == ("bad-base64",)


def test_base64_of_impossible_length_is_kept() -> None:
    raw = mime("Content-Type: application/octet-stream\nContent-Transfer-Encoding: BASE64 \n\naGVsb\n")
    view = parse_message(raw)
    assert [a.size for a in view.attachments] == [5]
    assert view.defects == ("bad-base64",)


def test_uuencoded_attachment() -> None:
    body = "begin 644 a.bin\n#86)C\n`\nend\n"
    raw = mime(f"Content-Type: application/octet-stream\nContent-Transfer-Encoding: x-uuencode\n\n{body}")
    assert [a.size for a in parse_message(raw).attachments] == [3]


def test_raw_utf8_filename_and_folded_parameters() -> None:
    part = (
        'Content-Type: application/pdf;\n name="grüße.pdf"\n'
        'Content-Disposition: attachment;\n filename="long\n name.PDF"\n\n%PDF'
    )
    view = parse_message(mime(multipart(part)))
    assert [(a.filename, a.extension) for a in view.attachments] == [("long name.PDF", "pdf")]
    part = 'Content-Type: application/pdf; name="grüße.pdf"\n\n%PDF'
    view = parse_message(mime(multipart(part)))
    assert [(a.filename, a.extension) for a in view.attachments] == [("grüße.pdf", "pdf")]
    assert view.defects == ()


def test_distinct_boundaries_compile_no_regex(monkeypatch: pytest.MonkeyPatch) -> None:
    # The stdlib feedparser compiled a regex per new boundary: ~100 µs for every distinct message.
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("re.compile called")

    monkeypatch.setattr(re, "compile", refuse)
    raw = mime(multipart("Content-Type: text/plain; charset=utf-8\n\nx", boundary="=_unique_7f3a9c"))
    view = parse_message(raw)
    assert (view.texts, view.defects) == (("x",), ())


@settings(max_examples=300)
@given(st.binary(max_size=2000))
def test_binary_garbage_never_raises(raw: bytes) -> None:
    view = parse_message(raw)
    assert isinstance(view, MessageView)
    assert view.size == len(raw)
    assert list(view.defects) == sorted(set(view.defects))


FRAGMENTS = [
    "Content-Type: multipart/mixed; boundary=b\n",
    'Content-Type: multipart/alternative; boundary="c"\n',
    "Content-Type: message/rfc822\n",
    "Content-Type: message/delivery-status\n",
    "Content-Type: text/html; charset=x-bad\n",
    "Content-Type: text/plain; charset*=utf-8''%FF\n",
    "Content-Type: application/pdf; name*0*=utf-8''%E2; name*1*=%82%AC.pdf\n",
    'Content-Disposition: attachment; filename="=?utf-8?B?@@?="\n',
    "Content-Transfer-Encoding: base64\n",
    "Content-Transfer-Encoding: quoted-printable\n",
    "Content-Transfer-Encoding: x-uuencode\n",
    "Subject: =?utf-8?Q?=E2=82?= =?bogus?B?AAA?=\n",
    "Subject: =?utf-8?B?\xe9?= =?utf-8?B?\xc3\xa9?= =?utf-8?Q?\xe9?=\n",
    'From: "a, b" <x@y>, (c) <@route:z@w>\n',
    "\n",
    "--b\n",
    "--b--\n",
    "--c\n",
    "<script>x</script><p>&#xFFFFFFF;&bogus;",
    "aGVsbG8=!\n",
    "=E9=\n",
    "\xff\x00\r",
]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40))
def test_mime_shaped_garbage_never_raises(fragments: list[str]) -> None:
    raw = "".join(fragments).encode("latin-1")
    view = parse_message(raw)
    assert isinstance(view, MessageView)
    assert "parse-error" not in view.defects


PART_KINDS = ["plain", "html", "binary", "rfc822"]


def build_tree(kinds: list[str], depth: int = 0) -> Message:
    """A well-formed message built with the stdlib from a flat list of part kinds."""
    outer = MIMEMultipart("mixed")
    for i, kind in enumerate(kinds):
        if kind == "plain":
            outer.attach(MIMEText(f"plain {i} é\n", "plain", "utf-8"))
        elif kind == "html":
            outer.attach(MIMEText(f"<p>html {i}</p>", "html", "iso-8859-1"))
        elif kind == "binary":
            data = MIMEApplication(bytes(range(i * 7 % 256)) * 3, "octet-stream")
            data.add_header("Content-Disposition", "attachment", filename=f"f{i}.bin")
            outer.attach(data)
        elif depth < 2:
            outer.attach(MIMEMessage(build_tree(kinds[i + 1 :], depth + 1)))
    return outer


@settings(max_examples=100)
@given(st.lists(st.sampled_from(PART_KINDS), max_size=6), st.booleans())
def test_agrees_with_stdlib_parser_on_well_formed_messages(kinds: list[str], crlf: bool) -> None:
    raw = build_tree(kinds).as_bytes()
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    view = parse_message(raw)
    reference = BytesParser(policy=compat32).parsebytes(raw)
    assert view.content_types == tuple(part.get_content_type() for part in reference.walk())
    plain = [part.get_payload(decode=True) for part in reference.walk() if part.get_content_type() == "text/plain"]
    assert all(isinstance(data, bytes) for data in plain)
    assert [text for text in view.texts if "html" not in text] == [bytes(data).decode() for data in plain]
    assert [a.filename for a in view.attachments if a.filename] == [
        part.get_filename() for part in reference.walk() if part.get_filename()
    ]
    assert view.defects == ()
