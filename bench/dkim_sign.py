"""DKIM signing cost per outbound copy: the relay's signer (engine/relay/signing.py) against
dkimpy's `sign` as the baseline, measured in the same run (ratios, not absolute times).

    .venv/bin/python bench/dkim_sign.py [SIZE_KB ...]     # default: 4 50 1000
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import dkim

from engine.dkim.keys import dkimpy_private_key, generate_key
from engine.relay.signing import Signer, sign, signed_field_list

HEAD = (b"From: Alice <alice@acme.example>\r\nTo: bob@world.example\r\nSubject: numbers\r\n"
        b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <b@acme.example>\r\nMIME-Version: 1.0\r\n\r\n")


def per_call(fn: Callable[[], object], seconds: float = 1.0) -> float:
    calls, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        fn()
        calls += 1
    return (time.perf_counter() - started) / calls


def dkimpy_sign(message: bytes, pem: bytes, algorithm: bytes) -> bytes:
    return bytes(dkim.DKIM(message).sign(b"lp1", b"acme.example", pem, signature_algorithm=algorithm,
                                         canonicalize=(b"relaxed", b"relaxed"),
                                         include_headers=signed_field_list(message)))


def main(sizes: list[int]) -> None:
    for algorithm in ("rsa", "ed25519"):
        key = generate_key(algorithm)  # type: ignore[arg-type]
        alg = b"ed25519-sha256" if algorithm == "ed25519" else b"rsa-sha256"
        signer = Signer("acme", "lp1", ("acme.example",), key, alg)
        pem = dkimpy_private_key(key)
        for kb in sizes:
            line = b"The quarterly numbers  are\tfine, see the attached table. \r\n"
            message = HEAD + line * (kb * 1024 // len(line))
            ours = per_call(lambda s=signer, m=message: sign(s, m))  # type: ignore[misc]
            baseline = per_call(lambda m=message, p=pem, a=alg: dkimpy_sign(m, p, a))  # type: ignore[misc]
            print(f"{algorithm:8s} {kb:5d} KB  relay signer {ours * 1000:8.2f} ms  dkimpy {baseline * 1000:8.2f} ms"
                  f"  dkimpy/relay = {baseline / ours:5.1f}x")


if __name__ == "__main__":
    main([int(arg) for arg in sys.argv[1:]] or [4, 50, 1000])
