"""DMARC (RFC 7489) from SPF and DKIM results: detection only.

Algorithm (RFC 7489 §6.6): the policy record is looked up at `_dmarc.<author domain>`, then at
`_dmarc.<organisational domain>` (§6.6.3; the organisational domain comes from the
publicsuffixlist package, §3.2). DMARC passes when an SPF `pass` or a DKIM `pass` is aligned
with the author domain (§3.1: relaxed = same organisational domain, strict = same name, per
`aspf=`/`adkim=`). On failure the `disposition` is the record's `p=` (or `sp=` when the record
was found at the organisational domain of a subdomain author), sampled by `pct=`: a message
left out of the sample gets the next less strict policy (§6.6.4: reject → quarantine →
none). Sampling is deterministic: the same `seed` (the Message-ID) always gives the same
answer, so `explain` and `serve` agree.

Authors (§6.6.1): several From domains are each checked and the most strict failing
disposition applies; a message with no From domain is `permerror` (RFC 7489 §5: invalid,
outside DMARC's scope; the policy decides what that is worth). A DNS failure is `temperror`.
"""

from __future__ import annotations

import email.utils
import functools
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from publicsuffixlist import PublicSuffixList

from engine.checks.dkim import DkimResult
from engine.checks.lookup import AsyncLookup, Budget
from engine.checks.spf import SpfResult
from engine.dns.resolver import DnsAnswer
from engine.mime.raw_headers import fields

DmarcResultCode = Literal["none", "pass", "fail", "temperror", "permerror"]
Disposition = Literal["none", "quarantine", "reject"]
_SEVERITY: dict[str, int] = {"none": 0, "quarantine": 1, "reject": 2}
_DMARC1 = re.compile(r"\s*v\s*=\s*DMARC1\s*(;|$)")
_LESS_STRICT: dict[Disposition, Disposition] = {"reject": "quarantine", "quarantine": "none", "none": "none"}


@dataclass(frozen=True, slots=True)
class DmarcRecord:
    """The tags of a DMARC record that evaluation uses (RFC 7489 §6.3)."""

    p: Disposition
    sp: Disposition | None = None
    adkim: Literal["r", "s"] = "r"
    aspf: Literal["r", "s"] = "r"
    pct: int = 100
    text: str = ""


@dataclass(frozen=True, slots=True)
class DmarcResult:
    """The DMARC outcome for a message (for several authors: the most strict)."""

    result: DmarcResultCode
    domain: str  # the author (RFC5322.From) domain this result is about
    disposition: Disposition = "none"  # what the domain owner asks for, after sp=/pct=
    policy: Disposition | None = None  # p= or sp= that applied, before pct= sampling
    policy_domain: str = ""  # where the record was found (author or organisational domain)
    record: str = ""
    pct: int = 100
    sampled: bool = True  # False when pct= left this message out (disposition relaxed a step)
    spf_aligned: bool = False
    dkim_aligned: str = ""  # d= of the aligned passing signature ("" when none)
    reason: str = ""
    authors: tuple[str, ...] = ()  # every From domain checked
    lookups: tuple[DnsAnswer, ...] = ()
    elapsed: float = 0.0
    per_author: tuple[DmarcResult, ...] = field(default=())  # one result per author when there are several


@functools.cache
def _psl() -> PublicSuffixList:
    return PublicSuffixList()  # parses the list shipped in the wheel once (~0.2 s), no download


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the registrable domain (public suffix + 1 label); the name itself when it is a suffix."""
    name = domain.rstrip(".").lower()
    return _psl().privatesuffix(name) or name


def aligned(a: str, b: str, mode: str) -> bool:
    """RFC 7489 §3.1: strict = identical names, relaxed = same organisational domain."""
    a, b = a.rstrip(".").lower(), b.rstrip(".").lower()
    return a == b if mode == "s" else organizational_domain(a) == organizational_domain(b)


@functools.lru_cache(maxsize=4096)
def parse_record(text: str) -> DmarcRecord | str:
    """The record's tags, or why it is unusable (RFC 7489 §6.3, §6.6.3); remembered per text."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        if not part.strip():
            continue
        name, eq, value = part.partition("=")
        if not eq:
            return f"record-syntax: {part.strip()!r}"
        tags.setdefault(name.strip().lower(), value.strip())
    if tags.get("v") != "DMARC1" or not text.lstrip().startswith("v"):
        return "record-syntax: v=DMARC1 must come first"

    def disposition(value: str | None) -> Disposition | None:
        value = (value or "").lower()
        return value if value in ("none", "quarantine", "reject") else None  # type: ignore[return-value]

    p = disposition(tags.get("p"))
    if p is None:
        if "rua" in tags:  # §6.6.3: an invalid or missing p= with a valid rua= is p=none
            p = "none"
        else:
            return f"record-syntax: p={tags.get('p', '')!r}"
    sp = disposition(tags.get("sp")) if "sp" in tags else None
    adkim, aspf = tags.get("adkim", "r").lower(), tags.get("aspf", "r").lower()
    pct_text = tags.get("pct", "100")
    if adkim not in ("r", "s") or aspf not in ("r", "s") or not pct_text.isdigit():
        return "record-syntax: bad adkim=, aspf= or pct="
    return DmarcRecord(p, sp, adkim, aspf, max(0, min(100, int(pct_text))), text)  # type: ignore[arg-type]


def sample(seed: str, pct: int) -> bool:
    """Deterministic pct= sampling: True when the message with this seed is in the `pct` percent."""
    if pct >= 100:
        return True
    bucket = int.from_bytes(hashlib.sha256(seed.encode("utf-8", "replace")).digest()[:4], "big") % 100
    return bucket < pct


def author_domains(raw: bytes) -> tuple[str, ...]:
    """The domains of every address in every top-level From field of `raw` (RFC 7489 §6.6.1), in order."""
    values = [
        re.sub(r"\r?\n(?=[ \t])", "", raw[raw.index(b":", start) + 1 : end].decode("utf-8", "replace"))
        for start, end, name in fields(raw) if name == b"from"
    ]
    domains: list[str] = []
    for _, address in email.utils.getaddresses(values):
        domain = address.rpartition("@")[2].strip().rstrip(".").lower()
        if "@" in address and domain and domain not in domains:
            domains.append(domain)
    return tuple(domains)


async def _lookup_record(resolver: AsyncLookup, name: str, budget: Budget,
                         lookups: list[DnsAnswer]) -> tuple[list[str], DnsAnswer]:
    timeout = budget.query_timeout()
    if timeout is not None and timeout <= 0.0:
        answer = DnsAnswer(name, "TXT", "timeout", error="check time budget spent")
    else:
        answer = await resolver.query(name, "TXT", timeout=timeout)
    lookups.append(answer)
    return ([r for r in answer.records if _DMARC1.match(r)] if answer.ok else []), answer


async def _check_one(resolver: AsyncLookup, domain: str, spf: SpfResult, dkim: Sequence[DkimResult],
                     seed: str, budget: Budget) -> DmarcResult:
    started = time.monotonic()
    lookups: list[DnsAnswer] = []

    def done(result: DmarcResultCode, **kwargs: object) -> DmarcResult:
        return DmarcResult(result, domain, authors=(domain,), lookups=tuple(lookups),
                           elapsed=time.monotonic() - started, **kwargs)  # type: ignore[arg-type]

    org = organizational_domain(domain)
    policy_domain = domain
    records, answer = await _lookup_record(resolver, f"_dmarc.{domain}", budget, lookups)
    if answer.temporary:
        return done("temperror", reason=f"dns-{answer.status}: {answer.name}")
    if not records and org != domain:
        policy_domain = org
        records, answer = await _lookup_record(resolver, f"_dmarc.{org}", budget, lookups)
        if answer.temporary:
            return done("temperror", reason=f"dns-{answer.status}: {answer.name}")
    if len(records) != 1:  # §6.6.3 step 5: no record, or several, ends policy discovery
        return done("none", reason="no-record" if not records else f"multiple-records: {len(records)} at {answer.name}",
                    policy_domain=policy_domain if records else "")
    text = records[0]
    record = parse_record(text)
    if isinstance(record, str):
        return done("permerror", reason=record, record=text, policy_domain=policy_domain)
    spf_ok = spf.result == "pass" and bool(spf.domain) and aligned(spf.domain, domain, record.aspf)
    dkim_ok = next((r.domain for r in dkim if r.result == "pass" and aligned(r.domain, domain, record.adkim)), "")
    policy: Disposition = record.sp if policy_domain != domain and record.sp is not None else record.p
    common: dict[str, object] = {"policy": policy, "policy_domain": policy_domain, "record": text, "pct": record.pct,
                                 "spf_aligned": spf_ok, "dkim_aligned": dkim_ok}
    if spf_ok or dkim_ok:
        return done("pass", **common)
    in_sample = sample(seed, record.pct)
    disposition = policy if in_sample else _LESS_STRICT[policy]
    reasons = f"not-aligned: spf={spf.result} ({spf.domain or '-'}), dkim=" + (
        ",".join(f"{r.result}({r.domain})" for r in dkim if r.domain) or "none")
    return done("fail", disposition=disposition, sampled=in_sample, reason=reasons, **common)


async def check_dmarc(
    resolver: AsyncLookup,
    *,
    header_from_domain: str | Sequence[str],
    spf: SpfResult,
    dkim: Sequence[DkimResult],
    seed: str = "",
    timeout_budget: float | None = None,
) -> DmarcResult:
    """DMARC for the author domain(s); `seed` (the Message-ID) makes pct= sampling repeatable."""
    started = time.monotonic()
    domains = [header_from_domain] if isinstance(header_from_domain, str) else list(header_from_domain)
    authors = tuple(dict.fromkeys(d.strip().rstrip(".").lower() for d in domains if d and d.strip()))
    if not authors:
        return DmarcResult("permerror", "", reason="no-author-domain: no RFC5322.From domain (RFC 7489 §5)")
    budget = Budget(resolver, timeout_budget)
    results = [await _check_one(resolver, d, spf, dkim, seed, budget) for d in authors]
    if len(results) == 1:
        return results[0]
    # §6.6.1: several authors: each checked, the most strict failing disposition applies
    failed = [r for r in results if r.result == "fail"]
    rank = {"pass": 0, "none": 1, "permerror": 2, "temperror": 3, "fail": 4}
    chosen = (max(failed, key=lambda r: _SEVERITY[r.disposition]) if failed
              else max(results, key=lambda r: rank[r.result]))
    return DmarcResult(
        chosen.result, chosen.domain, chosen.disposition, chosen.policy, chosen.policy_domain, chosen.record,
        chosen.pct, chosen.sampled, chosen.spf_aligned, chosen.dkim_aligned,
        f"several-authors: {len(authors)}; " + chosen.reason, authors,
        tuple(a for r in results for a in r.lookups), time.monotonic() - started, tuple(results))
