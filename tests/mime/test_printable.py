"""Control characters from the wire are escaped in logs and listings, replaced in header fields
(issue 7 items 6 and 9)."""

from engine.cli.store_access import clip
from engine.mime.printable import escape, has_control
from engine.smtp.headers import received_header, sanitise


def test_escape_writes_control_characters_visibly_and_keeps_the_rest() -> None:
    assert escape("bo\x01b@acme.example") == "bo\\x01b@acme.example"
    assert escape("\x1b[2J\x1b]0;owned\x07") == "\\x1b[2J\\x1b]0;owned\\x07"
    assert escape("a\u2028b\x85c\x00") == "a\\u2028b\\x85c\\x00"
    assert escape("back\\x01slash") == "back\\\\x01slash"  # an escaped-looking text stays tellable apart
    assert escape("jürgen@münchen.example") == "jürgen@münchen.example"
    assert escape("a\tb", keep="\t") == "a\tb"
    assert not has_control("jürgen") and has_control("a\u2029")


def test_listing_columns_escape_before_clipping() -> None:
    assert clip("Subject \x1b[31mred", 40) == "Subject \\x1b[31mred"
    assert clip("\x1b" * 20, 10) == "\\x1b\\x1b\\…"


def test_helo_with_unicode_line_breaks_is_sanitised_in_the_received_field() -> None:
    assert sanitise("evil\u2028X-Spam-Flag: NO\x85") == "evil?X-Spam-Flag: NO?"
    field = received_header(hostname="mx.example", helo="a\u2028b\x85c", client_ip="192.0.2.1", queue_id="Q",
                            rcpt=None, esmtp=True, tls=False, received_at=0.0)
    assert "\u2028" not in field.decode() and "\x85" not in field.decode() and b"from a?b?c " in field
