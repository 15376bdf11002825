"""ARC chain validation (RFC 8617 §5.2): detection only.

Algorithm: the ARC sets are read first; the keys of every ARC-Seal and ARC-Message-Signature
are fetched concurrently on the shared async resolver; dkimpy's ARC validator then runs with a
`dnsfunc` answering only from those answers (no network, no blocking DNS), in a worker
thread: it is several RSA verifications in pure Python (a few ms for one ARC set).

Results: `none` (no ARC set), `pass` (the chain validates: every seal verifies, the newest
ARC-Message-Signature verifies, cv= is consistent), `fail` (anything else), and `temperror`
when a key lookup timed out (a DNS failure never turns into `fail`). The sealers are given in
instance order (i=1 first) with what each one reported (its ARC-Authentication-Results), and
`oldest_pass` says from which instance on the message is unmodified (RFC 8617 §5.2 step 6:
the lowest instance whose ARC-Message-Signature still verifies; 0 when all do). Whether a
sealer is trusted is the policy's decision (`checks.arc.trusted_sealers`); `trusted_sealer`
is a pure helper for it.

Memory (issue 7 item 10): the validator gets the header fields and an empty body, the
ARC-Message-Signature body hashes computed in pieces from the message as received
(`engine.checks.dkim.HeadersOnly`): a large message is never copied (dkimpy's own validator
held ~34 times a 25 MB text body, bench/dkim_memory.py).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Literal

import dkim
from dkim.util import InvalidTagValueList, parse_tag_value

from engine.checks.dkim import LIBRARY_ERRORS, HeadersOnly, dnsfunc_from, fetch_txt, key_name
from engine.checks.lookup import AsyncLookup, Budget
from engine.dkim.message import Message
from engine.dns.resolver import DnsAnswer

ArcResultCode = Literal["none", "pass", "fail", "temperror"]
_ARC_FIELDS = (b"arc-seal", b"arc-message-signature", b"arc-authentication-results")
_INSTANCE = re.compile(rb"(?:^|[\s;])i\s*=\s*(\d+)", re.I)


@dataclass(frozen=True, slots=True)
class ArcSet:
    """One ARC set (RFC 8617 §4.1) as the validator saw it."""

    instance: int
    sealer: str  # ARC-Seal d=
    selector: str  # ARC-Seal s=
    cv: str  # the chain validation status the sealer recorded ("none" for i=1, "pass", "fail")
    seal_valid: bool
    ams_domain: str  # ARC-Message-Signature d=
    ams_valid: bool
    authentication_results: str  # the sealer's ARC-Authentication-Results (what it saw)


@dataclass(frozen=True, slots=True)
class ArcResult:
    """The ARC chain validation outcome."""

    result: ArcResultCode
    sets: tuple[ArcSet, ...] = ()  # i=1 first
    oldest_pass: int = 0  # lowest instance whose AMS verifies (0 = all verify); meaningful on pass
    reason: str = ""
    lookups: tuple[DnsAnswer, ...] = ()
    elapsed: float = 0.0

    @property
    def sealers(self) -> tuple[str, ...]:
        """The sealing domains in instance order (i=1 first)."""
        return tuple(s.sealer for s in self.sets)

    @property
    def oldest_pass_sealer(self) -> str:
        """The sealer of the `oldest_pass` instance ("" when every AMS verifies, i.e. unmodified)."""
        return next((s.sealer for s in self.sets if s.instance == self.oldest_pass), "")

    def trusted_sealer(self, trusted: Collection[str]) -> str | None:
        """The newest sealer when the chain passes and that sealer is in `trusted` (case-insensitive)."""
        if self.result != "pass" or not self.sets:
            return None
        newest = self.sets[-1].sealer
        return newest if newest.lower() in {t.lower().rstrip(".") for t in trusted} else None


def _text(value: bytes | None) -> str:
    return value.decode("ascii", "replace") if value else ""


class _HeadersOnlyARC(HeadersOnly, dkim.ARC):  # type: ignore[misc]
    """dkimpy's ARC validator without the body (`engine.checks.dkim.HeadersOnly`: the AMS body
    hashes are the lean verifier's, computed in pieces; a large message is never copied)."""


def _arc_keys(headers: list[list[bytes]]) -> tuple[bool, list[str]]:
    """Whether `headers` hold ARC fields, and the key names of the ARC-Seals and AMSs (unparsable skipped)."""
    present = False
    names: list[str] = []
    for name, value in headers:
        present = present or name.lower() in _ARC_FIELDS
        if name.lower() in (b"arc-seal", b"arc-message-signature"):
            try:
                tags = parse_tag_value(value)
            except InvalidTagValueList:
                continue
            if b"d" in tags and b"s" in tags:
                names.append(key_name(_text(tags[b"s"]), _text(tags[b"d"])))
    return present, names


def _validate(message: Message,
              answers: Mapping[str, DnsAnswer]) -> tuple[bytes | None, list[dict[str, object]], str]:
    verifier = _HeadersOnlyARC(message)
    cv, data, reason = verifier.verify(dnsfunc=dnsfunc_from(answers))
    return cv, list(data), str(reason)


async def verify_arc(resolver: AsyncLookup, raw: bytes, *, timeout_budget: float | None = None) -> ArcResult:
    """Validate the ARC chain of `raw` (the message as received); never raises."""
    started = time.monotonic()
    try:
        message = Message.parse(raw)  # (header fields; the body stays in `raw`)
        present, names = _arc_keys(message.headers)
        if not present:
            return ArcResult("none", reason="no-arc-sets")
    except (dkim.DKIMException, *LIBRARY_ERRORS) as exc:
        return ArcResult("fail", reason=f"message-format: {exc}")
    answers = await fetch_txt(resolver, names, Budget(resolver, timeout_budget))
    lookups = tuple(answers.values())
    temporary = [a for a in lookups if a.temporary]
    if temporary:
        return ArcResult("temperror", reason=f"dns-{temporary[0].status}: {temporary[0].name}", lookups=lookups,
                         elapsed=time.monotonic() - started)
    try:  # several RSA verifications in pure Python (ms): off the event loop, a thread hop costs ~0.1 ms
        cv, data, reason = await asyncio.to_thread(_validate, message, answers)
    except (dkim.DKIMException, *LIBRARY_ERRORS) as exc:
        return ArcResult("fail", reason=f"arc-invalid: {exc}", lookups=lookups, elapsed=time.monotonic() - started)
    sets = tuple(sorted((
        ArcSet(int(str(d["instance"])), _text(d.get("as-domain")), _text(d.get("as-selector")),  # type: ignore[arg-type]
               _text(d.get("cv")), bool(d.get("as-valid")), _text(d.get("ams-domain")),  # type: ignore[arg-type]
               bool(d.get("ams-valid")), _text(d.get("aar-value")).strip())  # type: ignore[arg-type]
        for d in data), key=lambda s: s.instance))
    oldest = 0
    for arc_set in sets:  # RFC 8617 §5.2 step 6: lowest instance from which every newer AMS verifies
        if not arc_set.ams_valid:
            oldest = arc_set.instance + 1
    result: ArcResultCode = "pass" if cv == dkim.CV_Pass else "fail"
    return ArcResult(result, sets, oldest if result == "pass" else 0,
                     "" if result == "pass" else f"chain-{'ended' if cv is None else 'invalid'}: {reason}",
                     lookups, time.monotonic() - started)
