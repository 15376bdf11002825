"""DKIM keys: the tenants' signing keys (generation, loading, the public key record) and the
OpenSSL form of a verifying RSA key.

Contract:
- a key is stored as PEM where `outbound.dkim.private_key` points (relative to the policy
  directory) or read from the environment variable of `env:NAME` (the PEM text itself);
- RSA keys are written as PKCS#1 (`BEGIN RSA PRIVATE KEY`, what `opendkim-genkey` writes),
  Ed25519 keys as PKCS#8 (`BEGIN PRIVATE KEY`);
- `write_new_key` creates the file with mode 0600 and O_EXCL: it never overwrites a key, and
  nothing is left behind when it fails; the private key is never printed or logged;
- `public_record` is the TXT data of `SELECTOR._domainkey.DOMAIN` (RFC 6376 §3.6.1): `k=rsa`
  with the DER SubjectPublicKeyInfo, or `k=ed25519` with the raw 32-byte key (RFC 8463 §4.2);
- results are values: `load_key` returns a `KeyProblem` instead of raising.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from engine.policy.models import DkimKey

ENV_PREFIX = "env:"
Algorithm = Literal["rsa", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
RSA_BITS = 2048


@dataclass(frozen=True, slots=True)
class KeyProblem:
    """Why a key could not be read: `missing` (create it with keygen) or `invalid`."""

    kind: Literal["missing", "invalid"]
    where: str  # the path or env:NAME as written in the policy
    message: str


def key_location(root: Path, key: DkimKey) -> Path | None:
    """The file a tenant's key lives in (relative paths against the policy dir); None for env:NAME."""
    if key.private_key.startswith(ENV_PREFIX):
        return None
    path = Path(key.private_key)
    return path if path.is_absolute() else root / path


def load_key(root: Path, key: DkimKey) -> PrivateKey | KeyProblem:
    """The private key the policy points at, or why it cannot be used."""
    where = key.private_key
    path = key_location(root, key)
    if path is None:
        name = where[len(ENV_PREFIX):]
        text = os.environ.get(name)
        if not text:
            return KeyProblem("missing", where, f"environment variable {name} is not set")
        data = text.encode()
    else:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return KeyProblem("missing", where, f"key file {path} does not exist")
        except OSError as exc:
            return KeyProblem("invalid", where, f"cannot read key file {path}: {exc.strerror}")
    try:
        loaded = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        return KeyProblem("invalid", where, f"{where} is not an unencrypted PEM private key: {exc}")
    if isinstance(loaded, rsa.RSAPrivateKey):
        if loaded.key_size < 1024:
            return KeyProblem("invalid", where, f"{where}: RSA key of {loaded.key_size} bits (RFC 8301 §3.2: >= 1024)")
        return loaded
    if isinstance(loaded, ed25519.Ed25519PrivateKey):
        return loaded
    return KeyProblem("invalid", where, f"{where}: {type(loaded).__name__} keys cannot sign DKIM (rsa or ed25519)")


def generate_key(algorithm: Algorithm, bits: int = RSA_BITS) -> PrivateKey:
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def private_pem(key: PrivateKey) -> bytes:
    """PEM of the private key: PKCS#1 for RSA, PKCS#8 for Ed25519 (see the module docstring)."""
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if isinstance(key, rsa.RSAPrivateKey)
        else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def dkimpy_private_key(key: PrivateKey) -> bytes:
    """The key as `dkim.sign(privkey=…)` expects it: PEM for RSA, base64 of the raw 32 bytes for
    Ed25519 (dkimpy's RFC 8463 format)."""
    if isinstance(key, rsa.RSAPrivateKey):
        return private_pem(key)
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    return base64.b64encode(raw)


def write_new_key(path: Path, key: PrivateKey) -> str | None:
    """Create `path` (mode 0600, parent directories 0700) holding `key`; None on success, else why not.
    An existing file is never overwritten."""
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return f"{path} already exists: refusing to overwrite a key (move it away to rotate)"
    except OSError as exc:
        return f"cannot create {path}: {exc.strerror}"
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(private_pem(key))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(path, 0o600)  # whatever the umask was
    except OSError as exc:
        path.unlink(missing_ok=True)
        return f"cannot write {path}: {exc.strerror}"
    return None


def public_record(key: PrivateKey) -> str:
    """TXT data of the DKIM key record: `v=DKIM1; k=rsa|ed25519; p=BASE64`."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode()}"
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"


@lru_cache(maxsize=1024)
def rsa_public_key(modulus: int, exponent: int) -> rsa.RSAPublicKey | None:
    """The OpenSSL key for these numbers (made once per key), or None when OpenSSL refuses them."""
    try:
        return rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except (ValueError, UnsupportedAlgorithm):
        return None
