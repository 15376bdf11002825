"""A static DNS resolver for scenarios: the answers a feature declares, nothing else.

Same interface as `engine.dns.resolver.Resolver.query` (async, never raises, returns a
`DnsAnswer`), so a check given this resolver runs offline and deterministically:
- a name with records of the asked type answers `ok` with them (TXT as one string per record);
- a name with records of other types only answers `nodata`; an unknown name `nxdomain`;
- `fail(name, rdtype, status)` makes a lookup answer `timeout` / `servfail` / `error`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype

from engine.dns.resolver import DnsAnswer, DnsStatus


def _key(name: str) -> str:
    return name.rstrip(".").lower() or "."


@dataclass
class StaticResolver:
    """Records by (name, type); lookups of anything else are negative answers."""

    records: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    failures: dict[tuple[str, str], DnsStatus] = field(default_factory=dict)
    asked: list[tuple[str, str]] = field(default_factory=list)  # every query, in order (for assertions)
    timeout: float = 2.0  # what the checks read from a resolver (engine.checks.lookup.AsyncLookup); never waited

    def add(self, name: str, rdtype: str, value: str) -> None:
        """Answer `value` (one more record) for `name`/`rdtype`."""
        self.records.setdefault((_key(name), rdtype.upper()), []).append(value)

    def fail(self, name: str, rdtype: str, status: DnsStatus) -> None:
        """Make lookups of `name`/`rdtype` fail with `status` (timeout, servfail, error)."""
        self.failures[(_key(name), rdtype.upper())] = status

    def clear_cache(self) -> None:
        """Nothing is cached; present for interface parity with `Resolver`."""

    async def query(self, name: str, rdtype: str, *, timeout: float | None = None) -> DnsAnswer:
        """The declared answer for `name`/`rdtype` (see the module docstring)."""
        key = (_key(name), rdtype.upper())
        self.asked.append(key)
        failure = self.failures.get(key)
        if failure is not None:
            return DnsAnswer(key[0], key[1], failure, error=f"scenario: {failure}")
        found = self.records.get(key)
        if found:
            rdata = tuple(r for r in (_rdata(key[1], value) for value in found) if r is not None)
            return DnsAnswer(key[0], key[1], "ok", tuple(found), rdata, ttl=300)
        if any(name == key[0] for name, _ in self.records):
            return DnsAnswer(key[0], key[1], "nodata")
        return DnsAnswer(key[0], key[1], "nxdomain")


def _rdata(rdtype: str, value: str) -> dns.rdata.Rdata | None:
    """dnspython's rdata for a record text (TXT split into 255-octet strings); None if it does not parse."""
    text = value
    if rdtype == "TXT":
        data = value.encode()
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        text = " ".join('"' + c.decode("utf-8", "replace").replace("\\", "\\\\").replace('"', '\\"') + '"'
                        for c in chunks)
    try:
        return dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
    except (dns.exception.DNSException, ValueError):
        return None
