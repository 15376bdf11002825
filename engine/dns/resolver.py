"""The one DNS resolver of the gateway: dnspython's async resolver, answers as values, cached by TTL.

Every lookup the gateway makes goes through `Resolver.query` (the relay's MX lookups, the
checks, outbound delivery, `dns --check`), so that one `gateway.yaml` `dns:` section decides
where questions go and how long they may take.

Contract:
- `query` never raises for DNS outcomes: NXDOMAIN, no data, timeout, SERVFAIL and malformed
  names come back as a `DnsAnswer` with a `status`; a caller on the SMTP path can always go on;
- `timeout` bounds one query in seconds (default: `dns.timeout` from the policy); the whole
  lookup, retries included, never takes longer than that;
- positive answers are cached for their TTL (capped at `max_ttl`), NXDOMAIN and no-data for the
  SOA minimum (RFC 2308 §5, capped at `max_negative_ttl`); timeouts and server failures are not
  cached. The cache is per resolver and bounded in entries (oldest dropped first);
- `records` are the rdata texts; for TXT the character-strings of each record are joined
  without separator (RFC 7208 §3.3), decoded as UTF-8 with replacement.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.rdata
import dns.rdatatype
import dns.resolver
import dns.rrset

from engine.policy.models import DnsSettings

DnsStatus = Literal["ok", "nxdomain", "nodata", "timeout", "servfail", "error"]


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The outcome of one lookup: a status, the records found (possibly none) and what it cost."""

    name: str
    rdtype: str
    status: DnsStatus
    records: tuple[str, ...] = ()
    rdata: tuple[dns.rdata.Rdata, ...] = ()
    ttl: int = 0
    elapsed: float = 0.0  # seconds spent (0.0 for a cache hit)
    cached: bool = False
    error: str = ""  # a diagnostic for `error`/`servfail`/`timeout`

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def temporary(self) -> bool:
        """A failure that may go away on retry (RFC 7208 temperror, RFC 5321 4xx)."""
        return self.status in ("timeout", "servfail", "error")

    @property
    def missing(self) -> bool:
        """The name or the record type does not exist (a definite negative answer)."""
        return self.status in ("nxdomain", "nodata")


def _record_text(rdata: dns.rdata.Rdata) -> str:
    if rdata.rdtype == dns.rdatatype.TXT:
        strings: Sequence[bytes] = rdata.strings  # type: ignore[attr-defined]
        return b"".join(strings).decode("utf-8", "replace")
    return str(rdata.to_text())


def _negative_ttl(response: dns.message.Message | None, cap: int) -> int:
    if response is None:
        return 0
    for rrset in response.authority:
        if rrset.rdtype == dns.rdatatype.SOA:
            return min(int(rrset.ttl), int(rrset[0].minimum), cap)
    return 0


class Resolver:
    """Async, TTL-cached DNS lookups configured by `gateway.yaml` `dns:` (see the module docstring)."""

    def __init__(
        self, settings: DnsSettings, *, max_entries: int = 50_000, max_ttl: int = 86_400, max_negative_ttl: int = 900
    ) -> None:
        self._max_entries = max_entries
        self._max_ttl = max_ttl
        self._max_negative_ttl = max_negative_ttl
        self._cache: OrderedDict[tuple[str, str], tuple[float, DnsAnswer]] = OrderedDict()
        self.configure(settings)

    def configure(self, settings: DnsSettings) -> None:
        """Use these settings from the next lookup on (a policy reload); the cache is kept unless
        the servers change."""
        resolver = dns.asyncresolver.Resolver(configure=not settings.nameservers)
        if settings.nameservers:
            resolver.nameservers = [str(ns) for ns in settings.nameservers]
        resolver.port = settings.port
        resolver.timeout = settings.timeout
        resolver.lifetime = settings.timeout
        resolver.cache = None  # ours caches negative answers and values too
        old = getattr(self, "_resolver", None)
        if old is not None and (old.nameservers, old.port) != (resolver.nameservers, resolver.port):
            self._cache.clear()
        self._resolver = resolver
        self.timeout = settings.timeout

    def clear_cache(self) -> None:
        self._cache.clear()

    async def query(self, name: str, rdtype: str, *, timeout: float | None = None) -> DnsAnswer:
        """Look up `name` (absolute or not; trailing dot optional) for `rdtype` ("A", "TXT", …)."""
        qname = name.rstrip(".").lower() or "."
        key = (qname, rdtype.upper())
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None:
            expires, answer = hit
            if expires > now:
                return DnsAnswer(answer.name, answer.rdtype, answer.status, answer.records, answer.rdata,
                                 max(0, int(expires - now)), 0.0, True, answer.error)
            del self._cache[key]
        answer, ttl = await self._lookup(qname, key[1], self.timeout if timeout is None else timeout)
        if ttl > 0:
            self._cache[key] = (now + ttl, answer)
            if len(self._cache) > self._max_entries:
                self._cache.popitem(last=False)
        return answer

    async def _lookup(self, qname: str, rdtype: str, timeout: float) -> tuple[DnsAnswer, int]:
        started = time.monotonic()

        def result(status: DnsStatus, error: str = "", response: dns.message.Message | None = None) -> DnsAnswer:
            return DnsAnswer(qname, rdtype, status, elapsed=time.monotonic() - started, error=error)

        try:
            answer = await self._resolver.resolve(qname, rdtype, lifetime=timeout, search=False)
        except dns.resolver.NXDOMAIN as exc:
            qnames = exc.qnames()  # type: ignore[no-untyped-call]
            response = exc.response(qnames[0]) if qnames else None  # type: ignore[no-untyped-call]
            return result("nxdomain"), _negative_ttl(response, self._max_negative_ttl)
        except dns.resolver.NoAnswer as exc:
            response = exc.kwargs.get("response")
            return result("nodata"), _negative_ttl(response, self._max_negative_ttl)
        except dns.resolver.LifetimeTimeout:
            return result("timeout", f"no answer within {timeout:g} s"), 0
        except dns.resolver.NoNameservers as exc:
            return result("servfail", str(exc)), 0
        except (dns.exception.DNSException, ValueError) as exc:
            return result("error", str(exc) or type(exc).__name__), 0
        rrset: dns.rrset.RRset | None = answer.rrset
        rdata = tuple(rrset) if rrset is not None else ()
        ttl = min(int(rrset.ttl) if rrset is not None else 0, self._max_ttl)
        found = DnsAnswer(qname, rdtype, "ok", tuple(_record_text(r) for r in rdata), rdata, ttl,
                          time.monotonic() - started)
        return found, ttl
