"""Authentication-Results (RFC 8601) for the relayed copy: pure functions over values and bytes.

- `authentication_results(authserv_id, spf=, dkim=, dmarc=, arc=)` builds the field value with
  our gateway hostname as authserv-id: one resinfo per method (one per DKIM signature, with
  header.d/header.s), `reason="…"` for anything but pass/none, folded between resinfos;
- `strip_authentication_results(raw, authserv_id)` removes every incoming
  Authentication-Results field that claims our authserv-id (RFC 8601 §5: a forged one must not
  survive), comparing the id case-insensitively after any comments, folded fields included;
  the body and every other byte are left as they were.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.checks.arc import ArcResult
from engine.checks.dkim import DkimResult
from engine.checks.dmarc import DmarcResult
from engine.checks.spf import SpfResult
from engine.mime.raw_headers import fields

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`{|}~]+")  # RFC 2045 token characters
_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]*@[A-Za-z0-9\-.]+")  # local-part@domain, dot-atom
FIELD_NAME = b"Authentication-Results"


def _pvalue(value: str) -> str:
    """RFC 8601 §2.2 pvalue: a token, an address/domain as is, otherwise a quoted-string."""
    if value and (_TOKEN.fullmatch(value) or _ADDRESS.fullmatch(value)):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _reason(result: str, reason: str) -> str:
    if not reason or result in ("pass", "none"):
        return ""
    text = " ".join(reason.split())[:200]
    return f" reason={_pvalue(text)}"


def authentication_results(
    authserv_id: str,
    *,
    spf: SpfResult | None = None,
    dkim: Sequence[DkimResult] = (),
    dmarc: DmarcResult | None = None,
    arc: ArcResult | None = None,
) -> str:
    """The Authentication-Results field value (no field name, no trailing CRLF)."""
    parts: list[str] = []
    if spf is not None:
        identity = "smtp.mailfrom" if spf.identity == "mailfrom" else "smtp.helo"
        value = spf.sender if spf.identity == "mailfrom" else spf.domain
        parts.append(f"spf={spf.result}{_reason(spf.result, spf.reason)} {identity}={_pvalue(value or 'unknown')}")
    for sig in dkim:
        if sig.result == "none":
            parts.append("dkim=none")
            continue
        props = f" header.d={_pvalue(sig.domain)}" if sig.domain else ""
        props += f" header.s={_pvalue(sig.selector)}" if sig.selector else ""
        props += f" header.a={_pvalue(sig.algorithm)}" if sig.algorithm else ""
        parts.append(f"dkim={sig.result}{_reason(sig.result, sig.reason)}{props}")
    if dmarc is not None:
        props = f" header.from={_pvalue(dmarc.domain)}" if dmarc.domain else ""
        policy = f" policy.dmarc={dmarc.disposition}" if dmarc.result == "fail" else ""
        parts.append(f"dmarc={dmarc.result}{_reason(dmarc.result, dmarc.reason)}{props}{policy}")
    if arc is not None:
        sealers = f" (sealers {' '.join(arc.sealers)})" if arc.sealers else ""  # a comment (RFC 8601 §2.2)
        props = f" header.oldest-pass={arc.oldest_pass}" if arc.result == "pass" else ""  # RFC 8617 §10.2
        parts.append(f"arc={arc.result}{sealers}{_reason(arc.result, arc.reason)}{props}")
    if not parts:
        return f"{authserv_id}; none"  # RFC 8601 §2.2: no method was applied
    return f"{authserv_id};\r\n\t" + ";\r\n\t".join(parts)


def header_field(value: str) -> bytes:
    """The whole field, ready to prepend to a header section (CRLF line endings)."""
    return FIELD_NAME + b": " + value.encode("utf-8") + b"\r\n"


def _skip_cfws(text: str, i: int) -> int:
    """Index after any whitespace and (nested) comments starting at `i`."""
    depth = 0
    while i < len(text):
        ch = text[i]
        if depth:
            if ch == "\\":
                i += 1
            elif ch == "(":
                depth += 1
            elif ch == ")":
                depth -= 1
        elif ch == "(":
            depth = 1
        elif not ch.isspace():
            break
        i += 1
    return i


def authserv_id_of(value: bytes) -> str:
    """The authserv-id an Authentication-Results value claims (RFC 8601 §2.2), lowercased."""
    text = value.decode("utf-8", "replace")
    i = _skip_cfws(text, 0)
    if i < len(text) and text[i] == '"':
        end = text.find('"', i + 1)
        return text[i + 1:end if end > 0 else len(text)].lower()
    m = re.match(r"[^\s;()]+", text[i:])
    return m.group(0).lower().rstrip(".") if m else ""


def strip_authentication_results(raw: bytes, authserv_id: str) -> bytes:
    """`raw` (a header section or a whole message) without the A-R fields claiming `authserv_id`."""
    ours = authserv_id.strip().rstrip(".").lower()
    wanted = FIELD_NAME.lower()
    out: list[bytes] = []
    pos = 0
    for start, end, name in fields(raw):
        if name == wanted and authserv_id_of(raw[raw.index(b":", start) + 1 : end]) == ours:
            out.append(raw[pos:start])
            pos = end
    out.append(raw[pos:])
    return b"".join(out)
