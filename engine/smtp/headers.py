"""Trace and verdict header fields added to relayed copies (RFC 5321 §4.4, RFC 5322 §3.6.7), and
incoming Authentication-Results fields that claim our authserv-id removed (RFC 8601 §5).

Every value that comes from the client (HELO name, addresses) is sanitised first: control
characters, CR and LF are replaced, so envelope data can never inject a header line.
"""

from __future__ import annotations

import re
from email.utils import formatdate

from engine.checks.authres import strip_authentication_results
from engine.graph.verdict import TenantVerdict
from engine.mime.printable import UNSAFE_CHARS
from engine.policy.models import Action

_UNSAFE = re.compile(f"[{UNSAFE_CHARS}]+")
_MAX_VALUE = 200


def sanitise(value: str) -> str:
    """One safe header token: no control characters (so no CR/LF), bounded length."""
    return _UNSAFE.sub("?", value)[:_MAX_VALUE]


def received_header(*, hostname: str, helo: str, client_ip: str, queue_id: str, rcpt: str | None,
                    esmtp: bool, tls: bool, received_at: float, authenticated: bool = False) -> bytes:
    """`Received:` line for a copy (RFC 5321 §4.4): from HELO ([ip]) by us with (E)SMTP(S)(A) id QID
    (the protocol names of RFC 3848)."""
    protocol = ("ESMTPS" if tls else "ESMTP") + ("A" if authenticated else "") if esmtp else "SMTP"
    for_clause = f"\r\n\tfor <{sanitise(rcpt)}>" if rcpt else ""
    value = (
        f"from {sanitise(helo) or 'unknown'} ([{sanitise(client_ip)}])\r\n"
        f"\tby {hostname} (LivePrism) with {protocol} id {queue_id}{for_clause};\r\n"
        f"\t{formatdate(received_at)}"
    )
    return f"Received: {value}\r\n".encode("utf-8", "replace")


def verdict_headers(verdict: TenantVerdict, policy_version: str) -> bytes:
    """X-LivePrism-Verdict / -Policy, and X-Spam-Flag / X-Spam-Score when the copy is tagged."""
    hit_ids = ",".join(sanitise(hit.id) for hit in verdict.hits) or "none"
    lines = [
        f"X-LivePrism-Verdict: action={verdict.action.value}; score={verdict.score:g}; reason={verdict.reason};"
        f" hits={hit_ids}",
        f"X-LivePrism-Policy: {sanitise(policy_version)}",
    ]
    if verdict.action is Action.tag:
        lines += ["X-Spam-Flag: YES", f"X-Spam-Score: {verdict.score:g}"]
    return "".join(line + "\r\n" for line in lines).encode("utf-8", "replace")


def strip_forged_authentication_results(raw: bytes, hostname: str) -> bytes:
    """`raw` without incoming Authentication-Results fields claiming our authserv-id (RFC 8601 §5);
    the message is only rewritten when its header section mentions the field at all."""
    end = raw.find(b"\r\n\r\n")
    head = raw if end < 0 else raw[:end]
    if b"authentication-results" not in head.lower():
        return raw
    return strip_authentication_results(raw, hostname)
