"""DKIM verification (RFC 6376, Ed25519 per RFC 8463) of every signature: detection only.

Algorithm: the DKIM-Signature fields are read first (d=, s=); the key records
`<s>._domainkey.<d>` are fetched concurrently on the shared async resolver (within the time
budget); then each signature is verified on the message parsed once: the lean verifier
(`engine.dkim.verify`) confirms the valid ones, and whatever it does not confirm is
decided by dkimpy with a `dnsfunc` that only answers from what was fetched (so every non-pass
result and its reason are dkimpy's; dkimpy never touches the network nor blocks on DNS).

Results per signature, in header order (RFC 8601 §2.7.1 result names):
- `pass`: signature and body hash verify (with reason `body-length-limit` when l= signs only
  the start of the body, RFC 6376 §8.2, so a policy can distrust it);
- `fail`: the signature or body hash does not verify, or the signature is expired/post-dated;
- `neutral`: the signature field cannot be parsed (syntax error, missing tags);
- `permerror`: From not signed (RFC 6376 §6.1.1), no key record, a revoked or unusable key (bad
  syntax, too short per RFC 8301, unknown type);
- `temperror`: the key lookup timed out or the server failed (never turned into `fail`);
- a message with no signature gives one result `none`.
Verification is pure CPU once the keys are in hand: it runs inline for ordinary messages and
in a worker thread above `THREAD_ABOVE` bytes, so a large message does not stall the loop.

Memory (issue 7 item 10): the lean verifier hashes the body from offsets into `raw`, a piece at a
time (`Message`, `BodyHash`): next to nothing beyond the message itself. The dkimpy
fallback (a signature the lean verifier does not confirm: a failing one, rsa-sha1, an odd key, …)
gets the parsed header fields and an empty body (`HeadersOnly`): its body hash step is
answered by the same piecewise hash of the real body, so it runs every other check in its own
order and reports what it would on the whole message, without its three copies of the body
(~3 times a 25 MB text body at peak, before ~34; an attacker needs only a bad signature).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import dkim
import dkim.canonicalization
from dkim.util import InvalidTagValueList, parse_tag_value

from engine.checks.lookup import AsyncLookup, Budget, gather
from engine.dkim import verify
from engine.dkim.message import Message
from engine.dns.resolver import DnsAnswer

DkimResultCode = Literal["none", "pass", "fail", "neutral", "temperror", "permerror"]

THREAD_ABOVE = 256 * 1024  # bytes of message above which verification runs in a worker thread
MIN_RSA_BITS = verify.MIN_RSA_BITS  # RFC 8301 §3.2: shorter RSA keys are not accepted

# What dkimpy's parsers and its pure-Python RSA/ASN.1 code raise on hostile input besides its own
# DKIMException: a message, signature or key from the network must give a result, never an exception.
LIBRARY_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, IndexError, UnicodeError,
                                                binascii.Error)

DKIMPY_LOGGER = logging.getLogger("liveprism.checks.dkimpy")  # dkimpy logs every failure at ERROR
DKIMPY_LOGGER.addHandler(logging.NullHandler())
DKIMPY_LOGGER.propagate = False


@dataclass(frozen=True, slots=True)
class DkimResult:
    """The outcome of one DKIM-Signature (or `none` for an unsigned message)."""

    domain: str  # d= (the signing domain, used for DMARC alignment)
    selector: str  # s=
    result: DkimResultCode
    reason: str = ""  # a kebab-case token, then details ("body-hash-mismatch", "no-key: …")
    algorithm: str = ""  # a= ("rsa-sha256", "ed25519-sha256")
    identity: str = ""  # i= when present
    lookup: DnsAnswer | None = None  # the key record lookup
    elapsed: float = 0.0  # seconds for this signature (key lookup shared, verification own)


def key_name(selector: str, domain: str) -> str:
    """The DNS name of a DKIM key record (RFC 6376 §3.6.2.1)."""
    return f"{selector}._domainkey.{domain}".rstrip(".").lower()


async def fetch_txt(resolver: AsyncLookup, names: Iterable[str], budget: Budget) -> dict[str, DnsAnswer]:
    """TXT answers for `names`, looked up concurrently, each within the time left in `budget`."""
    unique = sorted({n.rstrip(".").lower() for n in names})

    async def one(name: str) -> DnsAnswer:
        timeout = budget.query_timeout()
        if timeout is not None and timeout <= 0.0:
            return DnsAnswer(name, "TXT", "timeout", error="check time budget spent")
        return await resolver.query(name, "TXT", timeout=timeout)

    answers = await gather([one(n) for n in unique])
    return dict(zip(unique, answers, strict=True))


def dnsfunc_from(answers: Mapping[str, DnsAnswer]) -> Callable[..., bytes | None]:
    """A dkimpy `dnsfunc` answering only from `answers` (first TXT record; None when missing)."""

    def lookup(name: bytes | str, timeout: float = 5) -> bytes | None:
        key = (name.decode("ascii", "replace") if isinstance(name, bytes) else name).rstrip(".").lower()
        answer = answers.get(key)
        if answer is None or answer.temporary:
            raise dkim.DnsTimeoutError(f"no answer for {key}")
        return answer.records[0].encode("utf-8") if answer.ok and answer.records else None

    return lookup


def key_problem(answer: DnsAnswer) -> tuple[DkimResultCode, str] | None:
    """Why a key record cannot be used (temperror/permerror and a reason), or None when usable."""
    if answer.temporary:
        return "temperror", f"dns-{answer.status}: {answer.name} {answer.error}".rstrip()
    if not answer.ok or not answer.records:
        return "permerror", f"no-key: {answer.name} {answer.status}"
    return _record_problem(answer.name, answer.records[0])


@functools.lru_cache(maxsize=1024)
def _record_problem(name: str, text: str) -> tuple[DkimResultCode, str] | None:
    """`key_problem` of a key record's text (a pure function of it: remembered)."""
    record = text.encode("utf-8")
    try:
        if parse_tag_value(record).get(b"p", b"x").strip() == b"":
            return "permerror", f"key-revoked: empty p= at {name} (RFC 6376 §3.6.1)"
        pk, bits, ktag, _ = dkim.evaluate_pk(name.encode(), record)
    except (dkim.DKIMException, InvalidTagValueList, ValueError, TypeError) as exc:
        return "permerror", f"bad-key: {exc}"
    if pk is None:
        return "permerror", "bad-key: unusable key record"
    if ktag == b"rsa" and bits is not None and bits < MIN_RSA_BITS:
        return "permerror", f"key-too-short: {bits} bits"
    return None


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace") if value else ""


Signature = tuple[dict[bytes, bytes] | None, str, tuple[bytes, bytes]]  # tags, parse problem, the field


def _signatures(headers: list[list[bytes]]) -> list[Signature]:
    """Each DKIM-Signature's tags (None when unparsable), the parse problem and the field itself
    (name, value), in header order."""
    out: list[Signature] = []
    for name, value in headers:
        if name.lower() != b"dkim-signature":
            continue
        try:
            tags = parse_tag_value(value)
        except InvalidTagValueList as exc:
            out.append((None, f"signature-syntax: {exc}", (name, value)))
            continue
        missing = [t.decode() for t in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s") if t not in tags]
        if missing:
            out.append((tags, f"signature-syntax: missing {', '.join(missing)}=", (name, value)))
        elif b"from" not in [h.strip().lower() for h in tags[b"h"].split(b":")]:
            out.append((tags, "from-not-signed: h= lacks From (RFC 6376 §6.1.1)", (name, value)))
        else:
            out.append((tags, "", (name, value)))
    return out


_BODY_CANONICALIZATIONS = {dkim.canonicalization.Simple: b"simple", dkim.canonicalization.Relaxed: b"relaxed"}


class HeadersOnly(dkim.DomainSigner):  # type: ignore[misc]  # (dkimpy has no type hints)
    """A dkimpy verifier (DKIM or ARC) on the header fields of `message` and an empty body, whose
    body hash step is answered by `message.body_hash` (the real body, hashed in pieces: never
    copied whole).

    `verify_sig_process` runs dkimpy's own with the signature's bh= replaced by the hash of the
    empty body when the real body's hash matches the signature (so dkimpy's check passes) and by
    nothing otherwise (so it fails); a failure there is reported with the real body's hash. Every
    other check is dkimpy's, in dkimpy's order, on the same header fields (bh= is read by the body
    check only: the header hash uses the field as received)."""

    def __init__(self, message: Message) -> None:
        super().__init__(None, logger=DKIMPY_LOGGER, minkey=MIN_RSA_BITS)
        self.headers = message.headers
        self.body = b""
        self._message = message

    def verify_sig_process(self, sig: dict[bytes, bytes], include_headers: list[bytes], sig_header: Any,
                           dnsfunc: Any) -> Any:
        if b"bh" not in sig:
            return super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)
        try:  # (an invalid c= is dkimpy's to report, before the body)
            policy = dkim.CanonicalizationPolicy.from_c_value(sig.get(b"c", b"simple/simple"))
        except dkim.InvalidCanonicalizationPolicyError:
            return super().verify_sig_process(sig, include_headers, sig_header, dnsfunc)
        hasher = dkim.HASH_ALGORITHMS[sig[b"a"]]
        length = int(sig[b"l"]) if b"l" in sig and not self.tlsrpt else None
        real = self._message.body_hash(hasher().name, _BODY_CANONICALIZATIONS[policy.body_algorithm], length)
        empty = policy.canonicalize_body(b"")
        expected = sig[b"bh"]
        matches = real == base64.b64decode(re.sub(rb"\s+", b"", expected))  # (as dkimpy decodes it)
        stand_in = base64.b64encode(hasher(empty[:length] if length is not None else empty).digest())
        try:
            return super().verify_sig_process({**sig, b"bh": stand_in if matches else b""}, include_headers,
                                              sig_header, dnsfunc)
        except dkim.ValidationError as exc:
            if not str(exc).startswith("body hash mismatch"):
                raise
            got = base64.b64encode(real)  # (dkimpy's text: bytes as repr)
            raise dkim.ValidationError(f"body hash mismatch (got {got!r}, expected {expected!r})") from None


class _HeadersOnlyDKIM(HeadersOnly, dkim.DKIM):  # type: ignore[misc]
    """dkimpy's DKIM verifier without the body (`HeadersOnly`)."""


def _verify_all(message: Message, pending: list[int],
                answers: Mapping[str, DnsAnswer]) -> dict[int, tuple[bool, str]]:
    """dkimpy verification of the signatures at `pending` indexes (pure CPU, no network)."""
    verifier = _HeadersOnlyDKIM(message)
    dnsfunc = dnsfunc_from(answers)
    out: dict[int, tuple[bool, str]] = {}
    for idx in pending:
        try:
            ok = bool(verifier.verify(idx=idx, dnsfunc=dnsfunc))
            out[idx] = (ok, "" if ok else "bad-signature")
        except dkim.ValidationError as exc:
            text = str(exc)
            token = "body-hash-mismatch" if "body hash" in text else "signature-invalid"
            out[idx] = (False, f"{token}: {text}")
        except (dkim.DKIMException, *LIBRARY_ERRORS) as exc:
            out[idx] = (False, f"permerror:{type(exc).__name__}: {exc}")
    return out


def _verify(message: Message, signatures: list[Signature], pending: list[int],
            answers: Mapping[str, DnsAnswer]) -> dict[int, tuple[bool, str]]:
    """Each pending signature confirmed by the lean verifier, else decided by dkimpy (pure CPU)."""
    out: dict[int, tuple[bool, str]] = {}
    undecided: list[int] = []
    for idx in pending:
        tags, _, signature_field = signatures[idx]
        assert tags is not None
        answer = answers[key_name(_text(tags[b"s"]), _text(tags[b"d"]))]
        if verify.confirm(message, tags, signature_field, answer.records[0].encode("utf-8")):
            out[idx] = (True, "")
        else:
            undecided.append(idx)
    if undecided:
        out.update(_verify_all(message, undecided, answers))
    return out


async def verify_dkim(
    resolver: AsyncLookup, raw: bytes, *, timeout_budget: float | None = None
) -> tuple[DkimResult, ...]:
    """Verify every DKIM-Signature of `raw` (the message as received); never raises."""
    started = time.monotonic()
    try:
        message = Message.parse(raw)
        signatures = _signatures(message.headers)
    except (dkim.DKIMException, *LIBRARY_ERRORS) as exc:
        return (DkimResult("", "", "permerror", f"message-format: {exc}"),)
    if not signatures:
        return (DkimResult("", "", "none", "no-signature"),)
    budget = Budget(resolver, timeout_budget)
    names = [key_name(_text(t[b"s"]), _text(t[b"d"])) for t, problem, _ in signatures if t is not None and not problem]
    answers = await fetch_txt(resolver, names, budget) if names else {}
    results: dict[int, DkimResult] = {}
    pending: list[int] = []
    for idx, (tags, problem, _) in enumerate(signatures):
        if tags is None or problem:
            tags = tags or {}
            code: DkimResultCode = "permerror" if problem.startswith("from-not-signed") else "neutral"
            results[idx] = DkimResult(_text(tags.get(b"d")), _text(tags.get(b"s")), code, problem)
            continue
        domain, selector = _text(tags[b"d"]).rstrip(".").lower(), _text(tags[b"s"])
        answer = answers[key_name(selector, domain)]
        bad_key = key_problem(answer)
        if bad_key is not None:
            results[idx] = DkimResult(domain, selector, bad_key[0], bad_key[1], _text(tags.get(b"a")),
                                      _text(tags.get(b"i")), answer)
            continue
        pending.append(idx)
    if pending:
        if len(raw) > THREAD_ABOVE:
            verified = await asyncio.to_thread(_verify, message, signatures, pending, answers)
        else:
            verified = _verify(message, signatures, pending, answers)
        for idx in pending:
            tags = signatures[idx][0] or {}
            domain, selector = _text(tags[b"d"]).rstrip(".").lower(), _text(tags[b"s"])
            ok, reason = verified[idx]
            code = "pass" if ok else "fail"
            if reason.startswith("permerror:"):
                code, reason = "permerror", reason.removeprefix("permerror:")
            if ok and b"l" in tags:  # RFC 6376 §8.2: content may have been appended after the signed part
                reason = f"body-length-limit: l={_text(tags[b'l'])} (only that much of the body is signed)"
            results[idx] = DkimResult(domain, selector, code, reason, _text(tags.get(b"a")), _text(tags.get(b"i")),
                                      answers[key_name(selector, domain)], time.monotonic() - started)
    return tuple(results[i] for i in range(len(signatures)))
