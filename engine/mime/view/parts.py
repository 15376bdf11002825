"""What a parse records of a message's parts (``Text``, ``Attachment``, ``DeferredText``) and the
defect tokens it reports in ``MessageView.defects``."""

from dataclasses import dataclass
from typing import Final

# Defect tokens (MessageView.defects).
MISSING_BOUNDARY: Final = "missing-boundary"  # multipart without a boundary parameter
TRUNCATED_MULTIPART: Final = "truncated-multipart"  # opening or close delimiter never found
BAD_CHARSET: Final = "bad-charset"  # unknown charset, or bytes invalid in it; read as UTF-8
BAD_BASE64: Final = "bad-base64"  # base64 body with invalid padding, length or characters
BAD_HEADER: Final = "bad-header"  # unparseable header line or parameter
BAD_ENCODED_WORD: Final = "bad-encoded-word"  # RFC 2047 word whose B text is not base64; kept as is
BAD_TRANSFER_ENCODING: Final = "bad-transfer-encoding"  # multipart with a base64/qp encoding (RFC 2045 §6.4)
NO_HEADERS: Final = "no-headers"  # empty input, or no header block at all
NESTING_TOO_DEEP: Final = "nesting-too-deep"  # parts below MAX_NESTING levels were skipped
PARSE_ERROR: Final = "parse-error"  # an unexpected exception; the view holds what was read before it
TOO_MANY_PARTS: Final = "too-many-parts"  # parts beyond MAX_PARTS were not visited
HEADERS_TOO_LARGE: Final = "headers-too-large"  # header bytes beyond MAX_HEADER_BYTES kept undecoded
DECODE_LIMIT: Final = "decode-limit"  # bodies beyond MAX_DECODED_BYTES kept undecoded, not read as text

Text = str | memoryview
"""A decoded text: a ``str``, or the UTF-8 bytes of a large body (valid UTF-8, checked)."""


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
class DeferredText:
    """A large text body not decoded yet: bytes ``[start, end)`` of the raw message and how they decode."""

    start: int
    end: int
    encoding: str | None
    """Transfer encoding, lowercase (quoted-printable, base64 already checked valid, or identity)."""
    charset: str | None
    html: bool
    """text/html: its visible text is what is kept."""
