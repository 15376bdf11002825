"""dkimpy's RSA signature check through OpenSSL (`cryptography`) instead of Python integers.

dkimpy 1.1 verifies RSASSA-PKCS1-v1_5 signatures (RFC 8017 §8.2.2) with `pow` on Python ints
and converts the result byte by byte: about half of the CPU of verifying one DKIM signature,
and DKIM runs on every inbound message. `install()` replaces the function dkimpy calls
(`dkim.RSASSA_PKCS1_v1_5_verify`, used for DKIM and ARC) with one that gives the same answer:
True exactly when the signature, as an integer to the public exponent modulo the key, is the
EMSA-PKCS1-v1_5 encoding of the digest. Cases OpenSSL would treat differently (a signature
longer than the modulus, a hash other than SHA-1/SHA-256, a key OpenSSL refuses) go to
dkimpy's own function. `tests/checks/test_checks.py` compares both on valid and broken input.

`rfc822_parse` (header fields and CRLF body of a message, run three times per message by DKIM
verification) splits only the header section into lines; dkimpy splits the whole message and
joins the body again, which for a 50 KB message costs more than everything else together. The
body comes back unchanged when all its line ends are CRLF already (what SMTP delivers), else with
every LF or CRLF turned into CRLF, exactly as dkimpy's join does.

Its "relaxed" body canonicalization (RFC 6376 §3.4.4) is the lean verifier's
(`engine.dkim.canonical.canonical_body`, tested equal to dkimpy's on random bodies): dkimpy's three regex
passes over the whole body, each a copy, took ~34 times a 25 MB text body at peak when dkimpy
verified a large message (issue 7 item 10); this one works a span at a time, one copy in all.

It also remembers the last key records dkimpy parsed (`dkim.evaluate_pk`, a pure function of the
record text, pure-Python ASN.1 otherwise run twice per signature): a key record answered again
(DNS cache) is not parsed again. A record that fails to parse is not remembered.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import dkim
import dkim.canonicalization
import dkim.crypto
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, utils

from engine.dkim.canonical import canonical_body
from engine.dkim.keys import rsa_public_key

_ORIGINAL = dkim.crypto.RSASSA_PKCS1_v1_5_verify
_EVALUATE_PK = dkim.evaluate_pk
_RFC822_PARSE = dkim.rfc822_parse
_RELAXED_BODY = dkim.canonicalization.Relaxed.canonicalize_body  # dkimpy's own (the tests' reference)
_LINE_END = re.compile(rb"\r?\n")
_NAME_CHARS = bytes(range(0x21, 0x7F))  # field-name characters (RFC 5322 §2.2), deleted by translate
_HASHES: dict[str, hashes.HashAlgorithm] = {"sha256": hashes.SHA256(), "sha1": hashes.SHA1()}


def rsassa_pkcs1_v1_5_verify(hash: Any, signature: bytes, public_key: dict[str, int]) -> bool:
    """`dkim.crypto.RSASSA_PKCS1_v1_5_verify` with the same result, computed by OpenSSL."""
    algorithm = _HASHES.get(getattr(hash, "name", ""))
    modulus, exponent = public_key["modulus"], public_key["publicExponent"]
    size = (modulus.bit_length() + 7) // 8
    if algorithm is None or len(signature) > size:
        return bool(_ORIGINAL(hash, signature, public_key))
    key = rsa_public_key(modulus, exponent)
    if key is None:
        return bool(_ORIGINAL(hash, signature, public_key))
    try:  # dkimpy reads the signature as an integer: leading zero bytes may be missing
        key.verify(signature.rjust(size, b"\0"), hash.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))
    except InvalidSignature:
        return False
    return True


@lru_cache(maxsize=1024)
def _evaluate_pk_cached(name: bytes, record: bytes) -> tuple[Any, ...]:
    return tuple(_EVALUATE_PK(name, record))


def evaluate_pk(name: bytes, record: bytes | str) -> tuple[Any, ...]:
    """`dkim.evaluate_pk` (key record -> (key, bits, k=, tlsrpt)), remembered per record text."""
    if isinstance(record, str):
        record = record.encode("ascii")
    key, *rest = _evaluate_pk_cached(name, record)
    return (dict(key) if isinstance(key, dict) else key, *rest)  # a copy: callers may keep it


def rfc822_parse(message: bytes) -> tuple[list[list[bytes]], bytes]:
    """`dkim.rfc822_parse`: ([[name, value + CRLF], …], body with CRLF line ends); same answers and
    the same exceptions (dkimpy's MessageFormatError; IndexError for a leading continuation line)."""
    end = message.find(b"\r\n\r\n")
    if end > 0 and message[0] not in (0x0A, 0x0D):
        head = message[:end]
        if head.count(b"\n") == head.count(b"\r\n"):  # CRLF line ends only (what SMTP delivers)
            return _parse_lines(head.split(b"\r\n")), _crlf_body(message[end + 4:])
    headers: list[list[bytes]] = []
    pos, end = 0, len(message)
    while pos <= end:
        found = _LINE_END.search(message, pos)
        line = message[pos:found.start()] if found is not None else message[pos:]
        following = found.end() if found is not None else end + 1
        if not line:
            if found is None:
                return headers, b""
            return headers, _crlf_body(message[following:])
        _parse_lines([line], headers)
        pos = following
    return headers, b""


def _crlf_body(rest: bytes) -> bytes:
    return rest if rest.count(b"\n") == rest.count(b"\r\n") else _LINE_END.sub(b"\r\n", rest)


def _parse_lines(lines: list[bytes], headers: list[list[bytes]] | None = None) -> list[list[bytes]]:
    """Header lines (none empty) into [name, value + CRLF] fields, appended to `headers`."""
    headers = [] if headers is None else headers
    for line in lines:
        if line[0] in (0x09, 0x20):
            headers[-1][1] += line + b"\r\n"
            continue
        colon = line.find(b":")
        if colon > 0 and not line[:colon].translate(None, _NAME_CHARS):  # = _FIELD_NAME.match, faster
            headers.append([line[:colon], line[colon + 1:] + b"\r\n"])
        elif not line.startswith(b"From "):
            raise dkim.MessageFormatError(f"Unexpected characters in RFC822 header: {line!r}")
    return headers


def relaxed_body(body: bytes) -> bytes:
    """`dkim.canonicalization.Relaxed.canonicalize_body`, the same bytes with one copy."""
    return canonical_body(body, b"relaxed")


def install() -> None:
    """Make dkimpy (DKIM and ARC verification) use the functions above; idempotent."""
    dkim.RSASSA_PKCS1_v1_5_verify = rsassa_pkcs1_v1_5_verify
    dkim.evaluate_pk = evaluate_pk
    dkim.rfc822_parse = rfc822_parse
    dkim.canonicalization.Relaxed.canonicalize_body = staticmethod(relaxed_body)
