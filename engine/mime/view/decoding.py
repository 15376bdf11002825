"""Transfer-encoding and charset decoding: base64, quoted-printable, uuencode and RFC 2047 words,
MIME charsets to Python codecs, and ``decoded_text``, which decodes a large text body piece by
piece (transfer encoding, charset, HTML to visible text) into its UTF-8 bytes."""

import binascii
import codecs
import contextlib
import functools
import re
from collections.abc import Iterable, Iterator
from typing import Final

from engine.mime.view.html_text import _html_visible
from engine.mime.view.large_text import _slices
from engine.mime.view.parts import BAD_CHARSET, DeferredText

_SURROGATES: Final = re.compile("[\ud800-\udfff]")

_UNSAFE_CODECS: Final = frozenset({"idna", "punycode", "raw-unicode-escape", "unicode-escape", "undefined"})
# Codecs whose incremental decoders keep state that a switch to error replacement cannot carry
# over (byte order, shift sequences): their texts are decoded whole.
_WHOLE_CODECS: Final = ("utf-16", "utf-32", "iso2022", "hz", "utf-7")
_UU_ENCODINGS: Final = frozenset({"x-uuencode", "uuencode", "uue", "x-uue"})


def decoded_text(
    pieces: Iterable[bytes], text: DeferredText, defects: set[str], limit: int | None = None
) -> memoryview:
    """The UTF-8 bytes of the text body *text* whose raw bytes are *pieces*, decoded piece by piece:
    the same text as ``read_body`` makes of the whole body (lone surrogates as U+FFFD, as RE2 sees
    them). Decoding defects are added to *defects*. With *limit*, decoding stops once that many
    bytes are out (whole pieces: the result is still valid UTF-8)."""
    decoded = _transfer_decoded(pieces, text.encoding)
    if not text.html and (text.charset is None or _codec(text.charset) == "utf-8"):
        return memoryview(_utf8_checked(decoded, defects, limit)).toreadonly()
    out = bytearray()
    strs = _charset_decoded(decoded, text.charset, defects)
    for piece in _html_visible(strs) if text.html else strs:
        out += matchable(piece).encode("utf-8")
        if limit is not None and len(out) >= limit:
            break
    return memoryview(out).toreadonly()


def text_preview(raw: bytes, text: DeferredText, limit: int) -> str:
    """About the first *limit* bytes of the deferred *text* of the message *raw*, decoded."""
    return str(decoded_text(_slices(raw, text.start, text.end), text, set(), limit), "utf-8")


def _utf8_checked(pieces: Iterable[bytes], defects: set[str], limit: int | None) -> bytearray:
    """The bytes of *pieces*, which should be UTF-8, as ``_charset_decoded`` + encode would give
    them, faster: valid bytes are kept as they are (only checked); from the first invalid byte on
    they are decoded with replacement characters (``bad-charset``)."""
    out = bytearray()
    decoder = codecs.getincrementaldecoder("utf-8")()
    rest = iter(pieces)
    for piece in rest:
        state = decoder.getstate()
        try:
            decoder.decode(piece)
        except UnicodeDecodeError:
            break
        out += piece
        if limit is not None and len(out) >= limit:
            return out
    else:
        state = decoder.getstate()
        try:
            decoder.decode(b"", True)
            return out
        except UnicodeDecodeError:
            piece = b""
    defects.add(BAD_CHARSET)
    del out[len(out) - len(state[0]) :]  # the start of a character the decoder held back: decoded below
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    decoder.setstate(state)
    out += decoder.decode(piece).encode("utf-8")
    for piece in rest:
        out += decoder.decode(piece).encode("utf-8")
    out += decoder.decode(b"", True).encode("utf-8")
    return out


def _transfer_decoded(pieces: Iterable[bytes], encoding: str | None) -> Iterator[bytes]:
    """*pieces* with the transfer encoding undone: quoted-printable per whole lines (it is line-local),
    base64 per whole quanta (valid base64 only: ``leaf_size`` admits no other), anything else as is."""
    if encoding == "quoted-printable":
        for lines in _recut(pieces, b"\n"):
            yield binascii.a2b_qp(lines)
    elif encoding == "base64":
        carry = b""
        for piece in pieces:
            piece = carry + piece.translate(None, b"\r\n")
            whole = len(piece) - len(piece) % 4
            carry = piece[whole:]
            yield binascii.a2b_base64(piece[:whole])
        if carry:
            yield _decode_base64(carry)[0]
    else:
        yield from pieces


def _recut(pieces: Iterable[bytes], separator: bytes) -> Iterator[bytes]:
    """The bytes of *pieces* again, cut after the last *separator* of each piece (the rest waits for
    the next one; the last cut: whatever is left)."""
    waiting: list[bytes] = []
    for piece in pieces:
        cut = piece.rfind(separator) + 1
        if not cut:
            waiting.append(piece)
            continue
        yield b"".join([*waiting, piece[:cut]]) if waiting else piece[:cut]
        waiting = [piece[cut:]] if cut < len(piece) else []
    if waiting:
        yield b"".join(waiting)


def _charset_decoded(pieces: Iterable[bytes], charset: str | None, defects: set[str]) -> Iterator[str]:
    """*pieces* decoded in *charset* as ``_Builder.decode_text`` decodes a whole body: strictly, and
    from the first invalid byte on with replacement characters (``bad-charset``); an unknown
    charset reads as UTF-8 with replacement (``bad-charset``)."""
    codec = _codec(charset) if charset else "utf-8"
    errors = "strict"
    if codec is None:
        defects.add(BAD_CHARSET)
        codec, errors = "utf-8", "replace"
    decoder = codecs.getincrementaldecoder(codec)(errors)
    for piece in pieces:
        if errors == "strict":
            state = decoder.getstate()
            try:
                yield decoder.decode(piece)
                continue
            except UnicodeDecodeError:
                defects.add(BAD_CHARSET)
                errors = "replace"
                decoder = codecs.getincrementaldecoder(codec)(errors)
                decoder.setstate(state)
        yield decoder.decode(piece)
    state = decoder.getstate()
    try:
        yield decoder.decode(b"", True)
    except UnicodeDecodeError:  # a truncated last character
        defects.add(BAD_CHARSET)
        decoder = codecs.getincrementaldecoder(codec)("replace")
        decoder.setstate(state)
        yield decoder.decode(b"", True)


def matchable(text: str) -> str:
    """`text` with every lone surrogate (UTF-7 and surrogate escapes make them) replaced by
    U+FFFD: the text as valid UTF-8, which RE2 needs."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return _SURROGATES.sub("\ufffd", text)
    return text


@functools.lru_cache(maxsize=256)
def _codec(charset: str) -> str | None:
    """Python codec name for a MIME charset; None if unknown, not a text codec, or unsafe."""
    try:
        info = codecs.lookup(charset)
    except (LookupError, ValueError):  # ValueError: an embedded NUL
        return None
    name = info.name.replace("_", "-")
    if name in _UNSAFE_CODECS:
        return None
    try:
        b"a".decode(name)  # (empty input would skip the codec lookup)
    except LookupError:  # a bytes-to-bytes or str-to-str codec such as base64 or rot13
        return None
    except UnicodeError:  # a text codec that rejects this probe, such as utf-16
        pass
    # us-ascii bodies with 8-bit data are nearly always UTF-8; UTF-8 decodes valid ASCII identically.
    return "utf-8" if name == "ascii" else name


def _decode_base64(data: bytes) -> tuple[bytes, bool]:
    """Decoded base64 body and whether it was malformed (the stdlib ``email`` rules).

    Line ends are ignored. Valid text, or valid text missing only its padding, decodes strictly;
    anything else is decoded ignoring non-alphabet characters, and when even that fails (4n+1
    data characters) the text is kept as it is.
    """
    data = data.translate(None, b"\r\n")
    missing = -len(data) % 4
    with contextlib.suppress(binascii.Error):
        return binascii.a2b_base64(data + b"==="[:missing] if missing else data, strict_mode=True), bool(missing)
    for attempt in (data, data + b"=="):
        with contextlib.suppress(binascii.Error):
            return binascii.a2b_base64(attempt), True
    return data, True


def _decode_uu(data: bytes) -> bytes:
    """Decode a uuencoded body (``begin`` line, data lines, ``end``); raises ValueError if broken."""
    lines = iter(data.splitlines())
    for line in lines:
        if line.startswith(b"begin "):
            mode = line.removeprefix(b"begin ").partition(b" ")[0]
            with contextlib.suppress(ValueError):
                int(mode, 8)
                break
    else:
        raise ValueError("no begin line")
    decoded = []
    for line in lines:
        if not line:
            raise ValueError("truncated")
        if line.strip(b" \t\r\n\f") == b"end":
            break
        try:
            decoded.append(binascii.a2b_uu(line))
        except binascii.Error:  # trailing garbage from broken encoders: use the declared length
            decoded.append(binascii.a2b_uu(line[: (((line[0] - 32) & 63) * 4 + 5) // 3]))
    return b"".join(decoded)


def _decode_word(encoding: str, text: str) -> bytes | None:
    """Bytes of one encoded-word's text (RFC 2047 §4); None if the B encoding is broken."""
    if encoding in "qQ":
        return binascii.a2b_qp(text.encode("utf-8"), header=True)
    text = "".join(text.split())
    try:
        return binascii.a2b_base64(text + "=" * (-len(text) % 4))
    except ValueError:  # binascii.Error, or non-ASCII text
        return None
