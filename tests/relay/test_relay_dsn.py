"""DSN construction (RFC 3464): structure, fields, status codes, odd inputs."""

from __future__ import annotations

import email
import email.message
import email.policy

from engine.policy.models import Direction
from engine.relay.dsn import FailedRecipient, build_dsn, dsn_message, status_of

ORIGINAL = b"Received: by mxpath.test\r\nFrom: a@sender.example\r\nSubject: hi\r\n\r\nsecret body\r\n"


def dsn(failed: list[FailedRecipient], original: bytes = ORIGINAL) -> bytes:
    return build_dsn(
        reporting_mta="mxpath.test",
        queue_id="0MX0DSN000000001",
        original_queue_id="0MX0ORIG00000001",
        sender="a@sender.example",
        arrival=1_795_000_000.0,
        now=1_795_000_600.0,
        failed=failed,
        original=original,
    )


def test_status_of_reply() -> None:
    assert status_of("550 5.1.1 no such user") == "5.1.1"
    assert status_of("550-5.7.1 multi line") == "5.7.1"
    assert status_of("554 no enhanced code") == "5.0.0"
    assert status_of("451 try later") == "4.0.0"
    assert status_of("4.4.1 cannot talk to mx:25") == "4.4.1"
    assert status_of("something odd") == "5.0.0"


def test_dsn_structure_and_fields() -> None:
    raw = dsn(
        [
            FailedRecipient("bob@acme.example", "550 5.1.1 no such user", "mail1.acme.internal:25"),
            FailedRecipient("eve@acme.example", "4.4.1 cannot talk to mail1.acme.internal:25", "", status="4.4.7"),
        ]
    )
    assert raw.isascii() and b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    assert str(msg["To"]) == "a@sender.example"
    assert msg["Message-ID"] == "<0MX0DSN000000001@mxpath.test>"
    assert msg["Date"] == "Wed, 18 Nov 2026 11:16:40 +0000"
    text, report, headers = msg.iter_parts()
    assert "<bob@acme.example>: 550 5.1.1 no such user (reply from mail1.acme.internal:25)" in str(text.get_content())
    blocks = report.get_payload()
    assert isinstance(blocks, list)
    groups = [dict(block.items()) for block in blocks if isinstance(block, email.message.Message)]
    assert len(groups) == len(blocks) == 3
    assert groups[0] == {
        "Reporting-MTA": "dns; mxpath.test",
        "X-LivePrism-Queue-ID": "0MX0ORIG00000001",
        "Arrival-Date": "Wed, 18 Nov 2026 11:06:40 +0000",
    }
    assert groups[1] == {
        "Final-Recipient": "rfc822; bob@acme.example",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mail1.acme.internal",
        "Diagnostic-Code": "smtp; 550 5.1.1 no such user",
        "Last-Attempt-Date": "Wed, 18 Nov 2026 11:16:40 +0000",
    }
    assert groups[2]["Status"] == "4.4.7"
    assert groups[2]["Diagnostic-Code"] == "X-LivePrism; 4.4.1 cannot talk to mail1.acme.internal:25"
    assert "Remote-MTA" not in groups[2]
    assert headers.get_content_type() == "text/rfc822-headers"
    attached = headers.get_payload()
    assert isinstance(attached, str)
    assert "Subject: hi" in attached and "secret body" not in attached


def test_dsn_sanitises_diagnostics_and_handles_utf8() -> None:
    original = "Subject: grüße\r\n\r\nx\r\n".encode()
    raw = dsn(
        [FailedRecipient("jörg@acme.example", "550 5.1.1 bad\r\nInjected: header\x00" + "x" * 2000, "")], original
    )
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    assert b"Injected: header" not in raw.replace(b"bad Injected: header", b"")
    assert b"Final-Recipient: utf-8; j\xc3\xb6rg@acme.example" in raw
    assert b"Content-Transfer-Encoding: 8bit" in raw


def test_dsn_message_is_from_the_null_sender_and_not_archived() -> None:
    msg = dsn_message(
        reporting_mta="mxpath.test",
        original_queue_id="0MX0ORIG00000001",
        tenant="acme",
        sender="a@sender.example",
        arrival=1.0,
        now=2.0,
        failed=[FailedRecipient("bob@acme.example", "550 5.1.1 no", "mx:25")],
        original=ORIGINAL,
    )
    assert msg.envelope.mail_from == "" and msg.envelope.rcpts == ("a@sender.example",)
    assert msg.envelope.direction is Direction.outbound and not msg.archive
    assert [(c.route_by, c.reason) for c in msg.copies] == [("address", "dsn")]
    assert [(c.tenant, c.recipients, c.action) for c in msg.copies] == [("acme", ("a@sender.example",), "deliver")]
    assert f"<{msg.queue_id}@mxpath.test>".encode() in msg.raw


def test_returned_headers_are_capped_at_a_line_end_and_never_include_the_body() -> None:
    from engine.relay.dsn import MAX_RETURNED_HEADERS, returned_headers

    big = b"".join(b"X-F-%d: %s\r\n" % (i, b"x" * 900) for i in range(100)) + b"\r\nbody\r\n"
    headers = returned_headers(big)
    assert len(headers) <= MAX_RETURNED_HEADERS and headers.endswith(b"\r\n") and b"body" not in headers
    assert returned_headers(b"Subject: s\r\n\r\nbody\r\n") == b"Subject: s\r\n"
    verdict = b"X-LivePrism-Verdict: action=deliver\r\nX-Spam-Flag: YES\r\nSubject: s\r\n\r\nbody\r\n"
    assert returned_headers(verdict) == b"Subject: s\r\n"  # the gateway's verdict is not for the sender


def test_dsn_refusal_modes() -> None:
    from engine.relay.dsn import dsn_refusal

    assert dsn_refusal("a@example.com", "external", sender_is_tenant=False, already_sent=False) is None
    assert dsn_refusal("a@[127.0.0.1]", "external", sender_is_tenant=False, already_sent=False) is not None
    assert dsn_refusal("a@example.com", "tenants-only", sender_is_tenant=False, already_sent=False) is not None
    assert dsn_refusal("a@acme.example", "tenants-only", sender_is_tenant=True, already_sent=False) is None
    assert dsn_refusal("a@acme.example", "off", sender_is_tenant=True, already_sent=False) == "delivery.dsn is off"
    assert dsn_refusal("a@acme.example", "external", sender_is_tenant=True, already_sent=True) is not None
