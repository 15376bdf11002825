"""Peak memory of DKIM on a large message (issue 7 item 10: ≤ 1.5× the message size in flight),
the former whole-message paths against the piecewise ones, measured in the same run.

    .venv/bin/python bench/dkim_memory.py [SIZE_MB]      # default: 25

Each case runs in a fresh process: it builds its input, resets the peak RSS (`echo 5 >
/proc/self/clear_refs`), runs, and reports VmHWM minus the RSS at the reset (bytes the operation
added at its peak), as a multiple of the message size. Cases:
- sign-whole: what the relay did with a StreamedCopy (`sign` of head + the body joined);
- sign-streamed: `sign_streamed` (the body read from the spool file in pieces);
- verify-whole: what the lean verifier did (`dkim.rfc822_parse` body copy, `canonical_body`, hash);
- verify-pieces: `Message.parse` + `confirm` (body hashed from offsets into the message);
- verify-dkimpy: dkimpy's own verification (the fallback for what the lean verifier cannot confirm).
The message already in memory (the checks get it as bytes) is not counted; the body is text
with white space runs (relaxed canonicalization copies every piece) or base64 (`KIND=base64`).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import dkim

from engine.checks import dkim_speedups
from engine.checks.dkim_verify import Message, canonical_body, confirm
from engine.dns.dkim import generate_key, public_record
from engine.relay.compose import compose_streamed
from engine.relay.signing import Signer, sign, sign_streamed

HEAD = (b"From: Alice <alice@acme.example>\r\nTo: bob@world.example\r\nSubject: numbers\r\n"
        b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m@acme.example>\r\nMIME-Version: 1.0\r\n\r\n")
CASES = ("sign-whole", "sign-streamed", "verify-whole", "verify-pieces", "verify-dkimpy")


def message(size: int) -> bytes:
    if os.environ.get("KIND") == "base64":
        blob = base64.b64encode(random.Random(1).randbytes(size * 3 // 4))
        return HEAD + b"\r\n".join(blob[i : i + 76] for i in range(0, len(blob), 76)) + b"\r\n"
    line = b"The quarterly numbers  are\tfine, see the attached table. \r\n"
    return HEAD + line * (size // len(line))


def rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return rss("VmRSS")


def run_case(case: str, size: int) -> None:
    dkim_speedups.install()  # as the checks run dkimpy (engine/checks/runner.py)
    key = generate_key("rsa")
    signer = Signer("acme", "lp1", ("acme.example",), key, b"rsa-sha256")
    record = public_record(key).encode()
    raw = message(size)
    with tempfile.TemporaryFile() as spool:
        if case.startswith("sign"):
            spool.write(raw)
            del raw
            copy = compose_streamed(spool, b"", None)
            assert copy is not None
            before = reset_peak()
            if case == "sign-whole":
                signed_size = len(sign(signer, copy.head + b"".join(copy.body())))
            else:
                signed_size = sum(map(len, sign_streamed(signer, copy).chunks()))
            size = copy.size
        else:
            raw = sign(signer, raw)
            field = dkim.util.parse_tag_value(raw[len(b"DKIM-Signature:"):raw.index(b"\r\nFrom:")])
            before = reset_peak()
            if case == "verify-whole":
                _, body = dkim.rfc822_parse(raw)
                ok = hashlib.sha256(canonical_body(body, b"relaxed")).digest() == base64.b64decode(field[b"bh"])
            elif case == "verify-pieces":
                parsed = Message.parse(raw)
                name, value = parsed.headers[0]
                ok = confirm(parsed, field, (name, value), record)
            else:
                ok = dkim.verify(raw, dnsfunc=lambda name, timeout=5: record)
            assert ok, case
            signed_size = size = len(raw)
    added = rss("VmHWM") - before
    print(f"{case:14s} message {size / 2**20:6.1f} MB  peak added {added / 2**20:7.1f} MB  = {added / size:4.2f}x"
          f"  (output {signed_size / 2**20:.1f} MB)")


def main(size_mb: float) -> None:
    size = int(size_mb * 2**20)
    for case in CASES:
        subprocess.run([sys.executable, __file__, "--case", case, str(size)], check=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:
        run_case(sys.argv[2], int(sys.argv[3]))
    else:
        main(float(sys.argv[1]) if sys.argv[1:] else 25.0)
