"""Control characters in text that came from the wire (addresses, HELO names, subjects).

`has_control` says whether a value holds one; `escape` writes them visibly for a log line or a
terminal, so that nothing a client sends can break a line or send an escape sequence to an
administrator's terminal (issue 7).
"""

from __future__ import annotations

import re

# C0 controls (CR, LF, NUL, ESC…), DEL, C1 controls (U+0085 NEL among them) and the Unicode line
# and paragraph separators: what a terminal, a log reader or a header parser may take as a line
# break or an escape sequence.
UNSAFE_CHARS = "\x00-\x1f\x7f-\x9f\u2028\u2029"
_UNSAFE_ONE = re.compile(f"[{UNSAFE_CHARS}]")


def has_control(value: str) -> bool:
    """Whether *value* holds one of `UNSAFE_CHARS`."""
    return _UNSAFE_ONE.search(value) is not None


def escape(value: str, keep: str = "") -> str:
    """*value* for a log line or a terminal: control characters other than those in *keep* written
    as ``\\xNN`` / ``\\uNNNN`` (and the backslash doubled), everything else as it is."""
    if not has_control(value) and "\\" not in value:
        return value

    def escaped(match: re.Match[str]) -> str:
        char = match[0]
        if char in keep:
            return char
        return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"

    return _UNSAFE_ONE.sub(escaped, value.replace("\\", "\\\\"))
