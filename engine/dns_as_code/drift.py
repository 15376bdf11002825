"""`liveprism dns --check`: compare the records a policy asks for with what DNS serves.

Contract: `check_drift(plan, resolver)` asks the shared resolver once per planned RRset (all
concurrently) and returns a `DriftReport` value; it never raises. Per RRset:
- `ok`: the records of that kind found are exactly the planned ones;
- `missing`: none found (NXDOMAIN or no data);
- `different`: some found, but not the planned set (expected vs found);
- `extra`: every planned record found, plus others of the same kind (two SPF records are a
  permerror, RFC 7208 §3.2; a second DMARC record voids DMARC, RFC 7489 §6.6.3);
- `bypass`: an MX of a tenant domain names a host that is not a gateway MX host: mail can reach
  the tenant around the filter (the backup-MX trick). It outranks the other states;
- `error`: the lookup failed (timeout, SERVFAIL): nothing is known, and it counts as drift;
- `skipped`: the plan has no expected value (a DKIM key not created yet): not drift.
"Of that kind": TXT records at a shared name are told apart by their version tag (`v=spf1`,
`v=DMARC1`, `v=STSv1`, `v=TLSRPTv1`), so a site-verification TXT at the apex is not drift.
Values compare semantically: names case-insensitively, SPF terms by whitespace-separated terms,
tag-value records (DMARC, MTA-STS, TLS-RPT) by their tags, ignoring whitespace and order, DKIM
key records by their key type and key (`k=`, `p=`) only.

Beyond the records themselves, each planned SPF record is evaluated for its DNS lookup count
with nested `include:`/`redirect=` followed (RFC 7208 §4.6.4: more than 10 is a permerror at
every receiver) and for includes that publish no SPF; and the host of each MTA-STS policy
(`mta-sts.DOMAIN`, RFC 8461 §3.2) must resolve, or senders cannot fetch the policy. Those are
`warnings`, not drift.

`drift_metric_values(report)` is what the admin listener exports as
`liveprism_dns_drift{domain,record}` (1 drifted, 0 agrees).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from engine.dns.resolver import DnsAnswer, Resolver
from engine.dns_as_code.records import SPF_LOOKUP_LIMIT, DnsPlan, Record, RecordKind, Skipped, plan_dns
from engine.policy.models import Gateway, Tenant

DriftStatus = Literal["ok", "missing", "different", "extra", "bypass", "error", "skipped"]
_TXT_VERSION: dict[RecordKind, str] = {
    "spf": "v=spf1", "dmarc": "v=dmarc1", "dmarc-report": "v=dmarc1", "mta-sts": "v=stsv1", "tls-rpt": "v=tlsrptv1",
}


@dataclass(frozen=True, slots=True)
class RecordDrift:
    """The verdict for one planned RRset."""

    domain: str  # tenant domain or gateway MX host
    kind: RecordKind
    name: str  # owner name, no trailing dot
    rtype: str
    status: DriftStatus
    expected: tuple[str, ...] = ()
    found: tuple[str, ...] = ()
    detail: str = ""

    @property
    def drifted(self) -> bool:
        return self.status not in ("ok", "skipped")


@dataclass(frozen=True, slots=True)
class DriftReport:
    items: tuple[RecordDrift, ...]
    warnings: tuple[str, ...] = ()

    @property
    def drifted(self) -> tuple[RecordDrift, ...]:
        return tuple(i for i in self.items if i.drifted)

    @property
    def bypasses(self) -> tuple[RecordDrift, ...]:
        return tuple(i for i in self.items if i.status == "bypass")

    @property
    def ok(self) -> bool:
        return not self.drifted


def drift_metric_values(report: DriftReport) -> dict[tuple[str, str], float]:
    """(domain, record kind) → 1.0 when that record drifted, 0.0 when DNS agrees; skipped
    records are left out (`liveprism_dns_drift{domain,record}`)."""
    values: dict[tuple[str, str], float] = {}
    for item in report.items:
        if item.status == "skipped":
            continue
        key = (item.domain, item.kind)
        values[key] = max(values.get(key, 0.0), 1.0 if item.drifted else 0.0)
    return values


async def policy_drift(gateway: Gateway, tenants: Sequence[Tenant], root: Path, resolver: Resolver) -> DriftReport:
    """`check_drift` of the policy's plan: the one call a periodic monitor (the admin listener's
    `liveprism_dns_drift` gauge, via `drift_metric_values`) needs. Answers may come from the
    resolver's TTL cache: call `resolver.clear_cache()` first for a fresh look."""
    return await check_drift(plan_dns(gateway, tenants, root), resolver)


async def check_drift(plan: DnsPlan, resolver: Resolver) -> DriftReport:
    """Query every planned RRset and judge it (see the module docstring); items in plan order."""
    records = plan.records
    answers = await asyncio.gather(*(resolver.query(r.name, r.rtype) for r in records))
    mx_hosts = frozenset(plan.mx_hosts)
    items = [_judge(record, answer, mx_hosts) for record, answer in zip(records, answers, strict=True)]
    items += [_skipped(s) for s in plan.skipped]
    spf = [r for r in records if r.kind == "spf"]
    counted = await asyncio.gather(*(spf_lookups(r.values[0], resolver) for r in spf))
    warnings = []
    for record, (count, problems) in zip(spf, counted, strict=True):
        if count > SPF_LOOKUP_LIMIT:
            warnings.append(f"{record.domain}: SPF takes {count} DNS lookups with its includes; RFC 7208 §4.6.4"
                            f" allows {SPF_LOOKUP_LIMIT} (receivers return permerror)")
        warnings += [f"{record.domain}: SPF {problem}" for problem in problems]
    policies = [p for zone in plan.zones for p in zone.mta_sts]
    hosts = await asyncio.gather(*(_resolves(f"mta-sts.{p.domain}", resolver) for p in policies))
    warnings += [f"{p.domain}: mta-sts.{p.domain} has no address: senders cannot fetch {p.url}"
                 for p, found in zip(policies, hosts, strict=True) if not found]
    return DriftReport(tuple(items), tuple(dict.fromkeys(warnings)))


async def _resolves(name: str, resolver: Resolver) -> bool:
    answers = await asyncio.gather(resolver.query(name, "A"), resolver.query(name, "AAAA"))
    return any(a.ok and a.records for a in answers)


async def spf_lookups(text: str, resolver: Resolver, _seen: frozenset[str] = frozenset()) -> tuple[int, list[str]]:
    """(DNS-querying terms of the SPF record `text`, nested includes and redirect counted, RFC 7208
    §4.6.4; problems met on the way: includes without SPF, failed lookups, loops). Counting stops
    a little past the limit."""
    count = 0
    problems: list[str] = []
    for term in text.split()[1:]:
        mechanism = term.lstrip("+-~?").lower()
        target = ""
        if mechanism.startswith(("include:", "redirect=")):
            target = mechanism.split(":" if mechanism.startswith("include:") else "=", 1)[1]
        elif mechanism in ("a", "mx", "ptr") or mechanism.startswith(("a:", "a/", "mx:", "mx/", "ptr:", "exists:")):
            count += 1
            continue
        else:
            continue
        count += 1
        if count > SPF_LOOKUP_LIMIT + 5:
            break
        if target in _seen:
            problems.append(f"{term}: include loop")
            continue
        if "%" in target:  # a macro (RFC 7208 §7): expands per message, cannot be followed here
            continue
        answer = await resolver.query(target, "TXT")
        found = [r for r in answer.records if _of_kind("spf", r)] if answer.ok else []
        if answer.temporary:
            problems.append(f"{term}: lookup failed ({answer.status})")
        elif len(found) != 1:
            problems.append(f"{term}: {target} publishes {len(found) or 'no'} SPF records (receivers: permerror)")
        else:
            nested, nested_problems = await spf_lookups(found[0], resolver, _seen | {target})
            count += nested
            problems += nested_problems
    return count, problems


def _skipped(skipped: Skipped) -> RecordDrift:
    return RecordDrift(skipped.domain, skipped.kind, skipped.name, "TXT", "skipped", detail=skipped.reason)


def _judge(record: Record, answer: DnsAnswer, mx_hosts: frozenset[str]) -> RecordDrift:
    def verdict(status: DriftStatus, found: tuple[str, ...] = (), detail: str = "") -> RecordDrift:
        return RecordDrift(record.domain, record.kind, record.name, record.rtype, status, record.values, found, detail)

    if answer.temporary:
        return verdict("error", detail=f"lookup failed: {answer.status} {answer.error}".strip())
    found = tuple(v for v in answer.records if _of_kind(record.kind, v)) if answer.ok else ()
    if record.kind == "mx":
        bypass = [v for v in found if _mx_exchange(v) not in mx_hosts and _mx_exchange(v) != ""]
        if bypass:
            hosts = ", ".join(_mx_exchange(v) for v in bypass)
            return verdict("bypass", found, f"MX to {hosts}: mail can reach the tenant around the gateway")
    if not found:
        return verdict("missing", detail="NXDOMAIN" if answer.status == "nxdomain" else "")
    expected = {_normal(record.kind, v) for v in record.values}
    actual = {_normal(record.kind, v) for v in found}
    if expected == actual:
        return verdict("ok", found)
    if expected < actual:
        return verdict("extra", found, f"{len(actual - expected)} more {record.kind} record(s) than planned")
    return verdict("different", found)


def _of_kind(kind: RecordKind, text: str) -> bool:
    version = _TXT_VERSION.get(kind)
    if version is None:
        return True
    head = text.strip().lower()
    if kind == "spf":  # RFC 7208 §4.5: "v=spf1" then a space or the end
        return head == version or head.startswith(version + " ")
    return head.replace(" ", "").startswith(version + ";") or head.replace(" ", "") == version


def _mx_exchange(text: str) -> str:
    parts = text.split()
    return parts[-1].rstrip(".").lower() if parts else ""


def _normal(kind: RecordKind, text: str) -> object:
    """A comparable form of one record value (see the module docstring)."""
    if kind == "mx":
        parts = text.split()
        return (int(parts[0]), _mx_exchange(text)) if len(parts) == 2 and parts[0].isdigit() else text.lower()
    if kind in ("a", "aaaa"):
        try:
            return ipaddress.ip_address(text.strip())
        except ValueError:
            return text
    if kind == "spf":
        return tuple(text.lower().split())
    tags = []
    for part in text.split(";"):
        tag, sep, value = part.partition("=")
        if sep:
            tags.append((tag.strip().lower(), "".join(value.split())))
        elif part.strip():
            tags.append((part.strip().lower(), ""))
    if kind == "dkim":  # the key is what matters: other tags (h=, t=, n=) do not change it
        found = dict(tags)
        return (found.get("k", "rsa").lower(), found.get("p", ""))
    return frozenset(tags)
