"""Delivery status notifications (bounces) for copies the relay could not deliver.

A DSN is an RFC 3464 report: a `multipart/report; report-type=delivery-status` message
(RFC 6522) with a human-readable part, a `message/delivery-status` part holding per-message
fields (Reporting-MTA, Arrival-Date) and per-recipient fields (Final-Recipient, Action, Status
per RFC 3463, Remote-MTA, Diagnostic-Code, Last-Attempt-Date), and the original header section
as `text/rfc822-headers`. It is sent from the null reverse-path (RFC 5321 §4.5.5) to the
envelope sender, marked `Auto-Submitted: auto-replied` (RFC 3834 §5), and queued through the
store like any accepted message (outbound, routed by the recipient's domain).

The relay never sends one to the null sender — which also means never for a DSN — and the
gateway never sends one for mail it rejected or quarantined: those never reach the relay. The
returned headers are capped (`MAX_RETURNED_HEADERS`); which senders get DSNs at all (never an
address literal, at most one per message, `delivery.dsn`) is the worker's decision (`dsn_refusal`).
"""

from __future__ import annotations

import datetime
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import format_datetime

from engine.mime.raw_headers import header_section
from engine.policy.models import Action, Direction
from engine.relay.compose import world_headers
from engine.store.base import Accepted, CopyPlan, StoredEnvelope, new_queue_id

DSN_SUBJECT = "Undelivered Mail Returned to Sender"

_STATUS = re.compile(r"^(?:\d{3}[ -])?([245])\.(\d{1,3})\.(\d{1,3})\b")
_REMOTE_REPLY = re.compile(r"^[2-5]\d\d\b")
_MAX_TEXT = 900  # keeps every generated line under RFC 5322's 998
MAX_RETURNED_HEADERS = 50 * 1024


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    """One recipient reported as failed."""

    rcpt: str
    reply: str  # "550 5.1.1 no such user" (from a server) or "4.4.7 …" (local)
    remote: str  # host:port that replied; "" for local diagnostics
    status: str | None = None  # RFC 3463 status overriding the one in `reply` (e.g. 4.4.7 when expired)


def status_of(reply: str) -> str:
    """The RFC 3463 status of a reply: its enhanced code, else one derived from the reply code."""
    match = _STATUS.match(reply)
    if match:
        return ".".join(match.groups())
    if reply[:1] in ("4", "5") and _REMOTE_REPLY.match(reply):
        return f"{reply[0]}.0.0"
    return "5.0.0"


def _text(value: str) -> str:
    """One line of printable ASCII for a header or report field."""
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in " ".join(value.split()))
    return clean[:_MAX_TEXT]


def _date(timestamp: float) -> str:
    return format_datetime(datetime.datetime.fromtimestamp(timestamp, datetime.UTC))


def _address_field(address: str) -> str:
    return f"rfc822; {address}" if address.isascii() else f"utf-8; {address}"  # RFC 6533 §3


def build_dsn(
    *,
    reporting_mta: str,
    queue_id: str,
    original_queue_id: str,
    sender: str,
    arrival: float,
    now: float,
    failed: Sequence[FailedRecipient],
    original: bytes,
) -> bytes:
    """The DSN message (CRLF line ends) reporting `failed` recipients of `original` to `sender`."""
    boundary = f"{queue_id}.{secrets.token_hex(8)}/{reporting_mta}"
    lines = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        f"Subject: {DSN_SUBJECT}",
        f"Date: {_date(now)}",
        f"Message-ID: <{queue_id}@{reporting_mta}>",
        "MIME-Version: 1.0",
        "Auto-Submitted: auto-replied",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f' boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated delivery status notification (RFC 3464).",
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=us-ascii",
        "Content-Description: Notification",
        "",
        f"This is the mail gateway at {reporting_mta}.",
        "",
        "Your message could not be delivered to the following recipients:",
        "",
    ]
    for item in failed:
        where = f" (reply from {item.remote})" if item.remote else ""
        lines.append(_text(f"<{item.rcpt}>: {item.reply}{where}"))
    lines += [
        "",
        "The headers of your message are attached.",
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-LivePrism-Queue-ID: {original_queue_id}",
        f"Arrival-Date: {_date(arrival)}",
    ]
    for item in failed:
        lines += [
            "",
            f"Final-Recipient: {_address_field(item.rcpt)}",
            "Action: failed",
            f"Status: {item.status or status_of(item.reply)}",
        ]
        if item.remote:
            lines.append(f"Remote-MTA: dns; {item.remote.rpartition(':')[0] or item.remote}")
        kind = "smtp" if _REMOTE_REPLY.match(item.reply) else "X-LivePrism"
        lines += [f"Diagnostic-Code: {kind}; {_text(item.reply)}", f"Last-Attempt-Date: {_date(now)}"]
    headers = returned_headers(original)
    lines += [
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered message headers",
    ]
    if not headers.isascii():
        lines.append("Content-Transfer-Encoding: 8bit")
    lines.append("")
    head = ("\r\n".join(lines) + "\r\n").encode("utf-8")
    return head + headers + f"\r\n--{boundary}--\r\n".encode("ascii")


def returned_headers(original: bytes) -> bytes:
    """The header section of `original` as returned in a DSN: never the body, never the gateway's
    verdict fields (`compose.world_headers`: the sender is often a stranger), and at most
    `MAX_RETURNED_HEADERS` bytes, cut after a whole line (Postfix's bounce_size_limit): a forged
    sender must not get a large reflected message (backscatter, issue 7)."""
    headers = world_headers(header_section(original))
    if len(headers) <= MAX_RETURNED_HEADERS:
        return headers
    cut = headers.rfind(b"\n", 0, MAX_RETURNED_HEADERS) + 1
    return headers[: cut or MAX_RETURNED_HEADERS]


def dsn_message(
    *,
    reporting_mta: str,
    original_queue_id: str,
    tenant: str,
    sender: str,
    arrival: float,
    now: float,
    failed: Sequence[FailedRecipient],
    original: bytes,
) -> Accepted:
    """The DSN as a message to queue through the store: from <> to `sender`, not archived."""
    queue_id = new_queue_id()
    raw = build_dsn(
        reporting_mta=reporting_mta,
        queue_id=queue_id,
        original_queue_id=original_queue_id,
        sender=sender,
        arrival=arrival,
        now=now,
        failed=failed,
        original=original,
    )
    return Accepted(
        queue_id=queue_id,
        raw=raw,
        envelope=StoredEnvelope(
            mail_from="", rcpts=(sender,), client_ip="", helo=reporting_mta, received_at=now,
            direction=Direction.outbound,
        ),
        subject=DSN_SUBJECT,
        policy_version="",
        verdict={"action": "deliver", "reason": "dsn", "score": 0.0, "hits": []},
        # to the MX of the sender's domain (or the tenant's routes when the sender is a tenant's)
        copies=(CopyPlan(tenant, (sender,), Action.deliver, b"", route_by="address", reason="dsn"),),
        archive=False,
    )


def dsn_refusal(sender: str, mode: str, *, sender_is_tenant: bool, already_sent: bool) -> str | None:
    """Why no DSN goes to `sender` (None: one may). `mode` is `delivery.dsn`: `external` (any
    sender), `tenants-only` (senders in a tenant's domains) or `off`. Never to an address literal
    (`x@[127.0.0.1]`: a forged sender would make the relay connect wherever it says), and at most
    one per message (`already_sent`: one message with several tenants' copies, or several attempts)."""
    domain = sender.rpartition("@")[2]
    if mode == "off":
        return "delivery.dsn is off"
    if domain.startswith("["):
        return "the sender is an address literal"
    if mode == "tenants-only" and not sender_is_tenant:
        return "the sender is not in a tenant's domain (delivery.dsn: tenants-only)"
    if already_sent:
        return "a DSN was already sent for this message"
    return None
