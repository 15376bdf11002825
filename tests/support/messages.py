"""Messages for the tests: `message()` builds one, `accepted()` and `copy_plan()` the store's record of
an accepted one; GTUBE and EICAR are the anti-spam and anti-virus test strings.

`folded_subject()` and `many_parts()` are hostile messages (thousands of encoded-words, of parts).

`message()` builds through the email package (CRLF line ends, a text part, an optional HTML
alternative and attachments) unless `raw`: then the header lines are written as given (extra
`headers` first, then From, To, Subject, Date, Message-ID, the MIME fields; a `None` field is
left out) and the body is the bytes given, or `body` repeated to `body_size` bytes. The
defaults are a realistic newsletter-ish message from sender.example to bob@acme.example.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Mapping, Sequence
from email.message import EmailMessage
from email.policy import SMTP
from typing import Any

from engine.graph.verdict import Hit
from engine.mime.raw_headers import header_value
from engine.policy.models import Action, Direction
from engine.store.base import Accepted, CopyPlan, RouteBy, StoredEnvelope, new_queue_id

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
# The EICAR test file (https://www.eicar.org/download-anti-malware-testfile/), split so that this
# source file itself is not a detection.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
DATE = "Mon, 02 Sep 2024 09:30:00 +0000"


def message(
    body: str | bytes = "Hello, the minutes of Monday's meeting are below.\n",
    *,
    sender: str = "Nora News <news@sender.example>",
    to: str | None = "bob@acme.example",
    subject: str | None = "Meeting minutes",
    date: str | None = DATE,
    message_id: str | None = "<20240902093000.1234@sender.example>",
    html: str | None = None,
    html_cte: str | None = None,
    attachments: Sequence[tuple[str, str, bytes]] = (),
    raw: bool = False,
    headers: str | bytes = "",
    content_type: str | None = "text/plain",
    transfer_encoding: str | None = None,
    body_size: int | None = None,
) -> bytes:
    """A message (see the module docstring). `attachments` are (filename, content type, data);
    `headers` (raw only) are whole header lines, CRLF included."""
    if not raw:
        assert not headers and body_size is None and isinstance(body, str), "headers, body_size, bytes: raw only"
        msg = EmailMessage()
        for name, value in (("From", sender), ("To", to), ("Subject", subject), ("Date", date),
                            ("Message-ID", message_id)):
            if value is not None:
                msg[name] = value
        msg.set_content(body)
        if html is not None:
            msg.add_alternative(html, subtype="html", cte=html_cte)
        for filename, ctype, data in attachments:
            maintype, subtype = ctype.split("/")
            msg.add_attachment(data, maintype=maintype, subtype=subtype, filename=filename)
        return msg.as_bytes(policy=SMTP)
    assert html is None and not attachments, "html and attachments are built by the email package: not raw"
    head = headers if isinstance(headers, bytes) else headers.encode()
    for name, value in (("From", sender), ("To", to), ("Subject", subject), ("Date", date),
                        ("Message-ID", message_id)):
        if value is not None:
            head += f"{name}: {value}\r\n".encode()
    if content_type is not None:
        head += f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\n".encode()
    if transfer_encoding is not None:
        head += f"Content-Transfer-Encoding: {transfer_encoding}\r\n".encode()
    data = body if isinstance(body, bytes) else body.encode()
    if body_size is not None:
        data = (data * (body_size // len(data) + 1))[:body_size]
    return head + b"\r\n" + data


def folded_subject(count: int, word: str = "=?utf-8?b?QUJD?=") -> bytes:
    """A message whose Subject is `word` (an RFC 2047 encoded-word) `count` times, one per folded line."""
    return message("body\r\n", raw=True, sender="alice@example.com", subject="\r\n ".join([word] * count),
                   date=None, message_id=None, content_type=None)


def many_parts(count: int) -> bytes:
    """A multipart/mixed message of `count` parts of one line each ("part 0", "part 1"...)."""
    parts = b"".join(b"--b\r\n\r\npart %d\r\n" % n for n in range(count))
    return message(parts + b"--b--\r\n", raw=True, sender="alice@example.com",
                   subject="parts", date=None, message_id=None, content_type="multipart/mixed; boundary=b")


def eicar_zip() -> bytes:
    """A zip archive holding the EICAR file as readme.com."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.com", EICAR)
    return buffer.getvalue()


# ---------------------------------------------------------------- the store's records

STORED_RAW = b"From: a@sender.example\r\nTo: b@acme.example\r\nSubject: Hello\r\n\r\nbody\r\n"


def copy_plan(
    tenant: str,
    action: str | Action,
    *rcpts: str,
    headers: bytes | None = None,
    score: float = 0.0,
    route_by: RouteBy = "tenant",
    reason: str = "score",
    hits: tuple[Hit, ...] = (Hit("r1", "rule"),),
    subject_prefix: str | None = None,
) -> CopyPlan:
    """One tenant's copy: to `rcpts` (u@TENANT.example when none), with `headers` to prepend
    (`X-Tenant: TENANT` unless given)."""
    return CopyPlan(
        tenant, rcpts or (f"u@{tenant}.example",), Action(action),
        f"X-Tenant: {tenant}\r\n".encode() if headers is None else headers, subject_prefix,
        route_by=route_by, reason=reason, score=score, hits=hits,
    )


def accepted(
    *copies: CopyPlan,
    raw: bytes = STORED_RAW,
    mail_from: str = "a@sender.example",
    client_ip: str = "192.0.2.7",
    helo: str = "client.example",
    received_at: float | None = None,
    direction: str | Direction = "inbound",
    subject: str | None = None,
    verdict: Mapping[str, Any] | None = None,
    archive: bool = True,
    queue_id: str | None = None,
    policy_version: str = "v1",
) -> Accepted:
    """What the front end hands the store for a message with these copies: the envelope's
    recipients are the copies', the subject is read from `raw` unless given, and the verdict
    names the copies' tenants unless given."""
    rcpts = tuple(r for c in copies for r in c.recipients)
    when = time.time() if received_at is None else received_at
    return Accepted(
        queue_id=queue_id or new_queue_id(),
        raw=raw,
        envelope=StoredEnvelope(mail_from, rcpts, client_ip, helo, when, direction),  # type: ignore[arg-type]
        subject=(header_value(raw, "subject") or "") if subject is None else subject,
        policy_version=policy_version,
        verdict=dict(verdict) if verdict is not None else {"action": "deliver",
                                                             "tenants": sorted(c.tenant for c in copies)},
        copies=copies,
        archive=archive,
    )
