"""Byte-exact copy composition: prepended headers and the Subject prefix of tagged copies."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine.mime.raw_headers import header_section, header_value
from engine.relay.compose import build_copy, fold_long_lines, normalise_header_section

HEADERS = b"Received: from x by mxpath.test\r\nX-Spam-Flag: YES\r\n"


def test_untagged_copy_is_headers_plus_raw() -> None:
    raw = b"Subject: hi\r\n\r\nbody\r\n"
    assert build_copy(raw, HEADERS, None) == HEADERS + raw
    assert build_copy(raw, b"", "") == raw


def test_prefix_goes_in_front_of_the_subject_value() -> None:
    raw = b"From: a@b.example\r\nSubject: cheap pills\r\n\r\nSubject: in the body\r\n"
    assert build_copy(raw, HEADERS, "[SPAM]") == (
        HEADERS + b"From: a@b.example\r\nSubject: [SPAM] cheap pills\r\n\r\nSubject: in the body\r\n"
    )


def test_only_the_first_top_level_subject_changes() -> None:
    raw = b"Subject: one\r\nSubject: two\r\nContent-Type: message/rfc822\r\n\r\nSubject: nested\r\n\r\nx\r\n"
    out = build_copy(raw, b"", "[SPAM]")
    assert out == raw.replace(b"Subject: one", b"Subject: [SPAM] one", 1)


def test_folded_and_unspaced_subjects_stay_well_formed() -> None:
    folded = b"Subject:\r\n  the value is on\r\n the next lines\r\nTo: x@y.example\r\n\r\n"
    out = build_copy(folded, b"", "[SPAM]")
    assert out == b"Subject: [SPAM]\r\n  the value is on\r\n the next lines\r\nTo: x@y.example\r\n\r\n"
    assert header_value(out, "subject") == "[SPAM]  the value is on the next lines"
    assert build_copy(b"Subject:tight\r\n\r\n", b"", "[SPAM]") == b"Subject: [SPAM] tight\r\n\r\n"
    assert build_copy(b"SUBJECT :x\r\n\r\n", b"", "[S]") == b"SUBJECT : [S] x\r\n\r\n"


def test_missing_subject_is_added_after_the_gateway_headers() -> None:
    raw = b"From: a@b.example\r\n\r\nbody\r\n"
    assert build_copy(raw, HEADERS, "[SPAM]") == HEADERS + b"Subject: [SPAM]\r\n" + raw


def test_already_prefixed_subject_is_not_tagged_twice() -> None:
    raw = b"Subject: [SPAM] again\r\n\r\n"
    assert build_copy(raw, HEADERS, "[SPAM]") == HEADERS + raw


def test_non_ascii_prefix_is_an_encoded_word() -> None:
    out = build_copy(b"Subject: hello\r\n\r\n", b"", "[Verdächtig]")
    assert out.isascii()
    assert header_value(out, "Subject") == "[Verdächtig] hello"


def test_long_subject_line_is_folded_after_the_prefix() -> None:
    raw = b"Subject: " + b"x" * 985 + b"\r\n\r\n"
    out = build_copy(raw, b"", "[SPAM]")
    assert all(len(line) <= 998 for line in out.split(b"\r\n"))
    assert out == b"Subject: [SPAM]\r\n " + b"x" * 985 + b"\r\n\r\n"
    assert header_value(out, "subject") == "[SPAM] " + "x" * 985


def test_header_value_unfolds_and_decodes() -> None:
    raw = b"Subject: =?utf-8?q?caf=C3=A9?=\r\n and more\r\nX-A: 1\r\n\r\n"
    assert header_value(raw, "subject") == "café and more"
    assert header_value(raw, "x-a") == "1"
    assert header_value(raw, "missing") is None
    assert header_value(b"Subject: =?bogus-charset?q?x?=\r\n\r\n", "subject") == "=?bogus-charset?q?x?="


def test_header_section_ends_at_the_empty_line_or_a_non_header_line() -> None:
    assert header_section(b"A: 1\r\nB: 2\r\n continued\r\n\r\nC: body\r\n") == b"A: 1\r\nB: 2\r\n continued\r\n"
    assert header_section(b"A: 1\r\nnot a header\r\nB: 2\r\n") == b"A: 1\r\n"
    assert header_section(b"A: 1\r\nB: 2") == b"A: 1\r\nB: 2"
    assert header_section(b"\r\nbody") == b""


header_lines = st.lists(
    st.tuples(
        st.sampled_from([b"Subject", b"From", b"To", b"X-Thing", b"subject"]),
        st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    ),
    max_size=6,
)


@given(header_lines, st.binary(max_size=200), st.sampled_from(["[SPAM]", "***", "[Späm]"]))
def test_a_copy_is_the_raw_message_with_exactly_one_insertion(
    fields: list[tuple[bytes, bytes]], body: bytes, prefix: str
) -> None:
    raw = b"".join(name + b": " + value + b"\r\n" for name, value in fields) + b"\r\n" + body
    out = build_copy(raw, HEADERS, prefix)
    assert out.startswith(HEADERS)
    rest = out[len(HEADERS) :]
    if rest.endswith(raw):  # a Subject field was added in front (or the prefix was already there)
        added = rest[: len(rest) - len(raw)]
        assert added == b"" or (
            added.startswith(b"Subject: ") and added.count(b"\r\n") == 1 and added.endswith(b"\r\n")
        )
        return
    cut = next(i for i, (a, b) in enumerate(zip(rest, raw, strict=False)) if a != b)
    inserted = len(rest) - len(raw)
    assert rest[:cut] == raw[:cut] and rest[cut + inserted :] == raw[cut:]


def test_long_lines_are_folded_like_postfix_does() -> None:
    raw = b"Subject: x\r\nX-Long: " + b"h" * 1500 + b"\r\n\r\n" + b"a" * 2500 + b"\r\nend\r\n"
    folded = fold_long_lines(raw)
    lines = folded.split(b"\r\n")
    assert max(len(line) for line in lines) <= 998
    assert folded.replace(b"\r\n ", b"") == raw  # only CRLF SP inserted, nothing lost
    assert lines[2].startswith(b" ") and lines[5].startswith(b" ") and lines[6].startswith(b" ")  # continuations
    assert fold_long_lines(b"short\r\nlines\r\n") == b"short\r\nlines\r\n"
    assert fold_long_lines(b"x" * 998 + b"\r\n") == b"x" * 998 + b"\r\n"  # exactly the limit: kept


def test_forged_verdict_fields_are_dropped() -> None:
    raw = (
        b"From: a@example.com\r\nX-Spam-Flag: NO\r\nX-LivePrism-Verdict: action=deliver;\r\n folded\r\n"
        b"Subject: hi\r\nx-spam-score: -100\r\n\r\nX-Spam-Flag: NO stays in the body\r\n"
    )
    copy = build_copy(raw, b"X-Spam-Flag: YES\r\n", None)
    assert copy == (
        b"X-Spam-Flag: YES\r\nFrom: a@example.com\r\nSubject: hi\r\n\r\nX-Spam-Flag: NO stays in the body\r\n"
    )
    assert build_copy(b"Subject: clean\r\n\r\nbody\r\n", b"", None) == b"Subject: clean\r\n\r\nbody\r\n"


def test_bare_cr_in_the_header_section_is_a_line_break_and_forged_fields_behind_it_are_dropped() -> None:
    raw = b"Subject: x\rX-LivePrism-Verdict: forged\rX-Spam-Flag: NO\r\nFrom: a@example.com\r\n\r\nbody\rkept\r\n"
    copy = build_copy(raw, b"X-LivePrism-Policy: v1\r\n", None)
    assert copy == b"X-LivePrism-Policy: v1\r\nSubject: x\r\nFrom: a@example.com\r\n\r\nbody\rkept\r\n"


def test_a_message_opening_with_a_continuation_line_never_folds_into_the_gateway_fields() -> None:
    raw = b" X-Spam-Flag: NO\r\n\tmore\r\nFrom: a@example.com\r\n\r\nbody\r\n"
    copy = build_copy(raw, b"X-LivePrism-Policy: v1\r\n", None)
    assert copy == b"X-LivePrism-Policy: v1\r\nFrom: a@example.com\r\n\r\nbody\r\n"
    assert normalise_header_section(b"  \r\n") == b""
