"""An in-memory resolver with the `Resolver.query` contract (engine/dns/resolver.py), for unit tests.

Zones are `{name: [(rdtype, text), ...]}`; the rdtype `TIMEOUT` (with any text) makes every
query for that name whose type has no record time out, as the openspf suite's `TIMEOUT` does.
CNAMEs are followed (8 levels at most, then SERVFAIL, as a resolver does on a loop). A name
missing from the zones is NXDOMAIN, a name present without the type is no-data.

`FakeResolver.answering({(name, type): (status, records)})` is the same resolver set up from the
answers themselves, a status (timeout, servfail, nxdomain...) for each question that has one.
Every question asked is in `queries`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from engine.dns.resolver import DnsAnswer, DnsStatus


def _normal(name: str) -> str:
    return name.rstrip(".").lower()


class FakeResolver:
    timeout = 2.0

    def __init__(self, zones: Mapping[str, Iterable[tuple[str, str]]] | None = None, *,
                 failures: Mapping[tuple[str, str], DnsStatus] | None = None) -> None:
        self.zones: dict[str, list[tuple[str, str]]] = {}
        for name, records in (zones or {}).items():
            self.zones.setdefault(_normal(name), []).extend(records)
        self.failures = {(_normal(name), rdtype.upper()): status for (name, rdtype), status in (failures or {}).items()}
        self.queries: list[tuple[str, str]] = []

    @classmethod
    def answering(cls, answers: Mapping[tuple[str, str], tuple[DnsStatus, Iterable[str]]]) -> FakeResolver:
        """The resolver giving these answers: "ok" ones as records, the others as failures."""
        zones: dict[str, list[tuple[str, str]]] = {}
        failures: dict[tuple[str, str], DnsStatus] = {}
        for (name, rdtype), (status, records) in answers.items():
            if status == "ok":
                zones.setdefault(name, []).extend((rdtype.upper(), text) for text in records)
            else:
                failures[(name, rdtype)] = status
        return cls(zones, failures=failures)

    async def query(self, name: str, rdtype: str, *, timeout: float | None = None) -> DnsAnswer:
        qname = _normal(name)
        rdtype = rdtype.upper()
        self.queries.append((qname, rdtype))
        for _ in range(8):
            failure = self.failures.get((qname, rdtype))
            if failure is not None:
                return DnsAnswer(qname, rdtype, failure, error=f"{failure} (fake)")
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
            qname = _normal(cname[0])
        return DnsAnswer(name, rdtype, "servfail", error="CNAME loop (fake)")
