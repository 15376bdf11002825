"""A lean DKIM signature verifier (RFC 6376 §6.1.3) for the common case: it can only say "valid".

Why: dkimpy builds a `DKIM` object per message, canonicalizes every header field of the
message (three regex passes each) and hashes through Python wrappers; that was most of the CPU
the checks spent per message. This module hashes the same bytes with `hashlib`, canonicalizes
only the fields `h=` selects, and verifies with OpenSSL (`cryptography`, RSA) or libsodium
(`pynacl`, Ed25519) on public keys parsed once per key record text.

Contract: `confirm(message, tags, signature_field, key_record)` returns True only when the signature
verifies exactly as dkimpy would verify it — the same tag checks (dkimpy's own
`validate_signature_fields`: v=, a=, base64 syntax, i= within d=, l=, q=, t= not in the future,
x= not past), the same key record evaluation (dkimpy's `evaluate_pk`), the same header selection
(`select_headers`, plus dkimpy's extra From instance), the same canonicalizations (simple and
relaxed, RFC 6376 §3.4) and `l=` truncation. It returns False for anything it does not handle
or cannot confirm (an algorithm other than rsa-sha256/ed25519-sha256/rsa-sha1, a key of another
type or service, a bad signature, a body hash mismatch, …): the caller then lets dkimpy decide,
so every result other than `pass`, and its reason, is still dkimpy's.
`tests/dkim/test_dkim_verify.py` cross-checks both on valid and tampered messages signed by
dkimpy and by opendkim.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from functools import lru_cache
from typing import Any

import dkim
import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from engine.dkim.canonical import canonical_header
from engine.dkim.keys import rsa_public_key
from engine.dkim.message import Message

MIN_RSA_BITS = 1024  # RFC 8301 §3.2: shorter RSA keys are not accepted (dkimpy is given the same)

_H_SPLIT = re.compile(rb"\s*:\s*")
# dkimpy's RE_BTAG with its folding-whitespace pattern ((\s*\r?\n)?\s+)? written as the \s* it
# matches: the same matches (test_dkim_verify.py compares them), without its backtracking (~10x faster)
_BTAG = re.compile(rb"([;\s]b\s*=)(?:[\sa-zA-Z0-9+/=]*[a-zA-Z0-9+/=])?(?:\r?\n\Z)?")
_PADDING = padding.PKCS1v15()
# a= -> (the key type it needs, the hash); rsa-sha1 is obsolete (RFC 8301 §3.1) but dkimpy still
# accepts it, and so do we: this module only ever agrees with dkimpy
_ALGORITHMS: dict[bytes, tuple[bytes, str]] = {
    b"rsa-sha256": (b"rsa", "sha256"), b"ed25519-sha256": (b"ed25519", "sha256"), b"rsa-sha1": (b"rsa", "sha1"),
}
_PREHASHED = {"sha256": utils.Prehashed(hashes.SHA256()), "sha1": utils.Prehashed(hashes.SHA1())}


def without_signature(value: bytes) -> bytes:
    """The DKIM-Signature value with the b= tag's value removed (RFC 6376 §3.7), as dkimpy does."""
    return _BTAG.sub(b"\\1", value)


@lru_cache(maxsize=1024)
def _key(record: bytes) -> tuple[bytes, Any, int] | None:
    """(k=, a verifying key, bits) of a key record text, or None when dkimpy would not use it
    for mail (the same evaluation: dkimpy's `evaluate_pk`), remembered per record text."""
    try:
        pk, bits, ktag, tlsrpt = dkim.evaluate_pk(b"key", record)
    except (dkim.DKIMException, ValueError, TypeError, KeyError, IndexError, binascii.Error):
        return None
    if tlsrpt or pk is None:
        return None
    if ktag == b"rsa" and isinstance(pk, dict):
        key = rsa_public_key(int(pk["modulus"]), int(pk["publicExponent"]))
        return (b"rsa", key, int(bits)) if key is not None and bits >= MIN_RSA_BITS else None
    if ktag == b"ed25519" and isinstance(pk, nacl.signing.VerifyKey):
        return b"ed25519", pk, 256
    return None


def _b64(value: bytes) -> bytes:
    return base64.b64decode(b"".join(value.split()))  # split() and rb"\s" take the same 6 whitespace bytes


def confirm(message: Message, tags: dict[bytes, bytes], signature_field: tuple[bytes, bytes],
            key_record: bytes) -> bool:
    """True when the DKIM-Signature `signature_field` (name and value as parsed) with these `tags`
    verifies against `key_record`; False when not confirmed (see the module docstring)."""
    try:
        dkim.validate_signature_fields(tags)
    except dkim.DKIMException:
        return False
    algorithm = _ALGORITHMS.get(tags[b"a"])
    key = _key(key_record)
    if algorithm is None or key is None or key[0] != algorithm[0]:
        return False
    ktag, hash_name = algorithm
    c = tags.get(b"c", b"simple/simple").split(b"/")
    if len(c) == 1:
        c.append(b"simple")
    if len(c) != 2 or not all(part in (b"simple", b"relaxed") for part in c):
        return False
    header_canon, body_canon = c
    try:
        length = int(tags[b"l"]) if b"l" in tags else None
        if message.body_hash(hash_name, body_canon, length) != _b64(tags[b"bh"]):
            return False
        signature = _b64(tags[b"b"])
    except (ValueError, binascii.Error):
        return False
    include = [name.lower() for name in _H_SPLIT.split(tags[b"h"])]
    if b"from" in include:  # dkimpy hashes one more From instance (a second From breaks the signature)
        include.append(b"from")
    hasher = hashlib.new(hash_name)
    for name, value in dkim.select_headers(message.headers, include):
        hasher.update(canonical_header(name, value, header_canon))
    name, value = signature_field
    own = canonical_header(name, without_signature(value), header_canon)
    hasher.update(own.rstrip())  # §3.7: the signature field itself, b= empty, without its CRLF
    digest = hasher.digest()
    if ktag == b"ed25519":
        try:
            key[1].verify(digest, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
            return False
        return True
    public_key: rsa.RSAPublicKey = key[1]
    size = (public_key.key_size + 7) // 8
    if len(signature) > size:
        return False
    try:  # dkimpy reads the signature as an integer: leading zero bytes may be missing
        public_key.verify(signature.rjust(size, b"\0"), digest, _PADDING, _PREHASHED[hash_name])
    except InvalidSignature:
        return False
    return True
