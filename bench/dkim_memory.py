"""Peak memory of DKIM on a large message (issue 7 item 10: at most 1.5 times the message size):
the code as it was (git BEFORE, default 0158aae: main when the piecewise DKIM work started)
against the code of this tree, measured in the same run.

    .venv/bin/python bench/dkim_memory.py [SIZE_MB]      # default: 25; KIND=base64 for a base64 body

Each case runs in a fresh process: it builds its input, resets the peak RSS (`echo 5 >
/proc/self/clear_refs`), runs, and reports VmHWM minus the RSS at the reset (the bytes the
operation added at its peak), as a multiple of the message size. Cases (before | now):
- sign-streamed: a StreamedCopy (the relay's copy of a stored message over 1 MB) signed; before,
  the worker joined it and called `sign`; now `sign_streamed` reads the spool file in pieces;
- sign-1mb: `sign` of the message's first 1 MB, in memory (the largest the relay signs that way);
- verify: the lean verifier (`Message.parse` + `confirm`) on the signed message, which the checks
  already hold in memory (not counted);
- verify-dkimpy: the fallback for what the lean verifier cannot confirm (a failing or unusual
  signature): before, dkimpy's own verification of the whole message; now, dkimpy on the header
  fields with the body hashed in pieces (`engine.checks.dkim.HeadersOnly`);
- verify-arc: ARC validation (RFC 8617) of the message sealed once: before, dkimpy's validator on
  the whole message; now, the same through `HeadersOnly`.
The body is text with white space runs (relaxed canonicalization changes every line) or base64.
"""

from __future__ import annotations

import base64
import os
import random
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import dkim
import dkim.canonicalization
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from engine.checks import arc as checks_arc
from engine.checks import dkim as checks_dkim
from engine.dkim import dkimpy_patch, verify
from engine.dkim.keys import generate_key, private_pem, public_record
from engine.dkim.message import Message
from engine.dns.resolver import DnsAnswer
from engine.relay import signing
from engine.relay.compose import compose_streamed

ROOT = Path(__file__).resolve().parent.parent
BEFORE = os.environ.get("BEFORE", "0158aae")
HEAD = (b"From: Alice <alice@acme.example>\r\nTo: bob@world.example\r\nSubject: numbers\r\n"
        b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\nMessage-ID: <m@acme.example>\r\nMIME-Version: 1.0\r\n\r\n")
CASES = ("sign-streamed", "sign-1mb", "verify", "verify-dkimpy", "verify-arc")


def former(path: str, name: str, imports: dict[str, str]) -> types.ModuleType:
    """The module at `path` as it was at BEFORE, loaded as `name` (its `imports` renamed)."""
    text = subprocess.run(["git", "show", f"{BEFORE}:{path}"], cwd=ROOT, capture_output=True, check=True).stdout
    source = text.decode()
    for old, new in imports.items():
        source = source.replace(old, new)
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(source, f"{BEFORE}:{path}", "exec"), module.__dict__)
    return module


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


def run_case(case: str, version: str, work: Path) -> None:
    """One case in this (fresh) process; its input read from `work` in one piece each (garbage
    left by building it would hide allocations: the allocator reuses freed, still resident memory)."""
    dkimpy_patch.install()  # as the checks run dkimpy (engine/checks/runner.py)
    verify_module: Any = verify  # (its Message is engine.dkim.message's)
    sign_module: Any = signing
    if version == "before":
        dkim.canonicalization.Relaxed.canonicalize_body = staticmethod(dkimpy_patch._RELAXED_BODY)  # dkimpy's
        verify_module = former("engine/checks/dkim_verify.py", "former_dkim_verify", {})
        sign_module = former("engine/relay/signing.py", "former_signing",
                             {"from engine.checks.dkim_verify import": "from former_dkim_verify import"})
    key = serialization.load_pem_private_key((work / "key.pem").read_bytes(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    signer = signing.Signer("acme", "lp1", ("acme.example",), key, b"rsa-sha256")
    record = public_record(key).encode()
    if case == "sign-streamed":
        with (work / "message.eml").open("rb") as spool:
            copy = compose_streamed(spool, b"", None)
            assert copy is not None
            size = copy.size
            before = reset_peak()
            if version == "before":  # what the relay's worker did
                signed = len(sign_module.sign(signer, copy.head + b"".join(copy.body())))
            else:
                signed = sum(map(len, signing.sign_streamed(signer, copy).chunks()))
    elif case == "sign-1mb":
        raw = (work / "small.eml").read_bytes()
        size = len(raw)
        before = reset_peak()
        signed = len(sign_module.sign(signer, raw))
    elif case == "verify-arc":
        raw = (work / "sealed.eml").read_bytes()
        size = signed = len(raw)
        answers = {"lp1._domainkey.acme.example": DnsAnswer("lp1._domainkey.acme.example", "TXT", "ok",
                                                            (record.decode(),))}
        before = reset_peak()
        if version == "before":  # dkimpy's ARC validator on the whole message
            cv = dkim.ARC(raw).verify(dnsfunc=checks_dkim.dnsfunc_from(answers))[0]
        else:
            cv = checks_arc._validate(Message.parse(raw), answers)[0]
        assert cv == dkim.CV_Pass, cv
    else:
        raw = (work / "signed.eml").read_bytes()
        size = signed = len(raw)
        tags = dkim.util.parse_tag_value(raw[len(b"DKIM-Signature:"):raw.index(b"\r\nFrom:")])
        before = reset_peak()
        if case == "verify":
            parsed = verify_module.Message.parse(raw)
            ok = verify_module.confirm(parsed, tags, tuple(parsed.headers[0]), record)
        elif version == "before":  # dkimpy on the whole message
            ok = dkim.verify(raw, dnsfunc=lambda name, timeout=5: record)
        else:  # the fallback as the checks run it: dkimpy on the header fields, the body hashed in pieces
            ok = checks_dkim._HeadersOnlyDKIM(Message.parse(raw)).verify(
                idx=0, dnsfunc=lambda name, timeout=5: record)
        assert ok, case
    added = rss("VmHWM") - before
    print(f"{case:14s} {version:6s} message {size / 2**20:6.1f} MB  peak added {added / 2**20:7.1f} MB"
          f"  = {added / size:5.2f}x the message  (output {signed / 2**20:.1f} MB)", flush=True)


def main(size_mb: float) -> None:
    key = generate_key("rsa")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "key.pem").write_bytes(private_pem(key))
        raw = message(int(size_mb * 2**20))
        (work / "message.eml").write_bytes(raw)
        (work / "small.eml").write_bytes(raw[: raw.index(b"\r\n", 2**20) + 2])
        with_ar = b"Authentication-Results: acme.example; dkim=none\r\n" + raw
        arc_set = dkim.arc_sign(with_ar, b"lp1", b"acme.example", private_pem(key), b"acme.example",
                                include_headers=[b"from", b"to", b"subject"])
        (work / "sealed.eml").write_bytes(b"".join(arc_set) + with_ar)
        del with_ar
        (work / "signed.eml").write_bytes(signing.sign(signing.Signer("acme", "lp1", ("acme.example",), key,
                                                                      b"rsa-sha256"), raw))
        del raw
        for case in CASES:
            for version in ("before", "now"):
                subprocess.run([sys.executable, __file__, "--case", case, version, str(work)], check=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--case"]:
        run_case(sys.argv[2], sys.argv[3], Path(sys.argv[4]))
    else:
        main(float(sys.argv[1]) if sys.argv[1:] else 25.0)
