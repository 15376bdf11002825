"""The DNS records a policy asks to be published (`liveprism dns`): one plan, rendered or checked.

Contract: `plan_dns(gateway, tenants, root)` is deterministic (same policy and key files → equal
plan) and reads nothing but the DKIM key files the tenants point at. For every tenant domain,
its zone (origin = the domain) gets:
- MX: one record per gateway MX host (`mx_hosts`, or `hostname` when none is listed) at its
  `priority`, exchanges absolute (RFC 5321 §5.1);
- SPF (RFC 7208): `ip4:`/`ip6:` of the MX hosts (outbound mail leaves from them; `a:HOST` for a
  host without addresses), the tenant's `include:`s, then its `all`; a warning when evaluating it
  needs more than 10 DNS lookups (RFC 7208 §4.6.4; nested includes counted as one each: a floor);
- DMARC (RFC 7489 §6.3) at `_dmarc`; when a report address (rua/ruf) lies outside the domain's
  organisational domain, the report domain must authorise it (RFC 7489 §7.1): the
  `DOMAIN._report._dmarc.REPORTDOMAIN` record `v=DMARC1` goes in the report domain's zone when it
  is in the plan, else a warning names the record the other party must publish;
- DKIM (RFC 6376 §3.6.1) at `SELECTOR._domainkey` from the public half of `outbound.dkim`'s key;
  a missing or unreadable key is a warning naming the fix, and the record is skipped;
- MTA-STS (RFC 8461 §3.1) at `_mta-sts` with `id` = a digest of the policy file, so the id changes
  exactly when the policy content does; the policy file itself is in `MtaStsPolicy`;
- TLS-RPT (RFC 8460 §3) at `_smtp._tls`.
The gateway's MX hosts get A/AAAA records in the zone of the longest tenant domain they lie in,
else in their registrable domain (public suffix list). Names are IDNA (punycode), lowercase.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from publicsuffixlist import PublicSuffixList

from engine.dkim.keys import KeyProblem, load_key, public_record
from engine.policy.models import DmarcRecord, Gateway, MtaSts, Tenant, TlsRpt

RecordKind = Literal["mx", "spf", "dmarc", "dkim", "mta-sts", "tls-rpt", "dmarc-report", "a", "aaaa"]
KIND_ORDER: tuple[RecordKind, ...] = (
    "mx", "spf", "dmarc", "dkim", "mta-sts", "tls-rpt", "dmarc-report", "a", "aaaa"
)
SPF_LOOKUP_LIMIT = 10


@dataclass(frozen=True, slots=True)
class Record:
    """One RRset to publish. `values` are presentation texts: MX `PREF EXCHANGE.`, A/AAAA the
    address, TXT the unsplit data (renderers split and quote it)."""

    zone: str  # origin, no trailing dot
    name: str  # absolute owner name, no trailing dot
    rtype: Literal["MX", "TXT", "A", "AAAA"]
    kind: RecordKind
    domain: str  # the tenant domain or MX host the record is for (drift report and metric label)
    values: tuple[str, ...]

    @property
    def relative(self) -> str:
        """The owner name relative to the zone: `@` for the apex."""
        if self.name == self.zone:
            return "@"
        return self.name[: -len(self.zone) - 1]


@dataclass(frozen=True, slots=True)
class MtaStsPolicy:
    """The policy file to serve at `url` (RFC 8461 §3.2), lines ending in CRLF."""

    domain: str
    url: str
    content: str


@dataclass(frozen=True, slots=True)
class Skipped:
    """A record the plan cannot produce (e.g. DKIM without its key), and why."""

    domain: str
    kind: RecordKind
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Zone:
    origin: str
    tenant: str | None  # None for a zone holding only gateway host records
    records: tuple[Record, ...]
    mta_sts: tuple[MtaStsPolicy, ...] = ()
    skipped: tuple[Skipped, ...] = ()


@dataclass(frozen=True, slots=True)
class DnsPlan:
    ttl: int
    zones: tuple[Zone, ...]
    mx_hosts: tuple[str, ...]  # the gateway's MX host names: any other MX target is a bypass
    warnings: tuple[str, ...] = ()

    @property
    def records(self) -> tuple[Record, ...]:
        return tuple(r for zone in self.zones for r in zone.records)

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        return tuple(s for zone in self.zones for s in zone.skipped)

    def only(self, domain: str) -> DnsPlan | None:
        """The plan restricted to the zone `domain` (a tenant domain or a gateway host zone)."""
        zones = tuple(z for z in self.zones if z.origin == domain)
        if not zones:
            return None
        return DnsPlan(self.ttl, zones, self.mx_hosts, self.warnings)


@dataclass
class _ZoneBuilder:
    origin: str
    tenant: str | None
    records: list[Record] = field(default_factory=list)
    mta_sts: list[MtaStsPolicy] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def add(self, name: str, rtype: Literal["MX", "TXT", "A", "AAAA"], kind: RecordKind, domain: str,
            values: Sequence[str]) -> None:
        self.records.append(Record(self.origin, name, rtype, kind, domain, tuple(values)))

    def build(self) -> Zone:
        order = {kind: i for i, kind in enumerate(KIND_ORDER)}
        records = sorted(self.records, key=lambda r: (r.domain != self.origin, r.domain, order[r.kind], r.name))
        return Zone(self.origin, self.tenant, tuple(records), tuple(self.mta_sts), tuple(self.skipped))


def plan_dns(gateway: Gateway, tenants: Sequence[Tenant], root: Path) -> DnsPlan:
    """The records of every tenant domain and gateway host; see the module docstring."""
    warnings: list[str] = []
    hosts = [(h.name, h.priority, [str(a) for a in h.ipv4], [str(a) for a in h.ipv6]) for h in gateway.mx_hosts]
    if not hosts:
        hosts = [(gateway.hostname, 10, [], [])]
        warnings.append(
            f"gateway.yaml lists no mx_hosts: MX records name hostname {gateway.hostname}; "
            "its A/AAAA records and SPF addresses are unknown (add mx_hosts with ipv4/ipv6)"
        )
    mx_names = tuple(name for name, *_ in hosts)
    zones: dict[str, _ZoneBuilder] = {}
    for tenant in sorted(tenants, key=lambda t: t.name):
        public_key, key_problem = _dkim_public(tenant, root)
        for domain in tenant.domains:
            if domain in zones:
                continue  # a domain of two tenants: `validate` reports it
            zone = zones[domain] = _ZoneBuilder(domain, tenant.name)
            zone.add(domain, "MX", "mx", domain, [f"{prio} {name}." for name, prio, *_ in sorted(hosts, key=_by_prio)])
            zone.add(domain, "TXT", "spf", domain, [_spf(tenant, hosts, domain, warnings)])
            zone.add(f"_dmarc.{domain}", "TXT", "dmarc", domain, [_dmarc(tenant.dns.dmarc)])
            dkim = tenant.outbound.dkim
            if dkim is not None:
                name = f"{dkim.selector.lower()}._domainkey.{domain}"
                if public_key is not None:
                    zone.add(name, "TXT", "dkim", domain, [public_key])
                elif key_problem is not None:
                    reason = _key_advice(tenant, key_problem, root)
                    zone.skipped.append(Skipped(domain, "dkim", name, reason))
                    warnings.append(f"{domain}: DKIM record {name} skipped: {reason}")
            if tenant.dns.mta_sts is not None:
                policy = _mta_sts_policy(domain, tenant.dns.mta_sts, mx_names)
                zone.mta_sts.append(policy)
                digest = hashlib.sha256(policy.content.encode()).hexdigest()[:20]
                zone.add(f"_mta-sts.{domain}", "TXT", "mta-sts", domain, [f"v=STSv1; id={digest}"])
            if tenant.dns.tls_rpt is not None:
                zone.add(f"_smtp._tls.{domain}", "TXT", "tls-rpt", domain, [_tls_rpt(tenant.dns.tls_rpt)])
    psl = _psl()
    for tenant in sorted(tenants, key=lambda t: t.name):
        for domain in tenant.domains:
            _authorise_reports(domain, tenant.dns.dmarc, zones, psl, warnings)
    for name, _, ipv4, ipv6 in hosts:
        origin = _host_zone(name, zones, psl)
        zone = zones.setdefault(origin, _ZoneBuilder(origin, None))
        if ipv4:
            zone.add(name, "A", "a", name, ipv4)
        if ipv6:
            zone.add(name, "AAAA", "aaaa", name, ipv6)
    built = tuple(zones[origin].build() for origin in sorted(zones))
    return DnsPlan(gateway.dns_ttl, built, mx_names, tuple(warnings))


@functools.cache
def _psl() -> PublicSuffixList:
    """The public suffix list shipped with the package (loaded once: ~0.3 s)."""
    return PublicSuffixList()


def _by_prio(host: tuple[str, int, list[str], list[str]]) -> tuple[int, str]:
    return host[1], host[0]


def _host_zone(name: str, zones: dict[str, _ZoneBuilder], psl: PublicSuffixList) -> str:
    """The zone an MX host's addresses go in: the longest tenant domain containing it, else its
    registrable domain (the name itself when it is a public suffix or unknown)."""
    zone = _longest_zone(name, zones)
    if zone is not None:
        return zone.origin
    registrable: str | None = psl.privatesuffix(name)
    return registrable or name


def _spf(tenant: Tenant, hosts: Sequence[tuple[str, int, list[str], list[str]]], domain: str,
         warnings: list[str]) -> str:
    terms = ["v=spf1"]
    lookups = 0
    for name, _, ipv4, ipv6 in hosts:
        terms += [f"ip4:{a}" for a in ipv4] + [f"ip6:{a}" for a in ipv6]
        if not ipv4 and not ipv6:
            terms.append(f"a:{name}")
            lookups += 1
    terms += [f"include:{d}" for d in tenant.dns.spf.include]
    lookups += len(tenant.dns.spf.include)
    terms.append(tenant.dns.spf.all.value)
    if lookups > SPF_LOOKUP_LIMIT:
        warnings.append(
            f"{domain}: SPF needs at least {lookups} DNS lookups; RFC 7208 §4.6.4 allows {SPF_LOOKUP_LIMIT}"
            " (receivers return permerror): flatten or drop includes"
        )
    return " ".join(terms)


def _uris(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _dmarc(dmarc: DmarcRecord) -> str:
    tags = [("v", "DMARC1"), ("p", dmarc.policy.value)]
    if dmarc.sp is not None:
        tags.append(("sp", dmarc.sp.value))
    if dmarc.adkim is not None:
        tags.append(("adkim", dmarc.adkim.value))
    if dmarc.aspf is not None:
        tags.append(("aspf", dmarc.aspf.value))
    if dmarc.pct is not None:
        tags.append(("pct", str(dmarc.pct)))
    for tag in ("rua", "ruf"):
        uris = _uris(getattr(dmarc, tag))
        if uris:
            tags.append((tag, ",".join(uris)))
    return "; ".join(f"{k}={v}" for k, v in tags)


def _authorise_reports(domain: str, dmarc: DmarcRecord, zones: dict[str, _ZoneBuilder], psl: PublicSuffixList,
                       warnings: list[str]) -> None:
    """RFC 7489 §7.1 external report destinations of `domain` (see the module docstring)."""
    own = psl.privatesuffix(domain) or domain
    report_domains = sorted({
        uri.partition(":")[2].split("!", 1)[0].rpartition("@")[2].lower()
        for uri in _uris(dmarc.rua) + _uris(dmarc.ruf)
    })
    for report_domain in report_domains:
        if (psl.privatesuffix(report_domain) or report_domain) == own:
            continue
        name = f"{domain}._report._dmarc.{report_domain}"
        zone = _longest_zone(report_domain, zones)
        if zone is None:
            warnings.append(
                f"{domain}: DMARC reports go to {report_domain}, which must publish {name}. TXT \"v=DMARC1\""
                " (RFC 7489 §7.1) or receivers will not send them"
            )
        elif not any(r.name == name for r in zone.records):
            zone.add(name, "TXT", "dmarc-report", report_domain, ["v=DMARC1"])


def _longest_zone(name: str, zones: dict[str, _ZoneBuilder]) -> _ZoneBuilder | None:
    parts = name.split(".")
    for i in range(len(parts) - 1):
        zone = zones.get(".".join(parts[i:]))
        if zone is not None:
            return zone
    return None


def _tls_rpt(tls_rpt: TlsRpt) -> str:
    return f"v=TLSRPTv1; rua={','.join(_uris(tls_rpt.rua))}"


def _mta_sts_policy(domain: str, mta_sts: MtaSts, mx_names: Sequence[str]) -> MtaStsPolicy:
    lines = ["version: STSv1", f"mode: {mta_sts.mode.value}"]
    lines += [f"mx: {name}" for name in sorted(mx_names)]
    lines.append(f"max_age: {mta_sts.max_age}")
    url = f"https://mta-sts.{domain}/.well-known/mta-sts.txt"
    return MtaStsPolicy(domain, url, "".join(f"{line}\r\n" for line in lines))


def _dkim_public(tenant: Tenant, root: Path) -> tuple[str | None, KeyProblem | None]:
    if tenant.outbound.dkim is None:
        return None, None
    key = load_key(root, tenant.outbound.dkim)
    if isinstance(key, KeyProblem):
        return None, key
    return public_record(key), None


def _key_advice(tenant: Tenant, problem: KeyProblem, root: Path) -> str:
    if problem.kind == "missing" and not problem.where.startswith("env:"):
        return f"{problem.message}: create it with `liveprism dkim keygen {root} --tenant {tenant.name}`"
    return problem.message
