"""Parsed, decoded view of an RFC 5322 / MIME message for content matchers.

Contract: ``parse_message`` never raises. Whatever the input, it returns a ``MessageView``; anything
malformed is reported as kebab-case tokens in ``MessageView.defects`` (constants below), never as an
exception.

Algorithm: the stdlib ``BytesParser`` with the ``compat32`` policy builds the part tree (about ten
times faster than ``email.policy.default``); one depth-bounded walk then decodes transfer encodings
and charsets, RFC 2047 encoded-words (RFC 2047 §6) and RFC 2231 parameters (RFC 2231 §3-4) itself,
with fast paths for the common all-ASCII case.
"""

import binascii
import codecs
import contextlib
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from email import errors
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from html import unescape
from types import MappingProxyType
from typing import Final
from urllib.parse import unquote

# Defect tokens (MessageView.defects).
MISSING_BOUNDARY: Final = "missing-boundary"  # multipart without a boundary parameter
TRUNCATED_MULTIPART: Final = "truncated-multipart"  # start or closing boundary never found
BAD_CHARSET: Final = "bad-charset"  # unknown charset, or bytes invalid in it; read as UTF-8
BAD_BASE64: Final = "bad-base64"  # base64 body with invalid padding, length or characters
BAD_HEADER: Final = "bad-header"  # unparseable header line or parameter
BAD_ENCODED_WORD: Final = "bad-encoded-word"  # RFC 2047 word whose B text is not base64; kept as is
BAD_TRANSFER_ENCODING: Final = "bad-transfer-encoding"  # multipart with a base64/qp encoding (RFC 2045 §6.4)
NO_HEADERS: Final = "no-headers"  # empty input, or no header block at all
NESTING_TOO_DEEP: Final = "nesting-too-deep"  # parts below MAX_NESTING levels were skipped
PARSE_ERROR: Final = "parse-error"  # an unexpected exception; the view holds what was read before it

MAX_NESTING: Final = 50
"""Parts nested deeper than this many container levels (multipart or message/*) are not visited."""

_DEFECT_TOKENS: Final[Mapping[type[errors.MessageDefect], str | None]] = {
    errors.NoBoundaryInMultipartDefect: MISSING_BOUNDARY,
    errors.StartBoundaryNotFoundDefect: TRUNCATED_MULTIPART,
    errors.CloseBoundaryNotFoundDefect: TRUNCATED_MULTIPART,
    # Only ever reported together with one of the two defects above.
    errors.MultipartInvariantViolationDefect: None,
    errors.InvalidMultipartContentTransferEncodingDefect: BAD_TRANSFER_ENCODING,
    errors.InvalidBase64PaddingDefect: BAD_BASE64,
    errors.InvalidBase64CharactersDefect: BAD_BASE64,
    errors.InvalidBase64LengthDefect: BAD_BASE64,
    errors.MissingHeaderBodySeparatorDefect: BAD_HEADER,
    errors.FirstHeaderLineIsContinuationDefect: BAD_HEADER,
    errors.MisplacedEnvelopeHeaderDefect: BAD_HEADER,
    errors.InvalidHeaderDefect: BAD_HEADER,
    errors.NonPrintableDefect: BAD_HEADER,
    errors.UndecodableBytesDefect: BAD_CHARSET,
}

_PARSER: Final = BytesParser(policy=compat32)
_ENCODED_WORD: Final = re.compile(r"=\?([^?]*)\?([bBqQ])\?(.*?)\?=", re.S)
_SIMPLE_FROM: Final = re.compile(
    r"[ \t]*(?:[A-Za-z0-9 _'-]*<(?P<bracketed>{addr})>|(?P<bare>{addr}))[ \t]*".format(
        addr=r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
    )
)
_SIMPLE_CHARSET: Final = re.compile(
    r'\s*[\w.+-]+/[\w.+-]+\s*;\s*charset\s*=\s*(?:"([\w.:+-]+)"|([\w.:+-]+))\s*;?\s*',
    re.I | re.A,
)
_NAME_PARAM: Final = re.compile(r'(?:file)?name(?:\*\d+)?(\*)?\s*=\s*("[^"]*"?|[^;]*)', re.I)
_HTML_HIDDEN: Final = re.compile(r"<!--.*?(?:-->|\Z)|<(script|style)\b[^>]*(?:>|\Z).*?(?:</\1\s*>|\Z)", re.I | re.S)
_HTML_BREAK: Final = re.compile(
    r"<(?:br|hr|/?(?:p|div|li|tr|td|th|h[1-6]|table|ul|ol|pre|blockquote|title))\b[^>]*(?:>|\Z)", re.I
)
_HTML_TAG: Final = re.compile(r"<[a-zA-Z/!?][^>]*(?:>|\Z)")
_UNSAFE_CODECS: Final = frozenset({"idna", "punycode", "raw-unicode-escape", "unicode-escape", "undefined"})
_CAMEL: Final = re.compile(r"(?<!^)(?=[A-Z])")


@dataclass(frozen=True, slots=True)
class Attachment:
    """A named, attached or non-text leaf part (or an encapsulated message) of a message."""

    filename: str | None
    """Decoded file name (Content-Disposition filename, else Content-Type name); None if unnamed."""
    extension: str | None
    """Lowercase last suffix of ``filename`` without the dot; None if no name or no dot."""
    content_type: str
    """Lowercase ``maintype/subtype``."""
    size: int
    """Decoded payload bytes; for an encapsulated message, the sum over its leaf parts."""
    depth: int
    """Number of enclosing message/* encapsulations (0 = part of the top-level message)."""


@dataclass(frozen=True, slots=True)
class MessageView:
    """Decoded content of one message; see the module docstring for the guarantees."""

    headers: Mapping[str, tuple[str, ...]]
    """Top-level headers: lowercase name -> unfolded, RFC 2047-decoded values in order."""
    texts: tuple[str, ...]
    """Decoded text/plain bodies and visible text of text/html bodies, at any depth."""
    attachments: tuple[Attachment, ...]
    """Named, ``attachment``-disposition and non-text leaf parts, plus encapsulated messages."""
    content_types: tuple[str, ...]
    """Lowercase content type of every visited part, in walk order."""
    from_addresses: tuple[str, ...]
    """Lowercase addr-specs of the top-level From header."""
    defects: tuple[str, ...]
    """Sorted, unique kebab-case malformation tokens; empty when well-formed."""
    size: int
    """Length of the raw input in bytes."""

    @property
    def malformed(self) -> bool:
        """True when any defect was found."""
        return bool(self.defects)


def parse_message(raw: bytes) -> MessageView:
    """Parse and decode *raw*; never raises (failures become the ``parse-error`` defect)."""
    builder = _Builder()
    try:
        builder.build(raw)
    except RecursionError:
        # The stdlib parser recurses once per nesting level, so absurdly deep input (~1000 levels)
        # overflows the stack before the walk could stop at MAX_NESTING; keep at least the headers.
        builder.defects.update((NESTING_TOO_DEEP, PARSE_ERROR))
        builder.salvage_headers(raw)
    except Exception:
        builder.defects.add(PARSE_ERROR)
        builder.salvage_headers(raw)
    return MessageView(
        headers=MappingProxyType({name: tuple(values) for name, values in builder.headers.items()}),
        texts=tuple(builder.texts),
        attachments=tuple(builder.attachments),
        content_types=tuple(builder.content_types),
        from_addresses=tuple(builder.from_addresses),
        defects=tuple(sorted(builder.defects)),
        size=len(raw),
    )


def header_text(view: MessageView, name: str) -> tuple[str, ...]:
    """Decoded values of the top-level header *name* (case-insensitive); empty if absent."""
    return view.headers.get(name.lower(), ())


def _extension(filename: str) -> str | None:
    """Lowercase last suffix of the base name, ignoring trailing dots and spaces (as Windows does)."""
    base = filename.rstrip(". \t").rpartition("/")[2].rpartition("\\")[2]
    _, dot, ext = base.rpartition(".")
    return ext.lower() if dot and ext else None


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


def _raw_filename(*values: str) -> str | None:
    """Best-effort file name from raw header values: (file)name parameter pieces in order."""
    for value in values:
        pieces = []
        for match in _NAME_PARAM.finditer(value):
            text = match[2].strip().strip('"')
            if match[1]:  # RFC 2231 §4 extended value: charset'language'%XX
                text = unquote(text.rpartition("'")[2], errors="replace")
            pieces.append(text)
        if pieces:
            return "".join(pieces)
    return None


def _defect_token(defect: errors.MessageDefect) -> str | None:
    """Token for a stdlib defect (None: ignored); unmapped classes become their kebab-case name."""
    cls = type(defect)
    if cls in _DEFECT_TOKENS:
        return _DEFECT_TOKENS[cls]
    return _CAMEL.sub("-", cls.__name__.removesuffix("Defect")).lower()


def _html_text(html: str) -> str:
    """Visible text of an HTML document: comments, script and style dropped, tags removed."""
    if "<" in html:
        html = _HTML_TAG.sub("", _HTML_BREAK.sub("\n", _HTML_HIDDEN.sub(" ", html)))
    return unescape(html) if "&" in html else html


def _decode_word(encoding: str, text: str) -> bytes | None:
    """Bytes of one encoded-word's text (RFC 2047 §4); None if the B encoding is broken."""
    if encoding in "qQ":
        return binascii.a2b_qp(text.encode("utf-8"), header=True)
    text = "".join(text.split())
    try:
        return binascii.a2b_base64(text + "=" * (-len(text) % 4))
    except ValueError:  # binascii.Error, or non-ASCII text
        return None


class _Builder:
    """Mutable accumulator for one parse; partial contents are still reported after a failure."""

    __slots__ = ("attachments", "content_types", "defects", "from_addresses", "headers", "texts")

    def __init__(self) -> None:
        self.headers: dict[str, list[str]] = {}
        self.texts: list[str] = []
        self.attachments: list[Attachment] = []
        self.content_types: list[str] = []
        self.from_addresses: list[str] = []
        self.defects: set[str] = set()

    def build(self, raw: bytes) -> None:
        """Parse *raw* and record everything; may raise (parse_message turns that into a defect)."""
        message = _PARSER.parsebytes(raw)
        self.read_headers(message)
        self.walk(message, 0, 0)

    def salvage_headers(self, raw: bytes) -> None:
        """After a failed full parse, report the top-level headers if they can be read at all."""
        if not self.headers:
            with contextlib.suppress(Exception):
                self.read_headers(_PARSER.parsebytes(raw, headersonly=True))

    def read_headers(self, message: Message) -> None:
        """Record the top-level headers and From addresses of *message*."""
        if len(message) == 0:
            self.defects.add(NO_HEADERS)
        froms: list[str] = []
        for name, value in message.raw_items():
            value = value.replace("\r", "").replace("\n", "").strip()  # RFC 5322 §2.2.3 unfolding
            if not value.isascii():
                value = self.fix_8bit(value)
            key = name.lower()
            if key == "from":
                froms.append(value)
            decoded = self.decode_words(value) if "=?" in value else value
            self.headers.setdefault(key, []).append(decoded)
        for value in froms:
            match = _SIMPLE_FROM.fullmatch(value)
            if match:
                self.from_addresses.append((match["bracketed"] or match["bare"]).lower())
            else:
                self.from_addresses.extend(addr.lower() for _, addr in getaddresses([value]) if addr)

    def walk(self, part: Message, level: int, depth: int) -> int:
        """Record *part* and its descendants; return their decoded payload size in bytes."""
        ctype = part.get_content_type()
        self.content_types.append(ctype)
        type_value = disposition = ""
        for name, value in part.raw_items():  # first occurrences, as Message.get would return
            key = name.lower()
            if key == "content-type" and not type_value:
                type_value = value
            elif key == "content-disposition" and not disposition:
                disposition = value
        filename = self.filename(part, type_value, disposition)
        listed = filename is not None or disposition.partition(";")[0].strip().lower() == "attachment"
        slot = len(self.attachments)
        if not part.is_multipart():
            size = self.read_body(part, ctype, type_value)
            listed = listed or not ctype.startswith(("text/", "multipart/"))
        elif ctype == "message/delivery-status":  # a list of header blocks, not of parts
            size = sum(len(block.as_bytes()) for block in part.get_payload() if isinstance(block, Message))
            listed = True
        else:
            encapsulated = ctype.startswith("message/")
            listed = listed or encapsulated
            if level >= MAX_NESTING:
                self.defects.add(NESTING_TOO_DEEP)
                size = 0
            else:
                inner = depth + 1 if encapsulated else depth
                children = [child for child in part.get_payload() if isinstance(child, Message)]
                size = sum(self.walk(child, level + 1, inner) for child in children)
        self.note(part.defects)
        if listed:
            extension = _extension(filename) if filename else None
            self.attachments.insert(slot, Attachment(filename, extension, ctype, size, depth))
        return size

    def filename(self, part: Message, type_value: str, disposition: str) -> str | None:
        """Decoded file name of *part*, or None; the raw header values allow a cheap negative test."""
        if "name" not in type_value.lower() and "name" not in disposition.lower():
            return None
        try:
            filename = part.get_filename()  # RFC 2231 parameters, filename= then name=
        except (TypeError, ValueError):  # the stdlib chokes on some malformed RFC 2231 parameters
            self.defects.add(BAD_HEADER)
            filename = _raw_filename(disposition, type_value)
        if filename and not filename.isascii():
            filename = self.fix_8bit(filename)
        if filename and "=?" in filename:
            filename = self.decode_words(filename)
        return filename or None

    def read_body(self, part: Message, ctype: str, type_value: str) -> int:
        """Decode a single-part body, record its text if it is text; return its size in bytes."""
        data = part.get_payload(decode=True)
        if not isinstance(data, bytes):  # a payload of None (never set)
            return 0
        if ctype == "text/plain" or ctype == "text/html" or ctype.startswith("multipart/"):
            # A multipart part without a usable boundary is read as text: it is what MUAs show.
            simple = _SIMPLE_CHARSET.fullmatch(type_value)
            charset = (simple[1] or simple[2]).lower() if simple else part.get_content_charset()
            text = self.decode_text(data, charset)
            self.texts.append(_html_text(text) if ctype == "text/html" else text)
        return len(data)

    def note(self, defects: list[errors.MessageDefect]) -> None:
        for defect in defects:
            token = _defect_token(defect)
            if token:
                self.defects.add(token)

    def fix_8bit(self, text: str) -> str:
        """Read surrogate-escaped raw bytes left by the bytes parser as UTF-8 (RFC 6532)."""
        data = text.encode("utf-8", "surrogateescape")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.defects.add(BAD_CHARSET)
            return data.decode("utf-8", "replace")

    def decode_text(self, data: bytes, charset: str | None) -> str:
        """Decode *data* in *charset*; unknown or wrong charsets fall back with ``bad-charset``."""
        codec = _codec(charset) if charset else "utf-8"
        if codec is None:
            self.defects.add(BAD_CHARSET)
            return data.decode("utf-8", "replace")
        try:
            return data.decode(codec)
        except UnicodeDecodeError:
            self.defects.add(BAD_CHARSET)
            return data.decode(codec, "replace")

    def decode_words(self, value: str) -> str:
        """Decode RFC 2047 encoded-words in *value*.

        Whitespace between adjacent encoded-words is dropped (RFC 2047 §6.2); adjacent words in one
        charset are decoded together, so characters split across words survive.
        """
        out: list[str] = []
        run, run_charset = b"", None  # adjacent encoded-words not yet decoded, and their charset
        end = 0
        for match in _ENCODED_WORD.finditer(value):
            gap = value[end : match.start()]
            end = match.end()
            data = _decode_word(match[2], match[3])
            charset = match[1].partition("*")[0].lower()  # RFC 2231 §5 language suffix
            if data is None:
                self.defects.add(BAD_ENCODED_WORD)
                gap += match[0]
            elif run_charset is not None and (not gap or gap.isspace()):
                if charset == run_charset:
                    run += data
                    continue
                gap = ""
            if run_charset is not None:
                out.append(self.decode_text(run, run_charset))
            out.append(gap)
            run, run_charset = (b"", None) if data is None else (data, charset)
        if run_charset is not None:
            out.append(self.decode_text(run, run_charset))
        out.append(value[end:])
        return "".join(out)
