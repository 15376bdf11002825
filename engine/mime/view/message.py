"""Parsed, decoded view of an RFC 5322 / MIME message for content matchers.

Contract: ``parse_message`` never raises. Whatever the input, it returns a ``MessageView``; anything
malformed is reported as kebab-case tokens in ``MessageView.defects`` (constants in ``parts``),
never as an exception.

Algorithm: one depth-bounded recursive walk over byte offsets into the raw message. Each entity's
header block is split into fields here (the stdlib feedparser's line rules: a field starts with
``name:``, continuation lines with a space or tab, the block ends at an empty line); multipart bodies
are cut at their delimiter lines with ``bytes.find`` (RFC 2046 §5.1.1: "--" boundary, optional
transport padding, CRLF, LF or CR line ends; "--" boundary "--" closes); message/* bodies are parsed
as messages. Transfer encodings are undone with ``binascii``, charsets with ``codecs``; RFC 2047
encoded-words (RFC 2047 §6) and RFC 2231 parameters (RFC 2231 §3-4) are decoded too, with fast paths
for the common all-ASCII case and ``email.message.Message`` (compat32) only for unusual parameters.
Unlike the stdlib feedparser this compiles no regular expression per boundary, so distinct messages
cost no more than repeated ones, and it never builds parts below ``MAX_NESTING``.

A text body over ``UTF8_TEXT_SIZE`` bytes is decoded in pieces (transfer encoding, charset, HTML
to visible text) into its UTF-8 bytes, a read-only ``memoryview``: the same text as the ``str``
would be, without the copies a whole-body decode makes (issue 7 item 10). A body that is UTF-8 as
it came is not copied at all: the view points into the raw message. With ``defer_texts`` such
bodies are only located (``MessageView.deferred``) and ``load_texts`` decodes them later from a
fresh read of the message, so a caller can let go of the raw bytes first: the peak is then the
larger of the message and its texts, not their sum. RE2 matches UTF-8 bytes in place;
``text_pieces`` cuts them for whoever needs ``str`` work (lowercasing) piece by piece.

Work per message is linear in its size and capped (``MAX_PARTS``, ``MAX_HEADER_BYTES``,
``MAX_DECODED_BYTES``): beyond a cap the rest is skipped or kept raw and a defect token says so,
so a hostile message costs bounded time and always ends up ``malformed``.
"""

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from engine.mime.view.decoding import decoded_text
from engine.mime.view.parts import PARSE_ERROR, Attachment, DeferredText, Text
from engine.mime.view.walker import _Builder


@dataclass(frozen=True, slots=True)
class MessageView:
    """Decoded content of one message; see the module docstring for the guarantees."""

    headers: Mapping[str, tuple[str, ...]]
    """Top-level headers: lowercase name -> unfolded, RFC 2047-decoded values in order."""
    texts: tuple[Text, ...]
    """Decoded text/plain bodies and visible text of text/html bodies, at any depth; a text/plain
    body larger than ``UTF8_TEXT_SIZE`` that is valid UTF-8 is a memoryview of its bytes."""
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
    deferred: tuple[DeferredText, ...] = ()
    """Large text bodies located but not decoded yet (``defer_texts``): ``load_texts`` decodes them
    into ``texts``; content matching needs them loaded."""

    @property
    def subject(self) -> str:
        """The decoded top-level Subject ("" when absent)."""
        values = self.headers.get("subject")
        return values[0] if values else ""

    @property
    def malformed(self) -> bool:
        """True when any defect was found."""
        return bool(self.defects)


def parse_message(raw: bytes, *, defer_texts: bool = False) -> MessageView:
    """Parse and decode *raw*; never raises (failures become the ``parse-error`` defect). With
    *defer_texts*, text bodies over ``UTF8_TEXT_SIZE`` are left to ``load_texts``."""
    builder = _Builder(defer_texts)
    try:
        builder.build(raw)
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
        deferred=tuple(builder.deferred),
    )


def load_texts(view: MessageView, read: Callable[[int, int], Iterable[bytes]]) -> MessageView:
    """*view* with its deferred texts decoded; ``read(start, end)`` gives those bytes of the message
    again, in pieces. Decoding defects (``bad-charset``) join the view's defects. Never raises
    for what the bytes contain (an I/O error of *read* propagates)."""
    if not view.deferred:
        return view
    defects = set(view.defects)
    texts = [*view.texts, *(decoded_text(read(text.start, text.end), text, defects) for text in view.deferred)]
    return replace(view, texts=tuple(texts), defects=tuple(sorted(defects)), deferred=())


def header_text(view: MessageView, name: str) -> tuple[str, ...]:
    """Decoded values of the top-level header *name* (case-insensitive); empty if absent."""
    return view.headers.get(name.lower(), ())
