"""An in-memory resolver with the `Resolver.query` contract, for unit tests of the checks.

Zones are `{name: [(rdtype, text), ...]}`; the rdtype `TIMEOUT` (with any text) makes every
query for that name whose type has no record time out, as the openspf suite's `TIMEOUT` does.
CNAMEs are followed (8 levels at most, then SERVFAIL, as a resolver does on a loop). A name
missing from the zones is NXDOMAIN, a name present without the type is no-data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.dns.resolver import DnsAnswer


class FakeResolver:
    timeout = 2.0

    def __init__(self, zones: Mapping[str, Iterable[tuple[str, str]]]) -> None:
        self.zones: dict[str, list[tuple[str, str]]] = {}
        for name, records in zones.items():
            self.zones.setdefault(name.lower().rstrip("."), []).extend(records)
        self.queries: list[tuple[str, str]] = []

    async def query(self, name: str, rdtype: str, *, timeout: float | None = None) -> DnsAnswer:
        qname = name.rstrip(".").lower()
        rdtype = rdtype.upper()
        self.queries.append((qname, rdtype))
        for _ in range(8):
            records = self.zones.get(qname)
            if records is None:
                return DnsAnswer(qname, rdtype, "nxdomain")
            found = tuple(text for t, text in records if t == rdtype)
            if found:
                return DnsAnswer(qname, rdtype, "ok", found, ttl=300)
            if any(t == "TIMEOUT" for t, _ in records):
                return DnsAnswer(qname, rdtype, "timeout", error="no answer (fake)")
            cname = [text for t, text in records if t == "CNAME"]
            if not cname:
                return DnsAnswer(qname, rdtype, "nodata")
            qname = cname[0].rstrip(".").lower()
        return DnsAnswer(name, rdtype, "servfail", error="CNAME loop (fake)")
