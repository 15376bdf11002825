"""DKIM keys made for the test run, signing and ARC-sealing with dkimpy, and the DNS world of the
authentication checks (SPF, DKIM, DMARC, ARC).

`make_keys()` makes the keys of that world (RSA 2048 and Ed25519 with `cryptography`, a
forwarder's RSA key, a too-short RSA key with openssl); `auth_zones(keys)` are its zone texts
(served by nsd in tests/e2e/test_auth_checks_nsd.py, by `bench/auth_checks.py`); `make_key()`
is one RSA key with its TXT record, for a test's own zone. Messages are signed inside the tests
(`sign`, `arc_seal`); `AUTHOR` is the world's signed author and `auth_message` a message from them.
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from typing import Any

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from tests.support.messages import message
from tests.support.nsd import txt, zone_file


@dataclass(frozen=True)
class Keys:
    rsa_pem: bytes  # PKCS#1 PEM for dkimpy
    rsa_dns: str  # base64 SubjectPublicKeyInfo for p=
    ed_seed: bytes  # base64 raw private key for dkimpy (RFC 8463)
    ed_dns: str  # base64 raw public key for p=
    list_pem: bytes  # the forwarder's (ARC sealer's) RSA key
    list_dns: str
    short_pem: bytes  # a 768-bit RSA key (RFC 8301 forbids < 1024)
    short_dns: str


@dataclass(frozen=True)
class Key:
    pem: bytes
    record: str  # the TXT rdata of its `v=DKIM1; k=rsa; p=…` record, quoted for a zone file


def _rsa(bits: int) -> tuple[bytes, str]:
    if bits >= 1024:
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    else:  # `cryptography` refuses to make keys this short; openssl still does
        pem = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", f"rsa_keygen_bits:{bits}"],
                             check=True, capture_output=True).stdout
        loaded = serialization.load_pem_private_key(pem, None)
        assert isinstance(loaded, rsa.RSAPrivateKey)
        key = loaded
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


def make_key() -> Key:
    """One RSA 2048 key and its TXT record."""
    pem, public = _rsa(2048)
    return Key(pem, txt("v=DKIM1; k=rsa; p=" + public))


def make_keys() -> Keys:
    rsa_pem, rsa_dns = _rsa(2048)
    list_pem, list_dns = _rsa(2048)
    short_pem, short_dns = _rsa(768)
    ed = ed25519.Ed25519PrivateKey.generate()
    seed = ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Keys(rsa_pem, rsa_dns, base64.b64encode(seed), base64.b64encode(pub).decode(), list_pem, list_dns,
                short_pem, short_dns)


def _zone(origin: str, records: list[str]) -> str:
    return zone_file(origin, "\n".join(records))


def auth_zones(keys: Keys) -> dict[str, str]:
    """The zones of the authentication checks' world: SPF include and redirect chains, one chain over
    the 10-lookup limit, void lookups, the DKIM keys, DMARC records of every kind."""
    chain = [f"c{n} IN TXT {txt(f'v=spf1 include:c{n + 1}.spf.test -all')}" for n in range(1, 11)]
    return {
        "sender.test": _zone("sender.test", [
            f"@ IN TXT {txt('v=spf1 include:_spf.sender.test -all')}",
            f"_spf IN TXT {txt('v=spf1 include:_net.sender.test ~all')}",
            f"_net IN TXT {txt('v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:1::/48 -all')}",
            f"_dmarc IN TXT {txt('v=DMARC1; p=reject; rua=mailto:dmarc@sender.test')}",
            f"rsa._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=' + keys.rsa_dns)}",
            f"ed._domainkey IN TXT {txt('v=DKIM1; k=ed25519; p=' + keys.ed_dns)}",
            f"revoked._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=')}",
            f"short._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=' + keys.short_dns)}",
        ]),
        "spf.test": _zone("spf.test", [
            f"redir IN TXT {txt('v=spf1 redirect=_r1.spf.test')}",
            f"_r1 IN TXT {txt('v=spf1 redirect=_r2.spf.test')}",
            f"_r2 IN TXT {txt('v=spf1 a:mx1.spf.test ~all')}",
            "mx1 IN A 192.0.2.20",
            f"toomany IN TXT {txt('v=spf1 include:c1.spf.test -all')}",
            f"atlimit IN TXT {txt('v=spf1 include:c2.spf.test -all')}",
            *chain,
            f"c11 IN TXT {txt('v=spf1 ip4:192.0.2.99 -all')}",
            f"void IN TXT {txt('v=spf1 a:nx1.spf.test a:nx2.spf.test a:nx3.spf.test -all')}",
            f"void2 IN TXT {txt('v=spf1 a:nx1.spf.test a:nx2.spf.test -all')}",
            f"mta IN TXT {txt('v=spf1 ip4:192.0.2.30 -all')}",
            "mta IN A 192.0.2.30",
            "nospf IN A 192.0.2.31",
            f"expl IN TXT {txt('v=spf1 -all exp=why.spf.test')}",
            f"why IN TXT {txt('%{i} is not a mail server of %{d}')}",
            f"macro IN TXT {txt('v=spf1 exists:%{i}._allow.spf.test -all')}",
            "192.0.2.40._allow IN A 127.0.0.2",
            f"mxtest IN TXT {txt('v=spf1 mx -all')}",
            "mxtest IN MX 10 mx1.spf.test.",
        ]),
        "quar.test": _zone("quar.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=quarantine')}"]),
        "pnone.test": _zone("pnone.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=none')}"]),
        "shop.test": _zone("shop.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=none; sp=reject')}"]),
        "dup.test": _zone("dup.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=reject')}",
                                       f"_dmarc IN TXT {txt('v=DMARC1; p=none')}"]),
        "pct.test": _zone("pct.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=reject; pct=50')}"]),
        "strict.test": _zone("strict.test", [
            f"_dmarc IN TXT {txt('v=DMARC1; p=reject; adkim=s; aspf=s')}",
            f"rsa._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=' + keys.rsa_dns)}",
        ]),
        "list.test": _zone("list.test", [
            f"@ IN TXT {txt('v=spf1 ip4:203.0.113.5 -all')}",
            f"arc._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=' + keys.list_dns)}",
        ]),
    }


AUTHOR = "Alice <alice@sender.test>"
_LINE = "The figures for the quarter are attached in the usual place, see you Monday.\r\n"


def auth_message(sender: str = AUTHOR, body_size: int = 2048, **fields: Any) -> bytes:
    """A plain message from `sender` (the world's author by default) with a body of `body_size` bytes."""
    defaults: dict[str, Any] = {"subject": "Quarterly figures", "date": "Tue, 01 Dec 2026 12:00:00 +0000",
                                "message_id": "<m1@sender.test>"}
    return message(_LINE, raw=True, sender=sender, body_size=body_size, **{**defaults, **fields})


SIGNED = [b"from", b"to", b"subject", b"date", b"message-id"]


def sign(raw: bytes, selector: str, domain: str, key: bytes, algorithm: bytes = b"rsa-sha256") -> bytes:
    """`raw` with a DKIM-Signature prepended (dkimpy)."""
    header = dkim.sign(raw, selector.encode(), domain.encode(), key, include_headers=SIGNED,
                       signature_algorithm=algorithm)
    return bytes(header) + raw


def arc_seal(raw: bytes, auth_results: str, selector: str, domain: str, key: bytes) -> bytes:
    """What a forwarder does: record what it saw (A-R), then add its ARC set (dkimpy)."""
    srv_id = domain
    with_ar = f"Authentication-Results: {srv_id}; {auth_results}\r\n".encode() + raw
    arc_set = dkim.arc_sign(with_ar, selector.encode(), domain.encode(), key, srv_id.encode(),
                            include_headers=SIGNED)
    return b"".join(arc_set) + with_ar
