"""DKIM signing of outbound copies by the relay (RFC 6376, RFC 8463), of the exact bytes it sends.

Contract:
- keys are loaded once, when the relay loads a policy version (`load_signers`), never per message;
  a key that cannot be loaded is a `KeyProblem` for that tenant: the relay refuses a policy
  version that would break a key signing now (engine/relay/process.py), and while no valid key
  exists for a tenant that has `outbound.dkim`, its outbound copies are deferred (4.7.0), never
  sent unsigned;
- which copies are signed is the worker's decision (copies routed by address with a non-null
  sender: outbound mail); DSNs are not signed (their From is the gateway's MAILER-DAEMON, in no
  tenant's domain);
- `sign` signs with relaxed/relaxed canonicalization (RFC 6376 §3.4), `rsa-sha256` or
  `ed25519-sha256` by key type, the fields of SIGNED_FIELDS that are present (each as many times
  as present) and From once more than present (over-signing, RFC 6376 §8.15: no From can be
  added later), with `d=` the tenant domain the header From belongs to (itself or a parent;
  else the tenant's first domain). The result is `DKIM-Signature:` + the bytes given with their
  line ends made CRLF (`as_sent`: what the SMTP client transmits anyway), nothing else changed.
  A large copy (`StreamedCopy`) is signed by `sign_streamed` without the body in memory: the
  same signature, the body hashed piece by piece as it is read, the field prepended to its head.
  Own code over hashlib and `cryptography` (dkimpy's pure-Python RSA took ~55 ms a message);
  dkimpy and OpenDKIM verify it in the tests.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

# the one canonicalisation (RFC 6376 §3.4), whole or in pieces
from engine.dkim.canonical import BodyHash, canonical_header
from engine.dkim.keys import KeyProblem, PrivateKey, load_key
from engine.mime.raw_headers import fields
from engine.policy.models import DkimKey
from engine.relay.compose import LineEnds, StreamedCopy

SIGNED_FIELDS = (
    b"from", b"to", b"cc", b"subject", b"date", b"message-id", b"reply-to", b"mime-version", b"content-type",
    b"content-transfer-encoding", b"in-reply-to", b"references",
)


@dataclass(frozen=True, slots=True)
class Signer:
    """One tenant's signing key, loaded."""

    tenant: str
    selector: str
    domains: tuple[str, ...]  # the tenant's domains, in policy order
    key: PrivateKey  # RSA or Ed25519 (engine.dkim.keys.load_key)
    algorithm: bytes  # b"rsa-sha256" | b"ed25519-sha256"


@dataclass(frozen=True, slots=True)
class TenantKey:
    """What the relay needs to load a tenant's key: `outbound.dkim` and the tenant's domains."""

    selector: str
    private_key: str  # absolute path or env:NAME
    domains: tuple[str, ...]


def tenant_key(root: Path | None, key: DkimKey, domains: Sequence[str]) -> TenantKey:
    """`key` with its path made absolute against the policy directory `root`."""
    where = key.private_key
    if not where.startswith("env:") and root is not None and not Path(where).is_absolute():
        where = str(root / where)
    return TenantKey(key.selector, where, tuple(domains))


def load_signers(keys: Mapping[str, TenantKey]) -> dict[str, Signer | KeyProblem]:
    """Every tenant's key loaded, or why it cannot be (see the module docstring)."""
    out: dict[str, Signer | KeyProblem] = {}
    for tenant, spec in keys.items():
        loaded = load_key(Path("/"), DkimKey(selector=spec.selector, private_key=spec.private_key))
        if isinstance(loaded, KeyProblem):
            out[tenant] = loaded
            continue
        algorithm = b"rsa-sha256" if isinstance(loaded, rsa.RSAPrivateKey) else b"ed25519-sha256"
        out[tenant] = Signer(tenant, spec.selector, spec.domains, loaded, algorithm)
    return out


def problems(signers: Mapping[str, Signer | KeyProblem]) -> list[str]:
    """One line per key that could not be loaded."""
    return [f"tenant {tenant}: DKIM key {item.where}: {item.message}"
            for tenant, item in sorted(signers.items()) if isinstance(item, KeyProblem)]


def header_from_domain(data: bytes) -> str | None:
    """The domain of the first top-level From field's address (lowercased), if one can be read."""
    for start, end, name in fields(data):
        if name != b"from":
            continue
        value = data[data.index(b":", start) + 1 : end].decode("utf-8", "replace")
        value = " ".join(value.split())
        if "<" in value and ">" in value.rpartition("<")[2]:
            value = value.rpartition("<")[2].partition(">")[0]
        domain = value.rpartition("@")[2].strip().strip(">").lower().rstrip(".")
        return domain or None
    return None


def signing_domain(signer: Signer, from_domain: str | None) -> str:
    """The tenant domain equal to or a parent of `from_domain` (longest first); else the first one."""
    if from_domain:
        for domain in sorted(signer.domains, key=len, reverse=True):
            if from_domain == domain or from_domain.endswith("." + domain):
                return domain
    return signer.domains[0]


def signed_field_list(data: bytes) -> list[bytes]:
    """h= for `data`: each SIGNED_FIELDS name as many times as present, From once more."""
    present = [name for _, _, name in fields(data) if name in SIGNED_FIELDS]
    if b"from" not in present:
        present.append(b"from")  # RFC 6376 §5.4: From must be signed; an absent one is then locked out
    return [*present, b"from"]


_B64_LINE = 72


def as_sent(data: bytes) -> bytes:
    """`data` with every line end CRLF and a final CRLF: the bytes the SMTP client transmits
    (`engine.relay.compose.LineEnds`: aiosmtplib normalises them the same way before dot-stuffing)."""
    lines = LineEnds()
    return lines.feed(data) + lines.finish()


def _fold(value: str) -> str:
    """The tag list folded between tags and inside b= (FWS is allowed there, RFC 6376 §3.2)."""
    head, _, signature = value.rpartition(" b=")
    parts = head.rstrip(";").split("; ")
    lines, line = [], "DKIM-Signature: " + parts[0]
    for part in parts[1:]:
        if len(line) + len(part) + 2 > 76:
            lines.append(line + ";")
            line = " " + part
        else:
            line += "; " + part
    lines.append(line + ";")
    chunks = [signature[i : i + _B64_LINE] for i in range(0, len(signature), _B64_LINE)] or [""]
    lines.append(" b=" + chunks[0])
    lines += [" " + chunk for chunk in chunks[1:]]
    return "\r\n".join(lines) + "\r\n"


def _body_start(data: bytes, spans: Sequence[tuple[int, int, bytes]]) -> int:
    """Where the body of `data` (CRLF line ends) starts: after its header fields and the empty line."""
    start = spans[-1][1] if spans else 0
    return start + 2 if data[start : start + 2] == b"\r\n" else start


def _signature_field(signer: Signer, data: bytes, spans: Sequence[tuple[int, int, bytes]], body_hash: bytes,
                     now: float | None) -> bytes:
    """The folded DKIM-Signature field (CRLF-ended) for the header fields `spans` of `data` and the
    SHA-256 `body_hash` of the relaxed-canonical body."""
    names = signed_field_list(data)
    fields_by_name: dict[bytes, list[tuple[int, int]]] = {}
    for start, end, name in spans:
        fields_by_name.setdefault(name, []).append((start, end))
    hashed: list[bytes] = []
    for name in names:  # RFC 6376 §5.4.2: each occurrence of a name takes the next field from the bottom
        instances = fields_by_name.get(name)
        if not instances:
            continue  # absent (or used up): signed as null, which locks it out
        start, end = instances.pop()
        field = data[start:end]
        colon = field.index(b":")
        hashed.append(canonical_header(field[:colon], field[colon + 1 :], b"relaxed"))
    domain = signing_domain(signer, header_from_domain(data))
    algorithm = signer.algorithm.decode()
    tags = (f"v=1; a={algorithm}; c=relaxed/relaxed; d={domain}; s={signer.selector};"
            f" t={int(time.time() if now is None else now)}; h={':'.join(n.decode() for n in names)};"
            f" bh={base64.b64encode(body_hash).decode()}; b=")
    hashed.append(canonical_header(b"DKIM-Signature", tags.encode(), b"relaxed")[:-2])  # signed without its CRLF
    signed_data = b"".join(hashed)
    key = signer.key
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signed_data, padding.PKCS1v15(), hashes.SHA256())
    else:
        signature = key.sign(hashlib.sha256(signed_data).digest())
    return _fold(tags + base64.b64encode(signature).decode()).encode("ascii")


def sign(signer: Signer, data: bytes, now: float | None = None) -> bytes:
    """`as_sent(data)` with a DKIM-Signature field prepended (see the module docstring):
    relaxed/relaxed, SHA-256, RSASSA-PKCS1-v1_5 (RFC 6376 §3.3.1) or Ed25519 over the hash
    (RFC 8463 §3). CPU-bound: callers run it off the event loop for large messages."""
    data = as_sent(data)
    spans = list(fields(data))
    hasher = BodyHash("sha256", b"relaxed")
    hasher.update(memoryview(data)[_body_start(data, spans):])
    return _signature_field(signer, data, spans, hasher.digest(), now) + data


def sign_streamed(signer: Signer, copy: StreamedCopy, now: float | None = None) -> StreamedCopy:
    """`copy` with a DKIM-Signature field prepended to its head, as `sign` would sign
    `copy.head + b"".join(copy.body())`, with only a piece of the body in memory at a time: the
    body is read once here (blocking reads: callers run it off the event loop) and hashed as
    transmitted (`LineEnds`, the client's line-end normalisation), canonicalized piece by piece
    (`BodyHash`); it is read again when sent. `copy.head` holds the whole header section
    (`compose_streamed`)."""
    lines = LineEnds()
    head = lines.feed(copy.head)
    spans = list(fields(head))
    hasher = BodyHash("sha256", b"relaxed")
    hasher.update(memoryview(head)[_body_start(head, spans):])
    for piece in copy.body():
        hasher.update(lines.feed(piece))
    hasher.update(lines.finish())
    return replace(copy, head=_signature_field(signer, head, spans, hasher.digest(), now) + copy.head)
