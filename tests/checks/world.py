"""Test DNS world for the authentication checks: keys generated here, zones served by real nsd.

`build_world()` makes the DKIM keys (RSA 2048 and Ed25519 with `cryptography`) and the zone
texts; the tests' fixture serves them with `NsdServer`. Messages are signed inside the tests
with dkimpy (`sign`, `arc_seal`).
"""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa


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


def make_keys() -> Keys:
    rsa_pem, rsa_dns = _rsa(2048)
    list_pem, list_dns = _rsa(2048)
    short_pem, short_dns = _rsa(768)
    ed = ed25519.Ed25519PrivateKey.generate()
    seed = ed.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    pub = ed.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return Keys(rsa_pem, rsa_dns, base64.b64encode(seed), base64.b64encode(pub).decode(), list_pem, list_dns,
                short_pem, short_dns)


def txt(text: str) -> str:
    """A TXT rdata: the text split into quoted character-strings of at most 200 octets."""
    return " ".join('"' + text[i:i + 200].replace('"', '\\"') + '"' for i in range(0, len(text), 200)) or '""'


def zone(origin: str, records: list[str]) -> str:
    head = [f"$ORIGIN {origin}.", "$TTL 300",
            f"@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60", f"@ IN NS ns.{origin}.",
            "ns IN A 127.0.0.1"]
    return "\n".join(head + records) + "\n"


def build_zones(keys: Keys) -> dict[str, str]:
    chain = [f"c{n} IN TXT {txt(f'v=spf1 include:c{n + 1}.spf.test -all')}" for n in range(1, 11)]
    return {
        "sender.test": zone("sender.test", [
            f"@ IN TXT {txt('v=spf1 include:_spf.sender.test -all')}",
            f"_spf IN TXT {txt('v=spf1 include:_net.sender.test ~all')}",
            f"_net IN TXT {txt('v=spf1 ip4:192.0.2.0/24 ip6:2001:db8:1::/48 -all')}",
            f"_dmarc IN TXT {txt('v=DMARC1; p=reject; rua=mailto:dmarc@sender.test')}",
            f"rsa._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=' + keys.rsa_dns)}",
            f"ed._domainkey IN TXT {txt('v=DKIM1; k=ed25519; p=' + keys.ed_dns)}",
            f"revoked._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=')}",
            f"short._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=' + keys.short_dns)}",
        ]),
        "spf.test": zone("spf.test", [
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
        "quar.test": zone("quar.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=quarantine')}"]),
        "pnone.test": zone("pnone.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=none')}"]),
        "shop.test": zone("shop.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=none; sp=reject')}"]),
        "dup.test": zone("dup.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=reject')}",
                                      f"_dmarc IN TXT {txt('v=DMARC1; p=none')}"]),
        "pct.test": zone("pct.test", [f"_dmarc IN TXT {txt('v=DMARC1; p=reject; pct=50')}"]),
        "strict.test": zone("strict.test", [
            f"_dmarc IN TXT {txt('v=DMARC1; p=reject; adkim=s; aspf=s')}",
            f"rsa._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=' + keys.rsa_dns)}",
        ]),
        "list.test": zone("list.test", [
            f"@ IN TXT {txt('v=spf1 ip4:203.0.113.5 -all')}",
            f"arc._domainkey IN TXT {txt('v=DKIM1; k=rsa; p=' + keys.list_dns)}",
        ]),
    }


def message(from_: str = "Alice <alice@sender.test>", subject: str = "Quarterly figures",
            body_size: int = 2048, extra: str = "") -> bytes:
    """A plain message with a body of about `body_size` bytes."""
    line = "The figures for the quarter are attached in the usual place, see you Monday.\r\n"
    body = (line * (body_size // len(line) + 1))[:body_size]
    head = (f"From: {from_}\r\nTo: bob@acme.example\r\nSubject: {subject}\r\n"
            "Date: Tue, 01 Dec 2026 12:00:00 +0000\r\nMessage-ID: <m1@sender.test>\r\n" + extra)
    return (head + "MIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n" + body).encode()


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
