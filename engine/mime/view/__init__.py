"""Parsed, decoded view of an RFC 5322 / MIME message for content matchers (``message`` explains
the guarantees and the algorithm). Importers use this package; its modules, each importing only
those listed before it:

- ``parts``: defect tokens and the part records ``Text``, ``Attachment``, ``DeferredText``;
- ``large_text``: large bodies as UTF-8 bytes: the piece size, ``UTF8_TEXT_SIZE``, ``text_pieces``;
- ``html_text``: visible text of HTML, whole or in pieces;
- ``decoding``: transfer encodings, charsets, RFC 2047 words, ``decoded_text``, ``matchable``;
- ``walker``: the MIME walk (``_Builder``) and its caps (``MAX_PARTS``, ``MAX_HEADER_BYTES``, ...);
- ``message``: the public view: ``MessageView``, ``parse_message``, ``load_texts``, ``header_text``.
"""

from engine.mime.view.decoding import decoded_text, matchable, text_preview
from engine.mime.view.html_text import _html_text as _html_text
from engine.mime.view.large_text import UTF8_TEXT_SIZE, text_pieces, text_str
from engine.mime.view.message import MessageView, header_text, load_texts, parse_message
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
    PARSE_ERROR,
    TOO_MANY_PARTS,
    TRUNCATED_MULTIPART,
    Attachment,
    DeferredText,
    Text,
)
from engine.mime.view.walker import _HEADER_BLOCK as _HEADER_BLOCK
from engine.mime.view.walker import MAX_DECODED_BYTES, MAX_HEADER_BYTES, MAX_NESTING, MAX_PARTS
from engine.mime.view.walker import _Builder as _Builder
from engine.mime.view.walker import _header_block_end as _header_block_end

# (The private names above are re-exported for tests and benchmarks. A patch of a constant here changes
# nothing: patch it in the modules that read it (the caps and UTF8_TEXT_SIZE: walker; _PIECE: walker,
# large_text and html_text).)

__all__ = [
    "BAD_BASE64",
    "BAD_CHARSET",
    "BAD_ENCODED_WORD",
    "BAD_HEADER",
    "BAD_TRANSFER_ENCODING",
    "DECODE_LIMIT",
    "HEADERS_TOO_LARGE",
    "MAX_DECODED_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_NESTING",
    "MAX_PARTS",
    "MISSING_BOUNDARY",
    "NESTING_TOO_DEEP",
    "NO_HEADERS",
    "PARSE_ERROR",
    "TOO_MANY_PARTS",
    "TRUNCATED_MULTIPART",
    "UTF8_TEXT_SIZE",
    "Attachment",
    "DeferredText",
    "MessageView",
    "Text",
    "decoded_text",
    "header_text",
    "load_texts",
    "matchable",
    "parse_message",
    "text_pieces",
    "text_preview",
    "text_str",
]
