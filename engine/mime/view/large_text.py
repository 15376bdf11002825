"""Large text bodies kept as UTF-8 bytes: the piece size they are handled in, ``text_str``,
``text_pieces`` (cuts at which lowercasing piece by piece is the whole text's lowercasing), and
slicing and UTF-8 checks in pieces."""

import codecs
from collections.abc import Iterator
from typing import Final

from engine.mime.view.parts import Text

_PIECE: Final = 1024 * 1024  # large leaves that are not text are measured this many bytes at a time
UTF8_TEXT_SIZE: Final = _PIECE
"""text/plain bodies larger than this (in bytes, after the transfer encoding) are kept as UTF-8 bytes."""


def text_str(text: Text) -> str:
    """*text* as a ``str`` (a copy when it is UTF-8 bytes)."""
    return text if isinstance(text, str) else str(text, "utf-8")


def text_pieces(text: memoryview, size: int = _PIECE) -> Iterator[bytes]:
    """The UTF-8 bytes *text* in consecutive pieces of about *size* bytes, so that
    ``b"".join(p.decode().lower().encode() for p in pieces)`` is ``text`` lowercased as one
    ``str``: each is cut where Python's case mapping has no context across the cut (`_case_cut`).
    A piece with no such place runs on until one."""
    end = len(text)
    pos = 0
    while pos < end:
        stop = pos
        parts: list[bytes] = []
        while stop < end:
            window = bytes(text[stop : stop + size])
            stop += len(window)
            cut = _case_cut(window) if stop < end else len(window)
            if cut:
                parts.append(window[:cut])
                break
            parts.append(window)
        piece = parts[0] if len(parts) == 1 else b"".join(parts)
        pos += len(piece)
        yield piece


_CASE_FREE_ASCII: Final = frozenset(range(0x80)) - frozenset(b"'.:^`")  # not Case_Ignorable (Unicode)


def _case_cut(window: bytes) -> int:
    """Where UTF-8 *window* may be cut for lowercasing in pieces (0: nowhere near its end): after
    its last line feed or space, else between its last two ASCII characters that are not
    case-ignorable. The only context Python's lowercasing has is final sigma, which looks past
    case-ignorable characters only (Unicode Table 3-17), so it never looks across such a cut."""
    cut = max(window.rfind(b"\n"), window.rfind(b" ")) + 1
    if cut:
        return cut
    for index in range(len(window) - 1, max(0, len(window) - 4096), -1):
        if window[index - 1] in _CASE_FREE_ASCII and window[index] in _CASE_FREE_ASCII:
            return index
    return 0


def _slices(data: bytes, start: int, end: int) -> Iterator[bytes]:
    """data[start:end] in copies of `_PIECE` bytes."""
    for pos in range(start, end, _PIECE):
        yield data[pos : min(pos + _PIECE, end)]


def _valid_utf8(data: bytes | memoryview) -> bool:
    """Whether *data* is valid UTF-8, checked in pieces (no ``str`` of the whole)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        for pos in range(0, len(data), _PIECE):
            decoder.decode(data[pos : pos + _PIECE])
        decoder.decode(b"", True)
    except UnicodeDecodeError:
        return False
    return True
