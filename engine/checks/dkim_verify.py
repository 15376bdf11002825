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
`tests/checks/test_dkim_verify.py` cross-checks both on valid and tampered messages signed by
dkimpy and by opendkim.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import dkim
import nacl.exceptions
import nacl.signing
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

from engine.checks.dkim_speedups import rsa_public_key

MIN_RSA_BITS = 1024  # RFC 8301 §3.2: shorter RSA keys are not accepted (dkimpy is given the same)

_WSP_RUN = re.compile(rb"\t[\t ]*| [\t ]+")  # WSP runs that are not already one SP (most are): the same result
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


BODY_PIECE = 1024 * 1024  # bytes of body canonicalized and hashed at a time
_BARE_LF = re.compile(rb"(?<!\r)\n")
RELAXED_SPAN = 64 * 1024  # bytes canonicalized by "relaxed" at a time (its line list: ~10x that)
_WSP = (0x20, 0x09)  # SP, HTAB


def body_start(raw: bytes) -> int:
    """Where dkimpy's `rfc822_parse` starts the body: after the first empty line (lines end at
    CRLF or LF); `len(raw)` when there is none."""
    if raw.startswith(b"\n"):
        return 1
    if raw.startswith(b"\r\n"):
        return 2
    crlf = raw.find(b"\n\r\n")
    lf = raw.find(b"\n\n", 0, len(raw) if crlf < 0 else crlf + 2)
    if lf >= 0:
        return lf + 2
    return len(raw) if crlf < 0 else crlf + 3


@dataclass(slots=True)
class Message:
    """One message's header fields (as `dkim.rfc822_parse` gives them) and where its body starts in
    `raw` (never copied whole), parsed once for all its signatures, with the canonical body hashes
    computed so far."""

    headers: list[list[bytes]]
    raw: bytes
    body_offset: int
    _body_hashes: dict[tuple[str, bytes, int | None], bytes] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes) -> Message:
        start = body_start(raw)
        headers, _ = dkim.rfc822_parse(raw[:start])  # the header section only: the same fields
        return cls(headers, raw, start)

    def body_pieces(self) -> Iterator[bytes | memoryview]:
        """The body as dkimpy's `rfc822_parse` gives it (every line end CRLF: an LF without its
        CR gets one, RFC 6376 §3.4), in pieces of about BODY_PIECE bytes, none ending with CR."""
        raw, pos, end = self.raw, self.body_offset, len(self.raw)
        view = memoryview(raw)
        while pos < end:
            cut = min(pos + BODY_PIECE, end)
            while cut < end and raw[cut - 1] == 0x0D:  # a CR and the LF after it stay together
                cut += 1
            if raw.count(b"\n", pos, cut) != raw.count(b"\r\n", pos, cut):
                yield _BARE_LF.sub(b"\r\n", raw[pos:cut])
            else:
                yield view[pos:cut]
            pos = cut

    def body_hash(self, hash_name: str, algorithm: bytes, length: int | None) -> bytes:
        """The `hash_name` digest of the body canonicalized by `algorithm` (b"simple"/b"relaxed"), cut at l=."""
        key = (hash_name, algorithm, length)
        digest = self._body_hashes.get(key)
        if digest is None:
            hasher = BodyHash(hash_name, algorithm, length)
            for piece in self.body_pieces():
                hasher.update(piece)
            digest = self._body_hashes[key] = hasher.digest()
        return digest


def _relaxed_lines(data: bytes) -> bytes:
    """§3.4.4 a and b on `data` (WSP before each CRLF removed, not before its end; WSP runs made
    one SP); trailing empty lines are `BodyCanonicalizer`'s business."""
    if b" \r\n" in data or b"\t\r\n" in data:
        lines = data.split(b"\r\n")
        data = b"\r\n".join([*(line.rstrip(b" \t") for line in lines[:-1]), lines[-1]])
    if b"  " in data or b"\t" in data:
        data = _WSP_RUN.sub(b" ", data)
    return data


class BodyCanonicalizer:
    """The body canonicalized by "simple" (RFC 6376 §3.4.3) or "relaxed" (§3.4.4), as dkimpy does
    it on the whole body, of a body fed in pieces cut anywhere: `feed` each piece, then `finish`;
    the canonical bytes go to `write`, in order, in pieces.

    Both are line-local but for the end: a CR that ends a piece is held back (an LF may follow),
    and in "relaxed" the WSP run before it (a CRLF may follow: the run goes; else it becomes one
    SP, so at most " \r" is held); so are the CRLFs that end the output so far (only a count:
    trailing empty lines go, §3.4.3). Memory: "simple" writes slices of the pieces given;
    "relaxed" works on RELAXED_SPAN bytes at a time (a copy, and its lines when it has WSP to
    change), whatever the size of the pieces."""

    __slots__ = ("_content", "_empty", "_relaxed", "_tail", "_write")

    def __init__(self, algorithm: bytes, write: Callable[[bytes | memoryview], object]) -> None:
        if algorithm not in (b"simple", b"relaxed"):
            raise ValueError(f"unknown body canonicalization {algorithm!r}")
        self._relaxed = algorithm == b"relaxed"
        self._write = write
        self._tail = b""  # held back from the end of the last piece (SP, HTAB, CR only)
        self._empty = 0  # CRLFs that end the output so far, not yet written
        self._content = False  # whether anything but CRLFs was written

    def feed(self, piece: bytes | memoryview) -> None:
        if not self._relaxed or len(piece) <= RELAXED_SPAN:
            self._feed(piece)
            return
        view = memoryview(piece)  # "relaxed" splits what it changes into lines: a span at a time
        for at in range(0, len(view), RELAXED_SPAN):
            self._feed(view[at : at + RELAXED_SPAN])

    def _feed(self, piece: bytes | memoryview) -> None:
        if self._tail:
            piece = self._tail + piece
        cut = len(piece)
        if cut and piece[cut - 1] == 0x0D:  # it may pair with an LF
            cut -= 1
        if self._relaxed:  # WSP may precede a CRLF (then it goes)
            while cut and piece[cut - 1] in _WSP:
                cut -= 1
        tail = bytes(piece[cut:])
        if self._relaxed and len(tail) > 2:  # a WSP run becomes one SP anyway: the tail stays short
            tail = b" \r" if tail.endswith(b"\r") else b" "
        self._tail = tail
        if cut:
            self._canonical(piece if cut == len(piece) else memoryview(piece)[:cut])

    def finish(self) -> None:
        """The rest: the last line when it has no CRLF, then one CRLF after the last non-empty line
        (an empty body: CRLF in "simple", nothing in "relaxed")."""
        if self._tail:
            self._canonical(self._tail)
            self._tail = b""
        if self._content or not self._relaxed:
            self._write(b"\r\n")

    def _canonical(self, data: bytes | memoryview) -> None:
        """`data` (not ending with SP, HTAB or CR) canonicalized, its trailing CRLFs held back."""
        if self._relaxed:
            data = _relaxed_lines(data if isinstance(data, bytes) else bytes(data))
        size = end = len(data)
        while end >= 2 and data[end - 1] == 0x0A and data[end - 2] == 0x0D:
            end -= 2
        if end:
            if self._empty:
                self._write(b"\r\n" * self._empty)
            self._write(data if end == size else memoryview(data)[:end])
            self._content = True
            self._empty = 0
        self._empty += (size - end) // 2


class BodyHash:
    """The digest of a body fed in pieces, canonicalized by `algorithm` (`BodyCanonicalizer`),
    of its first `length` canonical bytes when given (l=, RFC 6376 §3.5)."""

    __slots__ = ("_canonicalizer", "_hash", "_left")

    def __init__(self, hash_name: str, algorithm: bytes, length: int | None = None) -> None:
        self._hash = hashlib.new(hash_name)
        self._left = length
        self._canonicalizer = BodyCanonicalizer(algorithm, self._take)

    def update(self, piece: bytes | memoryview) -> None:
        self._canonicalizer.feed(piece)

    def digest(self) -> bytes:
        self._canonicalizer.finish()
        return self._hash.digest()

    def _take(self, data: bytes | memoryview) -> None:
        if self._left is not None:
            if len(data) > self._left:
                data = data[: self._left]
            self._left -= len(data)
        self._hash.update(data)


def canonical_body(body: bytes, algorithm: bytes) -> bytes:
    """The body canonicalized by "simple" (§3.4.3) or "relaxed" (§3.4.4), as dkimpy does it: `body`
    itself when that changes nothing (a body ending with one CRLF, in "relaxed" also without WSP
    to change: base64, most text), else `BodyCanonicalizer`'s pieces joined."""
    if body.endswith(b"\r\n") and not body.endswith(b"\r\n\r\n") and (algorithm == b"simple" or (
            body != b"\r\n" and b"\t" not in body and b"  " not in body and b" \r\n" not in body)):
        return body
    out: list[bytes | memoryview] = []
    canonicalizer = BodyCanonicalizer(algorithm, out.append)
    canonicalizer.feed(body)
    canonicalizer.finish()
    return b"".join(out)


def canonical_header(name: bytes, value: bytes, algorithm: bytes) -> bytes:
    """`name:value` canonicalized by "simple" (§3.4.1) or "relaxed" (§3.4.2), as dkimpy does it."""
    if algorithm == b"simple":
        return name + b":" + value
    value = value.replace(b"\r\n", b"").replace(b"\n", b"")  # = re.sub(rb"\r?\n", b"", value)
    if b"\t" in value or b"  " in value:
        value = _WSP_RUN.sub(b" ", value)
    return name.lower().rstrip() + b":" + value.strip() + b"\r\n"


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
