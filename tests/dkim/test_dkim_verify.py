"""The lean DKIM verifier (engine/dkim/verify.py) against dkimpy, on messages signed by
dkimpy (RSA and Ed25519, every canonicalization pair, with and without l=) and by opendkim
(`opendkim-testmsg`: rsa-sha1, relaxed/simple): valid ones, tampered bodies and headers, a
second From, appended content. The verifier may only ever say "valid" when dkimpy says so, and
must say it for the valid ones (else it would be useless, and the speed-up gone)."""

from __future__ import annotations

import asyncio
import base64
import random
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import dkim
import pytest

from engine.checks import dkim as dkim_module
from engine.checks.dkim import verify_dkim
from engine.dkim import canonical, dkimpy_patch, verify
from engine.dkim.message import Message
from engine.dns.resolver import DnsAnswer
from tests.support.keys import Keys, arc_seal, auth_message
from tests.support.resolvers import FakeResolver

CANONICALIZATIONS = [b"simple/simple", b"relaxed/relaxed", b"relaxed/simple", b"simple/relaxed"]
ALGORITHMS = [b"rsa-sha256", b"ed25519-sha256"]
SIGNED = [b"from", b"to", b"subject", b"date", b"x-absent", b"subject"]  # an absent field, one signed twice


def base_message() -> bytes:
    """Whitespace the canonicalizations treat differently: folds, tabs, runs, trailing blanks."""
    return (b"From: Alice   <alice@sender.test>\r\n"
            b"To: bob@acme.example,\r\n\tcarol@acme.example\r\n"
            b"Subject:  Quarterly \t figures  \r\n"
            b"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n"
            b"Received: from a by b\r\n"
            b"subject: a second subject field\r\n"
            b"\r\n"
            b"The figures  are\tattached. \t\r\n"
            b"  indented line\r\n"
            b"\r\n"
            b"last line\r\n"
            b"\r\n\r\n")


def key_record(keys: Keys, algorithm: bytes) -> bytes:
    if algorithm.startswith(b"ed25519"):
        return f"v=DKIM1; k=ed25519; p={keys.ed_dns}".encode()
    return f"v=DKIM1; k=rsa; p={keys.rsa_dns}".encode()


def signed(keys: Keys, raw: bytes, algorithm: bytes, canon: bytes, length: bool = False) -> bytes:
    key = keys.ed_seed if algorithm.startswith(b"ed25519") else keys.rsa_pem
    header_canon, body_canon = canon.split(b"/")
    field = dkim.sign(raw, b"sel", b"sender.test", key, include_headers=SIGNED, signature_algorithm=algorithm,
                      canonicalize=(header_canon, body_canon), length=length)
    return bytes(field) + raw


def both(raw: bytes, record: bytes) -> tuple[bool, bool]:
    """(dkimpy's answer, the lean verifier's) for the first DKIM-Signature of `raw` (a message
    dkimpy cannot parse: (False, False) when the lean parse refuses it too)."""
    try:
        message = Message.parse(raw)
    except dkim.MessageFormatError:
        with pytest.raises(dkim.MessageFormatError):
            dkim.verify(raw, dnsfunc=lambda name, timeout=5: record, minkey=1024)
        return False, False
    reference = bool(dkim.verify(raw, dnsfunc=lambda name, timeout=5: record, minkey=1024))
    name, value = next(f for f in message.headers if f[0].lower() == b"dkim-signature")
    tags = dkim.util.parse_tag_value(value)
    return reference, verify.confirm(message, tags, (name, value), record)


TAMPERINGS: dict[str, Callable[[bytes], bytes]] = {
    "valid": lambda m: m,
    "body changed": lambda m: m.replace(b"attached", b"attacked"),
    "body appended": lambda m: m + b"Unsubscribe: http://list.example/\r\n",
    "header changed": lambda m: m.replace(b"Quarterly", b"Quarterlx"),
    "signed field added": lambda m: m.replace(b"Received:", b"Subject: injected\r\nReceived:"),
    "second From": lambda m: m.replace(b"Received:", b"From: mallory@evil.example\r\nReceived:"),
    "whitespace inside body": lambda m: m.replace(b"figures  are", b"figures    are"),
    "whitespace inside header": lambda m: m.replace(b"Subject:  Quarterly", b"Subject:    Quarterly"),
    "header folded": lambda m: m.replace(b"Subject:  Quarterly \t", b"Subject:  Quarterly\r\n \t"),
    "trailing blank lines": lambda m: m + b"\r\n\r\n",
    "unsigned field added": lambda m: m.replace(b"Received:", b"X-Mailer: x\r\nReceived:"),
    "signature tag changed": lambda m: m.replace(b"s=sel;", b"s=sel ;", 1),
}


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("canon", CANONICALIZATIONS)
@pytest.mark.parametrize("length", [False, True], ids=["whole-body", "l="])
def test_agrees_with_dkimpy(keys: Keys, algorithm: bytes, canon: bytes, length: bool) -> None:
    original = signed(keys, base_message(), algorithm, canon, length)
    record = key_record(keys, algorithm)
    answers = {name: both(tamper(original), record) for name, tamper in TAMPERINGS.items()}
    assert answers["valid"] == (True, True)
    assert answers["body changed"] == (False, False)
    assert answers["header changed"] == (False, False)
    assert answers["second From"] == (False, False)  # dkimpy hashes the extra From instance
    assert answers["body appended"] == ((True, True) if length else (False, False))  # RFC 6376 §8.2
    relaxed_body, relaxed_head = canon.endswith(b"/relaxed"), canon.startswith(b"relaxed/")
    assert answers["whitespace inside body"] == (relaxed_body, relaxed_body)
    assert answers["whitespace inside header"] == (relaxed_head, relaxed_head)
    for name, (reference, lean) in answers.items():
        assert lean == reference, name


def test_agrees_with_dkimpy_on_random_whitespace(keys: Keys) -> None:
    """Messages with random runs of spaces, tabs, blank lines and folds, every canonicalization:
    what one signs, the other verifies; a random byte flipped, neither does (unless whitespace)."""
    rng = random.Random(6376)
    pieces = [b"a", b"bc", b" ", b"\t", b"  ", b"\r\n", b"\r\n\r\n", b" \r\n", b"\t\r\n", b"x y"]
    for round_ in range(40):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
        subject = b"".join(rng.choice([b"w", b" ", b"\t", b"\r\n "]) for _ in range(rng.randrange(1, 10)))
        raw = (b"From: a@sender.test\r\nTo: b@acme.example\r\nSubject: s" + subject + b"\r\n"
               b"Date: Tue, 01 Dec 2026 12:00:00 +0000\r\n\r\n" + body)
        algorithm, canon = rng.choice(ALGORITHMS), rng.choice(CANONICALIZATIONS)
        message = signed(keys, raw, algorithm, canon, length=rng.random() < 0.3)
        record = key_record(keys, algorithm)
        assert both(message, record) == (True, True), (round_, message)
        position = rng.randrange(message.index(b"\r\nFrom:"), len(message))
        flipped = message[:position] + bytes([message[position] ^ 0x20]) + message[position + 1:]
        reference, lean = both(flipped, record)
        assert lean == reference, (round_, flipped)


def test_key_problems_are_left_to_dkimpy(keys: Keys) -> None:
    raw = signed(keys, base_message(), b"rsa-sha256", b"relaxed/relaxed")
    for record in [
        f"v=DKIM1; k=ed25519; p={keys.ed_dns}".encode(),  # the wrong key type for a=
        f"v=DKIM1; k=rsa; p={keys.short_dns}".encode(),  # 768 bits (RFC 8301)
        f"v=DKIM1; k=rsa; s=tlsrpt; p={keys.rsa_dns}".encode(),  # not a mail key (RFC 8460)
        b"v=DKIM1; k=rsa; p=",  # revoked
        b"v=DKIM2; k=rsa; p=" + keys.rsa_dns.encode(),
    ]:
        message = Message.parse(raw)
        name, value = message.headers[0]
        assert not verify.confirm(message, dkim.util.parse_tag_value(value), (name, value), record), record


def test_post_dated_signatures_are_left_to_dkimpy(keys: Keys, monkeypatch: pytest.MonkeyPatch) -> None:
    """dkimpy's tag checks apply (here t= two days ahead: RFC 6376 §3.5 allows clock slop only)."""
    import time

    raw = base_message()
    real = time.time()
    monkeypatch.setattr(time, "time", lambda: real + 2 * 86400)
    future = dkim.sign(raw, b"sel", b"sender.test", keys.rsa_pem, include_headers=SIGNED)
    monkeypatch.setattr(time, "time", lambda: real)
    assert b" t=" in future
    assert both(bytes(future) + raw, key_record(keys, b"rsa-sha256")) == (False, False)


def opendkim_sign(tmp_path: Path, keys: Keys, raw: bytes) -> bytes:
    """`raw` signed by opendkim (rsa-sha1, relaxed/simple: opendkim-testmsg's fixed choice).
    opendkim-testmsg 2.11 prints the last base64 group of b= twice ("...5w==6NkH5w=="); the
    repeat is removed (dkimpy and the lean verifier agree on the result either way)."""
    key = tmp_path / "opendkim.pem"
    key.write_bytes(keys.rsa_pem)
    done = subprocess.run(["opendkim-testmsg", "-d", "sender.test", "-k", str(key), "-s", "od"],
                          input=raw.replace(b"\r\n", b"\n"), capture_output=True, check=True)
    assert done.stdout.startswith(b"DKIM-Signature:"), done.stderr
    out = re.sub(rb"(\sb=[^=;]*?==)[A-Za-z0-9+/]*==", rb"\1", done.stdout, count=1)
    return out.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def test_agrees_with_dkimpy_on_opendkim_signatures(tmp_path: Path, keys: Keys) -> None:
    raw = base_message().replace(b"subject: a second subject field\r\n", b"")
    signed_by_opendkim = opendkim_sign(tmp_path, keys, raw)
    assert b"a=rsa-sha1; c=relaxed/simple;" in signed_by_opendkim
    record = key_record(keys, b"rsa-sha256")
    answers = {name: both(tamper(signed_by_opendkim), record) for name, tamper in TAMPERINGS.items()}
    assert answers["valid"] == (True, True)
    assert answers["header folded"] == (True, True)  # relaxed headers
    assert answers["whitespace inside body"] == (False, False)  # simple body
    for name, (reference, lean) in answers.items():
        assert lean == reference, name


def test_verify_dkim_passes_with_the_lean_verifier_and_fails_with_dkimpys_reason(keys: Keys) -> None:
    raw = signed(keys, base_message(), b"rsa-sha256", b"relaxed/relaxed")
    fake = FakeResolver({"sel._domainkey.sender.test": [("TXT", key_record(keys, b"rsa-sha256").decode())]})
    calls: list[int] = []
    original = dkim.DKIM.verify

    def counting(self: dkim.DKIM, *args: object, **kwargs: object) -> object:
        calls.append(1)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    dkimpy_patch.install()
    dkim.DKIM.verify = counting  # type: ignore[method-assign]
    try:
        (ok,) = asyncio.run(verify_dkim(fake, raw))
        assert (ok.result, ok.reason, calls) == ("pass", "", [])  # confirmed without dkimpy
        (bad,) = asyncio.run(verify_dkim(fake, raw.replace(b"attached", b"attacked")))
        assert bad.result == "fail" and bad.reason.startswith("body-hash-mismatch") and calls == [1]
    finally:
        dkim.DKIM.verify = original  # type: ignore[method-assign]


def test_canonicalization_helpers_match_dkimpys() -> None:
    """Random header values and signature fields: the lean b= removal and relaxed header
    canonicalization give dkimpy's bytes (its RE_BTAG and Relaxed.canonicalize_headers)."""
    from dkim.canonicalization import Relaxed, Simple

    rng = random.Random(8601)
    alphabet = [b"b", b"=", b";", b" ", b"\t", b"\r\n", b"\n", b"\r", b"a", b"Z", b"+", b"/", b"0", b"bh", b"x",
                b"\x0b"]
    for _ in range(3000):
        value = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40)))
        assert verify.without_signature(value) == dkim.RE_BTAG.sub(b"\\1", value), value
        name = rng.choice([b"Subject", b"X-Y ", b"dkim-Signature"])
        expected = b"%s:%s" % Relaxed.canonicalize_headers([(name, value)])[0]
        assert canonical.canonical_header(name, value, b"relaxed") == expected, value
        assert canonical.canonical_body(value, b"relaxed") == dkimpy_patch._RELAXED_BODY(value), value
        assert canonical.canonical_body(value, b"simple") == Simple.canonicalize_body(value), value


# ---------------------------------------------------------------- the dkimpy fallback, body-free


def _dkimpy_on_the_whole_message(raw: bytes, record: bytes | None) -> tuple[bool, str]:
    """What dkimpy says of the first signature given the whole message (the fallback's reference:
    the mapping `engine.checks.dkim._verify_all` applies to dkimpy's answer)."""
    verifier = dkim.DKIM(raw, minkey=dkim_module.MIN_RSA_BITS)
    try:
        ok = bool(verifier.verify(idx=0, dnsfunc=lambda name, timeout=5: record))
        return ok, "" if ok else "bad-signature"
    except dkim.ValidationError as exc:
        text = str(exc)
        return False, f"{'body-hash-mismatch' if 'body hash' in text else 'signature-invalid'}: {text}"
    except (dkim.DKIMException, *dkim_module.LIBRARY_ERRORS) as exc:
        return False, f"permerror:{type(exc).__name__}: {exc}"


def _fallback(raw: bytes, record: bytes | None) -> tuple[bool, str]:
    answer = DnsAnswer("sel._domainkey.sender.test", "TXT", "ok" if record else "nxdomain",
                       (record.decode(),) if record else ())
    return dkim_module._verify_all(Message.parse(raw), [0], {answer.name: answer})[0]


def _small_rsa_record() -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)


@pytest.mark.parametrize("algorithm", [*ALGORITHMS, b"rsa-sha1"])
@pytest.mark.parametrize("canon", CANONICALIZATIONS)
@pytest.mark.parametrize("length", [False, True], ids=["whole-body", "l="])
def test_the_body_free_fallback_says_what_dkimpy_says_of_the_whole_message(
    keys: Keys, algorithm: bytes, canon: bytes, length: bool
) -> None:
    record = key_record(keys, algorithm)
    original = signed(keys, base_message(), algorithm, canon, length)
    cases = {name: tamper(original) for name, tamper in TAMPERINGS.items()}
    cases["bad c="] = original.replace(b"c=" + canon, b"c=" + canon.split(b"/")[0] + b"/bogus", 1)
    cases["body emptied"] = original[: original.index(b"\r\n\r\n") + 4]
    empty_signed = signed(keys, base_message()[: base_message().index(b"\r\n\r\n") + 4], algorithm, canon, length)
    cases["bh of an empty body, body added"] = empty_signed + b"now a body\r\n"
    records = {"key": record, "no key": None, "tlsrpt key": record + b"; s=tlsrpt", "revoked": b"v=DKIM1; p="}
    if not algorithm.startswith(b"ed25519"):
        records["1024-bit key, signed by another"] = _small_rsa_record()
    for case, raw in cases.items():
        for name, answer in records.items():
            expected = _dkimpy_on_the_whole_message(raw, answer)
            assert _fallback(raw, answer) == expected, (case, name)
    assert _fallback(cases["body changed"], record)[1].startswith("body-hash-mismatch: body hash mismatch (got b'")


def test_arc_validation_without_the_body_says_what_dkimpy_says_of_the_whole_message(keys: Keys) -> None:
    """ARC (RFC 8617) through `HeadersOnly`: the same cv, per-set results and reason as dkimpy's
    validator given the whole message, for intact, modified and broken chains."""
    from engine.checks import arc as arc_module

    original = auth_message(body_size=5000)
    once = arc_seal(original, "dkim=pass header.d=sender.test", "arc", "list.example", keys.list_pem)
    twice = arc_seal(once.replace(b"usual place", b"other place", 1), "arc=pass", "arc", "list.example",
                           keys.list_pem)
    cases = {
        "one set": once,
        "two sets, body changed between them": twice,
        "body changed after the seal": once.replace(b"quarter", b"quartex", 1),
        "body appended": once + b"appended line\r\n",
        "header changed": once.replace(b"Subject: Quarterly", b"Subject: Quarterlx", 1),
        "seal tampered": once.replace(b"cv=none", b"cv=pass", 1),
        "simple body canonicalization asked": once.replace(b"c=relaxed/relaxed", b"c=relaxed/simple", 1),
    }
    record = f"v=DKIM1; k=rsa; p={keys.list_dns}"
    answers = {"arc._domainkey.list.example": DnsAnswer("arc._domainkey.list.example", "TXT", "ok", (record,))}
    dnsfunc = dkim_module.dnsfunc_from(answers)
    for name, raw in cases.items():
        reference = dkim.ARC(raw, minkey=dkim_module.MIN_RSA_BITS).verify(dnsfunc=dnsfunc)
        cv, data, reason = arc_module._validate(Message.parse(raw), answers)
        assert (cv, data, reason) == (reference[0], list(reference[1]), str(reference[2])), name
    assert arc_module._validate(Message.parse(cases["one set"]), answers)[0] == dkim.CV_Pass
    assert arc_module._validate(Message.parse(cases["body appended"]), answers)[0] == dkim.CV_Fail
