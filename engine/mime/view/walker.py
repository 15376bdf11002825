"""The MIME walker: ``_Builder`` walks the raw message by byte offsets (header blocks split into
fields, multipart bodies cut at their delimiter lines, message/* bodies parsed as messages) and
records what it decodes; the caps on its work per message."""

import binascii
import contextlib
import re
from email.message import Message
from email.parser import BytesParser
from email.policy import compat32
from email.utils import getaddresses
from typing import Final
from urllib.parse import unquote

from engine.mime.view.decoding import (
    _UU_ENCODINGS,
    _WHOLE_CODECS,
    _codec,
    _decode_base64,
    _decode_uu,
    _decode_word,
    decoded_text,
)
from engine.mime.view.html_text import _html_text
from engine.mime.view.large_text import _PIECE, UTF8_TEXT_SIZE, _slices, _valid_utf8
from engine.mime.view.parts import (
    BAD_BASE64,
    BAD_CHARSET,
    BAD_ENCODED_WORD,
    BAD_HEADER,
    BAD_TRANSFER_ENCODING,
    DECODE_LIMIT,
    HEADERS_TOO_LARGE,
    MISSING_BOUNDARY,
    NESTING_TOO_DEEP,
    NO_HEADERS,
    TOO_MANY_PARTS,
    TRUNCATED_MULTIPART,
    Attachment,
    DeferredText,
    Text,
)

MAX_NESTING: Final = 50
"""Parts nested deeper than this many container levels (multipart or message/*) are not visited."""
MAX_PARTS: Final = 10_000
"""Entities (parts at any depth, the message itself included) visited per message; the rest is skipped."""
MAX_HEADER_BYTES: Final = 1024 * 1024
"""Longest header block read as fields (what follows is read as body), and the header field bytes
(all entities together) that are RFC 2047-decoded per message (later fields stay raw)."""
MAX_DECODED_BYTES: Final = 64 * 1024 * 1024
"""Body bytes decoded (transfer encoding and charset) per message; later bodies are counted, not read."""

_HEADER_PARSER: Final = BytesParser(policy=compat32)  # only to salvage headers after a failure
# The header block: lines that start a field ("name:", or a "From " envelope line) or continue one
# (space or tab); the feedparser's headerRE, per line. Line ends are CRLF, LF or a lone CR.
_HEADER_BLOCK: Final = re.compile(rb"(?:(?:From |[\x21-\x39\x3b-\x7e]*:|[ \t])[^\r\n]*(?:\r\n|\r|\n|\Z))*")
_SCAN_SLICE: Final = 64 * 1024

# What may follow "--" boundary on a delimiter line: "--" (close delimiter), transport padding, line end.
_DELIMITER_TAIL: Final = re.compile(rb"(--)?[ \t]*(?:\r\n|\r|\n|\Z)")
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
# A Content-Type whose only parameter is a boundary made of RFC 2046 bchars (minus the "<", ">",
# quote and backslash that Message.get_boundary would unquote): the answer get_boundary gives.
_SIMPLE_BOUNDARY: Final = re.compile(
    r"""[^;"]*;\s*boundary\s*=\s*(?:"([\w'()+,./:=? -]*)"|([\w'()+,./:=?-]+))\s*;?\s*""", re.I | re.A
)
_NAME_PARAM: Final = re.compile(r'(?:file)?name(?:\*\d+)?(\*)?\s*=\s*("[^"]*"?|[^;]*)', re.I)


def _extension(filename: str) -> str | None:
    """Lowercase last suffix of the base name, ignoring trailing dots and spaces (as Windows does)."""
    base = filename.rstrip(". \t").rpartition("/")[2].rpartition("\\")[2]
    _, dot, ext = base.rpartition(".")
    return ext.lower() if dot and ext else None


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


def _params(type_value: str | None, disposition: str | None) -> Message:
    """A compat32 message holding just these headers, for its RFC 2231-aware parameter getters."""
    message = Message()
    if type_value is not None:
        message["Content-Type"] = type_value
    if disposition is not None:
        message["Content-Disposition"] = disposition
    return message


def _strip_eol(data: bytes, start: int, end: int) -> int:
    """*end* moved back over one line end (CRLF, LF or CR) that data[start:end] ends with."""
    if end > start:
        last = data[end - 1]
        if last == 10:  # LF
            return end - 2 if end - 1 > start and data[end - 2] == 13 else end - 1
        if last == 13:  # CR
            return end - 1
    return end


def _header_block_end(data: bytes, start: int, end: int, slice_size: int = _SCAN_SLICE) -> int:
    """Where the header block of data[start:end] ends (``_HEADER_BLOCK``), found in slices of about
    *slice_size* bytes cut at line ends: one regex call holds the GIL for its whole length, and a
    6 MB header scanned at once stalled the event loop for 0.4 s while parsing ran in a thread."""
    pos = start
    while True:
        cut = end
        if end - pos > slice_size:
            limit = pos + slice_size
            cut = max(data.rfind(b"\n", pos, limit), data.rfind(b"\r", pos, limit)) + 1
            if cut <= pos:  # one line longer than a slice: up to its end (a cheap character-class run)
                line_end = min((i for i in (data.find(b"\n", limit, end), data.find(b"\r", limit, end)) if i >= 0),
                               default=end - 1)
                cut = line_end + 1
            if data[cut - 1] == 13 and cut < end and data[cut] == 10:  # keep a CRLF whole
                cut += 1
        match = _HEADER_BLOCK.match(data, pos, cut)
        found = match.end() if match else pos
        if found < cut or cut >= end:
            return found
        pos = cut


def _multipart_parts(
    data: bytes, start: int, end: int, delimiter: bytes, limit: int = MAX_PARTS
) -> tuple[list[tuple[int, int]] | None, bool, int, bool]:
    """Split the multipart body data[start:end] at its *delimiter* lines (RFC 2046 §5.1.1).

    Returns ``(parts, closed, stop, limited)``: the byte ranges of the body parts (the line end before each
    delimiter belongs to the delimiter), whether the close delimiter was found, and where the
    preamble stops. ``parts`` is None when no delimiter opens the first part; then ``stop`` is the
    start of a close delimiter met first, or *end*. Delimiter lines right after a delimiter line
    are skipped, close delimiters too (as the stdlib feedparser does), so that "--b", "--b--" and
    then parts does not hide the parts in an epilogue. At most *limit* parts are returned: when a
    further part follows, the split stops there (``closed`` False, ``limited`` True).
    """
    size = len(delimiter)
    parts: list[tuple[int, int]] = []
    part_start = -1  # while in the preamble
    pos = start
    while True:
        found = data.find(delimiter, pos, end)
        if found < 0:
            break
        pos = found + 1
        if found > start and data[found - 1] not in b"\r\n":  # not at the start of a line
            continue
        tail = _DELIMITER_TAIL.match(data, found + size, end)
        if tail is None:  # "--" boundary followed by something else: a longer boundary, or text
            continue
        close = tail.group(1) is not None
        if part_start < 0:
            if close:
                return None, False, found, False
        elif found == part_start:  # right after a delimiter line: skipped, even a close delimiter
            part_start = pos = tail.end()
            continue
        elif len(parts) >= limit:
            return parts, False, found, True
        else:
            parts.append((part_start, _strip_eol(data, part_start, found)))
        if close:
            return parts, True, found, False
        part_start = pos = tail.end()
    if part_start < 0:
        return None, False, end, False
    if len(parts) >= limit:
        return parts, False, end, True
    parts.append((part_start, _strip_eol(data, part_start, end)))
    return parts, False, end, False


class _Builder:
    """Mutable accumulator for one parse; partial contents are still reported after a failure."""

    __slots__ = (
        "attachments", "content_types", "decode_budget", "defects", "defer", "deferred", "from_addresses",
        "header_budget", "headers", "parts", "texts",
    )

    def __init__(self, defer: bool = False) -> None:
        self.defer = defer  # large text bodies: located (deferred), not decoded
        self.deferred: list[DeferredText] = []
        self.headers: dict[str, list[str]] = {}
        self.texts: list[Text] = []
        self.attachments: list[Attachment] = []
        self.content_types: list[str] = []
        self.from_addresses: list[str] = []
        self.defects: set[str] = set()
        self.parts = 0  # entities visited
        self.header_budget = MAX_HEADER_BYTES  # header bytes still to decode
        self.decode_budget = MAX_DECODED_BYTES  # body bytes still to decode

    def build(self, raw: bytes) -> None:
        """Parse *raw* and record everything; may raise (parse_message turns that into a defect)."""
        fields, body = self.split_entity(raw, 0, len(raw))
        self.read_headers(fields)
        self.visit(raw, fields, body, len(raw), 0, 0, "text/plain")

    def salvage_headers(self, raw: bytes) -> None:
        """After a failed parse, report the top-level headers if they can be read at all."""
        if not self.headers:
            with contextlib.suppress(Exception):
                message = _HEADER_PARSER.parsebytes(raw, headersonly=True)
                self.read_headers(
                    [(name, value.replace("\r", "").replace("\n", "")) for name, value in message.raw_items()]
                )

    def split_entity(self, data: bytes, start: int, end: int) -> tuple[list[tuple[str, str]], int]:
        """Unfolded header fields of the entity data[start:end], and the offset its body starts at.

        Field values are raw (bytes above 127 as surrogate escapes). Like the stdlib feedparser: the
        header block ends at an empty line, which is dropped, or at the first line that is neither
        a field nor a continuation (``bad-header``), which starts the body; a continuation line
        without a field before it and a line starting with a colon are dropped (``bad-header``); a
        leading "From " envelope line is dropped, a later one too (``bad-header``) unless it is the
        block's last line, which then starts the body.
        """
        cap = min(end, start + MAX_HEADER_BYTES)  # a larger header block: the rest is read as body
        block_end = _header_block_end(data, start, cap)
        if block_end == cap < end:
            self.defects.add(HEADERS_TOO_LARGE)
        body = block_end
        if block_end < end:
            first = data[block_end]
            if first == 10:  # an empty LF line
                body += 1
            elif first == 13:  # an empty CRLF or CR line
                body += 2 if block_end + 1 < end and data[block_end + 1] == 10 else 1
            else:
                self.defects.add(BAD_HEADER)
        if block_end == start:
            return [], body
        text = data[start:block_end].decode("ascii", "surrogateescape")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        if not lines[-1]:
            lines.pop()
        fields: list[tuple[str, str]] = []
        name = ""
        value: list[str] = []
        for number, line in enumerate(lines):
            if line[0] in " \t":
                if name:
                    value.append(line)
                else:
                    self.defects.add(BAD_HEADER)
                continue
            if name:
                fields.append((name, "".join(value)))
                name = ""
            if line.startswith("From "):
                if number == len(lines) - 1 and number:
                    body = _strip_eol(data, start, block_end)
                    body = max(data.rfind(b"\n", start, body), data.rfind(b"\r", start, body)) + 1
                elif number:
                    self.defects.add(BAD_HEADER)
                continue
            colon = line.find(":")
            if colon <= 0:  # (the block pattern only admits lines with a colon here)
                self.defects.add(BAD_HEADER)
                continue
            name = line[:colon]
            value = [line[colon + 1 :].lstrip(" \t")]
        if name:
            fields.append((name, "".join(value)))
        return fields, body

    def read_headers(self, fields: list[tuple[str, str]]) -> None:
        """Record the top-level headers and From addresses from the unfolded *fields*."""
        if not fields:
            self.defects.add(NO_HEADERS)
        froms: list[str] = []
        for name, raw_value in fields:
            value = raw_value.strip()
            self.header_budget -= len(value)
            if self.header_budget < 0:  # kept as it came (RFC 2047 words and 8-bit bytes undecoded)
                self.defects.add(HEADERS_TOO_LARGE)
                self.headers.setdefault(name.lower(), []).append(value)
                continue
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

    def walk(self, data: bytes, start: int, end: int, level: int, depth: int, default_type: str) -> int:
        """Record the entity data[start:end] and its descendants; return their decoded payload size."""
        fields, body = self.split_entity(data, start, end)
        return self.visit(data, fields, body, end, level, depth, default_type)

    def visit(
        self,
        data: bytes,
        fields: list[tuple[str, str]],
        body: int,
        end: int,
        level: int,
        depth: int,
        default_type: str,
    ) -> int:
        """Record an entity with header *fields* and body data[body:end]; return the decoded size."""
        self.parts += 1
        type_value = disposition = encoding = None  # first occurrences, as Message.get would return
        for name, value in fields:
            key = name.lower()
            if key == "content-type":
                if type_value is None:
                    type_value = value if value.isascii() else self.fix_8bit(value)
            elif key == "content-disposition":
                if disposition is None:
                    disposition = value if value.isascii() else self.fix_8bit(value)
            elif key == "content-transfer-encoding" and encoding is None:
                encoding = value.strip().lower()
        if type_value is None:
            ctype = default_type
        else:
            ctype = type_value.partition(";")[0].strip().lower()
            if ctype.count("/") != 1:  # RFC 2045 §5.2: invalid means text/plain
                ctype = "text/plain"
        self.content_types.append(ctype)
        filename = self.filename(type_value, disposition)
        listed = filename is not None or (disposition or "").partition(";")[0].strip().lower() == "attachment"
        slot = len(self.attachments)
        children: list[tuple[int, int]] | None = None
        leaf_end = end
        if ctype.startswith("multipart/"):
            boundary = self.boundary(type_value)
            if boundary is None:
                self.defects.add(MISSING_BOUNDARY)  # read as text below: it is what MUAs show
            else:
                if encoding is not None and encoding not in ("7bit", "8bit", "binary"):
                    self.defects.add(BAD_TRANSFER_ENCODING)
                delimiter = b"--" + boundary.encode("utf-8", "surrogateescape")
                limit = max(MAX_PARTS - self.parts, 1)
                children, closed, leaf_end, limited = _multipart_parts(data, body, end, delimiter, limit)
                if limited:
                    self.defects.add(TOO_MANY_PARTS)
                elif not closed:
                    self.defects.add(TRUNCATED_MULTIPART)  # children None: read the preamble as text
        elif ctype.startswith("message/") and ctype != "message/delivery-status":
            children = [(body, end)]  # an encapsulated message (delivery-status: header blocks)
        if children is None:
            size = self.large_leaf(data, body, leaf_end, ctype, type_value, encoding)
            if size is None:
                size = self.read_body(data[body:leaf_end], ctype, type_value, encoding)
            listed = listed or not ctype.startswith(("text/", "multipart/"))
        else:
            encapsulated = ctype.startswith("message/")
            listed = listed or encapsulated
            if level >= MAX_NESTING:
                self.defects.add(NESTING_TOO_DEEP)
                size = 0
            else:
                inner = depth + 1 if encapsulated else depth
                child_type = "message/rfc822" if ctype == "multipart/digest" else "text/plain"  # RFC 2046 §5.1.5
                size = 0
                for a, b in children:
                    if self.parts >= MAX_PARTS:
                        self.defects.add(TOO_MANY_PARTS)
                        break
                    size += self.walk(data, a, b, level + 1, inner, child_type)
        if listed:
            extension = _extension(filename) if filename else None
            self.attachments.insert(slot, Attachment(filename, extension, ctype, size, depth))
        return size

    def boundary(self, type_value: str | None) -> str | None:
        """The boundary parameter (Message.get_boundary); None if absent."""
        simple = _SIMPLE_BOUNDARY.fullmatch(type_value) if type_value else None
        if simple:
            return (simple[1] if simple[1] is not None else simple[2]).rstrip()
        # Malformed RFC 2231 continuations make the stdlib raise: that is parse-error, as before.
        return _params(type_value, None).get_boundary()

    def filename(self, type_value: str | None, disposition: str | None) -> str | None:
        """Decoded file name from the raw header values, or None; a cheap negative test first."""
        if "name" not in (type_value or "").lower() and "name" not in (disposition or "").lower():
            return None
        try:
            filename = _params(type_value, disposition).get_filename()  # RFC 2231: filename=, then name=
        except (TypeError, ValueError):  # the stdlib chokes on some malformed RFC 2231 parameters
            self.defects.add(BAD_HEADER)
            filename = _raw_filename(disposition or "", type_value or "")
        if filename and not filename.isascii():
            filename = self.fix_8bit(filename)
        if filename and "=?" in filename:
            self.header_budget -= len(filename)
            if self.header_budget >= 0:
                filename = self.decode_words(filename)
            else:
                self.defects.add(HEADERS_TOO_LARGE)
        return filename or None

    def large_leaf(
        self, data: bytes, start: int, end: int, ctype: str, type_value: str | None, encoding: str | None
    ) -> int | None:
        """`read_body` for a leaf over `_PIECE` bytes, without a copy of it: a part that is not text
        is measured in pieces; a text body is decoded in pieces (`decoded_text`), kept in place
        when it is UTF-8 as it came, or with `defer` only located. None when `read_body` must do
        it (small parts, uuencode, base64 that is not plain valid text)."""
        # A multipart part without a usable boundary is read as text: it is what MUAs show.
        textual = ctype in ("text/plain", "text/html") or ctype.startswith("multipart/")
        if end - start <= (UTF8_TEXT_SIZE if textual else _PIECE):
            return None
        charset = self.charset(type_value) if textual else None
        if charset is not None and (_codec(charset) or "").startswith(_WHOLE_CODECS):
            return None
        size = self.leaf_size(data, start, end, encoding)
        if size is None or self.decode_budget < 0 or not textual:
            return size
        text = DeferredText(start, end, encoding, charset, ctype == "text/html")
        if self.defer:
            self.deferred.append(text)
        elif (not text.html and encoding not in ("quoted-printable", "base64")
              and (text.charset is None or _codec(text.charset) == "utf-8")
              and _valid_utf8(memoryview(data)[start:end])):
            self.texts.append(memoryview(data)[start:end])
        else:
            self.texts.append(decoded_text(_slices(data, start, end), text, self.defects))
        return size

    def charset(self, type_value: str | None) -> str | None:
        """The charset parameter of a Content-Type value, lowercase; None if absent."""
        if type_value is None or "charset" not in type_value.lower():
            return None
        simple = _SIMPLE_CHARSET.fullmatch(type_value)
        return (simple[1] or simple[2]).lower() if simple else _params(type_value, None).get_content_charset()

    def leaf_size(self, data: bytes, start: int, end: int, encoding: str | None) -> int | None:
        """The decoded size `read_body` gives a large leaf, found in pieces of `_PIECE` bytes (never
        a copy of the whole part: issue 7 item 10); None when `read_body` must do it (uuencode,
        base64 that is not plain valid text, which the stdlib rules decode as a whole)."""
        if encoding in _UU_ENCODINGS:
            return None
        self.decode_budget -= end - start
        if self.decode_budget < 0:
            self.defects.add(DECODE_LIMIT)
            return end - start
        if encoding not in ("quoted-printable", "base64"):
            return end - start
        size = 0
        carry = b""  # base64 characters of a quantum not yet complete
        pos = start
        while pos < end:
            cut = data.find(b"\n", min(pos + _PIECE, end) - 1, end)  # pieces end with a line
            stop = end if cut < 0 else cut + 1
            piece = data[pos:stop]
            pos = stop
            if encoding == "quoted-printable":  # (line-local: a soft line break ends its own line)
                size += len(binascii.a2b_qp(piece))
                continue
            piece = carry + piece.translate(None, b"\r\n")
            if pos >= end:  # the last piece: padding and the malformed rules as `_decode_base64`
                decoded, malformed = _decode_base64(piece)
                if malformed:
                    break
                return size + len(decoded)
            whole = len(piece) - len(piece) % 4
            if b"=" in piece:  # padding before the end: the stdlib rules need the whole text
                break
            try:
                size += len(binascii.a2b_base64(piece[:whole], strict_mode=True))
            except binascii.Error:
                break
            carry = piece[whole:]
        else:
            return size
        self.decode_budget += end - start  # read_body counts it again
        return None

    def read_body(
        self, data: bytes | memoryview, ctype: str, type_value: str | None, encoding: str | None
    ) -> int:
        """Decode a single-part body, record its text if it is text; return its size in bytes. A
        memoryview (a large body, not base64 or uuencoded) is decoded without copying it first."""
        self.decode_budget -= len(data)
        if self.decode_budget < 0:
            self.defects.add(DECODE_LIMIT)
            return len(data)
        if encoding is None:
            pass
        elif encoding == "quoted-printable":
            data = binascii.a2b_qp(data)
        elif encoding == "base64":
            data, malformed = _decode_base64(bytes(data))
            if malformed:
                self.defects.add(BAD_BASE64)
        elif encoding in _UU_ENCODINGS:
            with contextlib.suppress(ValueError):  # kept as it is if broken
                data = _decode_uu(bytes(data))
        if ctype == "text/plain" or ctype == "text/html" or ctype.startswith("multipart/"):
            # A multipart part without a usable boundary is read as text: it is what MUAs show.
            charset = self.charset(type_value)
            if ctype == "text/html":
                self.texts.append(_html_text(self.decode_text(data, charset)))
            else:
                self.texts.append(self.decode_text(data, charset))
        return len(data)

    def fix_8bit(self, text: str) -> str:
        """Read the raw bytes in a header value (surrogate escapes) as UTF-8 (RFC 6532)."""
        data = text.encode("utf-8", "surrogateescape")
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            self.defects.add(BAD_CHARSET)
            return data.decode("utf-8", "replace")

    def decode_text(self, data: bytes | memoryview, charset: str | None) -> str:
        """Decode *data* in *charset*; unknown or wrong charsets fall back with ``bad-charset``."""
        codec = _codec(charset) if charset else "utf-8"
        if codec is None:
            self.defects.add(BAD_CHARSET)
            return str(data, "utf-8", "replace")
        try:
            return str(data, codec)
        except UnicodeDecodeError:
            self.defects.add(BAD_CHARSET)
            return str(data, codec, "replace")

    def decode_words(self, value: str) -> str:
        """Decode RFC 2047 encoded-words in *value*.

        Whitespace between adjacent encoded-words is dropped (RFC 2047 §6.2); adjacent words in one
        charset are decoded together, so characters split across words survive.
        """
        out: list[str] = []
        run: list[bytes] = []  # adjacent encoded-words not yet decoded (joined once: linear time)
        run_charset: str | None = None  # and their charset
        end = 0
        # Every match ends at the first "?=" after its start: searching only up to the last one keeps
        # a header full of unclosed "=?cs?q?" openings linear (each would otherwise scan to the end).
        close = value.rfind("?=")
        for match in _ENCODED_WORD.finditer(value, 0, close + 2 if close >= 0 else 0):
            gap = value[end : match.start()]
            end = match.end()
            data = _decode_word(match[2], match[3])
            charset = match[1].partition("*")[0].lower()  # RFC 2231 §5 language suffix
            if data is None:
                self.defects.add(BAD_ENCODED_WORD)
                gap += match[0]
            elif run_charset is not None and (not gap or gap.isspace()):
                if charset == run_charset:
                    run.append(data)
                    continue
                gap = ""
            if run_charset is not None:
                out.append(self.decode_text(b"".join(run), run_charset))
            out.append(gap)
            run, run_charset = ([], None) if data is None else ([data], charset)
        if run_charset is not None:
            out.append(self.decode_text(b"".join(run), run_charset))
        out.append(value[end:])
        return "".join(out)
