"""Visible text of text/html bodies: ``_html_text`` of a whole document, ``_html_visible`` of one
decoded in pieces."""

import re
from collections.abc import Iterable, Iterator
from html import unescape
from typing import Final

from engine.mime.view.large_text import _PIECE

_HTML_HIDDEN: Final = re.compile(r"<!--.*?(?:-->|\Z)|<(script|style)\b[^>]*(?:>|\Z).*?(?:</\1\s*>|\Z)", re.I | re.S)
_HTML_BREAK: Final = re.compile(
    r"<(?:br|hr|/?(?:p|div|li|tr|td|th|h[1-6]|table|ul|ol|pre|blockquote|title))\b[^>]*(?:>|\Z)", re.I
)
_HTML_TAG: Final = re.compile(r"<[a-zA-Z/!?][^>]*(?:>|\Z)")
_HTML_OPENER: Final = re.compile(r"<[a-zA-Z/!?]")  # where _HTML_TAG and _HTML_BREAK matches start

# The start of what html.unescape could still read as a character reference if more text followed.
_ENTITY_OPEN: Final = re.compile(r"&(?:#[0-9]*|#[xX][0-9a-fA-F]*|[^\t\n\f <&#;]{0,32})")


def _html_text(html: str) -> str:
    """Visible text of an HTML document: comments, script and style dropped, tags removed."""
    if "<" in html:
        html = _HTML_TAG.sub("", _HTML_BREAK.sub("\n", _HTML_HIDDEN.sub(" ", html)))
    return unescape(html) if "&" in html else html


def _html_visible_part(html: str) -> tuple[str, bool]:
    """``_html_text(html)`` (the same steps), and whether a comment, script, style, tag or
    character reference is still open at its end (a tag opener after the last ">" of a step's
    input counts as open: the answer may say open when nothing is, never the reverse)."""
    open_at_end = False
    if "<" in html:

        def hidden(match: re.Match[str]) -> str:
            nonlocal open_at_end
            open_at_end = open_at_end or match.end() == len(html)  # (closers end with ">": only \Z ends there)
            return " "

        html = _HTML_HIDDEN.sub(hidden, html)
        open_at_end = open_at_end or _HTML_OPENER.search(html, html.rfind(">") + 1) is not None
        html = _HTML_BREAK.sub("\n", html)
        open_at_end = open_at_end or _HTML_OPENER.search(html, html.rfind(">") + 1) is not None
        html = _HTML_TAG.sub("", html)
    amp = html.rfind("&")  # a character reference the next part could still complete
    open_at_end = open_at_end or (amp >= 0 and _ENTITY_OPEN.fullmatch(html, amp) is not None)
    return (unescape(html) if "&" in html else html), open_at_end


def _html_visible(pieces: Iterable[str]) -> Iterator[str]:
    """``_html_text`` of the concatenated *pieces*, in pieces: the document is cut after a line end,
    or after a ">" (minified HTML has no line ends), at which no comment, script, style, tag or
    character reference is open, so each part's visible text is the whole's. While something
    stays open the text waits, and the next try comes once it has doubled: a comment never
    closed costs about two passes, not one per piece."""
    html = ""  # not turned into visible text yet (grown in place: its only reference)
    attempt = _PIECE  # the length at which to try to cut again
    for piece in pieces:
        html += piece
        if len(html) < attempt:
            continue
        cut = html.rfind("\n") + 1 or html.rfind(">") + 1
        if cut:
            text, open_at_end = _html_visible_part(html[:cut])
            if not open_at_end:
                yield text
                html = html[cut:]
                attempt = _PIECE
                continue
        attempt = 2 * len(html)
    if html:
        yield _html_text(html)
