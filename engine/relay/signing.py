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
  else the tenant's first domain). The result is `DKIM-Signature:` + the bytes given, unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.dns.dkim import KeyProblem, dkimpy_private_key, load_key
from engine.mime.raw_headers import fields
from engine.policy.models import DkimKey

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
    private_key: bytes  # as dkimpy takes it (engine.dns.dkim.dkimpy_private_key)
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
        out[tenant] = Signer(tenant, spec.selector, spec.domains, dkimpy_private_key(loaded), algorithm)
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


def sign(signer: Signer, data: bytes) -> bytes:
    """`data` with a DKIM-Signature field prepended (see the module docstring). CPU-bound: callers
    run it off the event loop for large messages."""
    domain = signing_domain(signer, header_from_domain(data))
    signature = dkim.DKIM(data, linesep=b"\r\n").sign(
        signer.selector.encode("ascii"),
        domain.encode("ascii"),
        signer.private_key,
        signature_algorithm=signer.algorithm,
        canonicalize=(b"relaxed", b"relaxed"),
        include_headers=signed_field_list(data),
    )
    return bytes(signature) + data
