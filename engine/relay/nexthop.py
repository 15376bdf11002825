"""Where a copy goes next: a tenant's routes, or the MX hosts of a recipient's domain.

Algorithm:

- A tenant copy goes to the tenant's routes from the live policy (`tenant_routes`), so a hot
  reload changes them for the next attempt. `ordered` sorts them by priority, lowest first,
  with equal priorities in random order to share the load (as MX preferences, RFC 5321 §5.1).
- A DSN or other non-tenant mail goes to an address: an address in a tenant's domain uses that
  tenant's routes; any other domain is looked up in DNS (RFC 5321 §5.1): its MX records by
  preference, each exchange resolved to its A and AAAA addresses; no MX records means the
  domain itself is the one exchange (implicit MX); a null MX (RFC 7505 §3: preference 0,
  exchange ".") or a non-existent domain is a permanent failure; a DNS timeout or server
  failure is temporary. Hops found in DNS use port `mx_port` (25) and opportunistic TLS.
- MTA-STS (RFC 8461, `mta_sts`): when the domain publishes a policy in `enforce` mode, only MX
  hosts matching its `mx:` patterns are used (none matching: a temporary failure, so the copy
  waits in the queue and finally bounces), and each over TLS with a certificate valid for the MX
  host name (`Hop.tls_name`); in `testing` mode a mismatch is logged and counted, nothing else.
  Tenant routes and address literals never consult MTA-STS.

Lookups return values: a list of hops, or `NoRoute` saying why and whether it is permanent.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine import metrics
from engine.dns.resolver import Resolver
from engine.policy.models import DnsSettings, Route, RouteTls
from engine.relay.mta_sts import MtaSts
from engine.store.base import Store

log = logging.getLogger("liveprism.relay")


@dataclass(frozen=True, slots=True)
class Hop:
    """One server to try: a tenant route, or a mail exchanger found in DNS."""

    host: str
    port: int
    tls: RouteTls
    priority: int = 0  # route priority or MX preference: lowest first
    mx_name: str = ""  # the mail exchanger's name when found in DNS (the address literal for one); "" for routes
    tls_name: str | None = None  # TLS required with a certificate valid for this name (MTA-STS enforce)

    @property
    def label(self) -> str:
        """`host:port`, as shown in logs, queue listings and DSNs."""
        return f"{self.host}:{self.port}"

    @classmethod
    def of_route(cls, route: Route) -> Hop:
        return cls(route.host, route.port, route.tls, route.priority)


@dataclass(frozen=True, slots=True)
class NoRoute:
    """No hop for an address: `permanent` failures bounce, others are retried."""

    reason: str  # a diagnostic for logs and DSNs, starting with an RFC 3463 status
    permanent: bool


def internal_address(host: str) -> bool:
    """`host` is an IP address no message to a stranger should go to: loopback, private (RFC 1918,
    RFC 4193), link-local or unspecified. Names (tenant routes) are not judged here."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback or address.is_private or address.is_link_local or address.is_unspecified


def ordered(routes: Sequence[Route]) -> list[Hop]:
    """Routes as hops by priority, lowest first; equal priorities shuffled."""
    return [Hop.of_route(route) for route in sorted(routes, key=lambda route: (route.priority, random.random()))]


class NextHops:
    """Resolves tenant copies and addresses to ordered hops."""

    def __init__(
        self,
        tenant_routes: Callable[[str], Sequence[Route]],
        tenant_of_domain: Callable[[str], str | None],
        dns_settings: DnsSettings,
        *,
        mx_port: int = 25,
        mta_sts_port: int = 443,
        tls_ca_file: str | None = None,
        store: Store | None = None,
    ) -> None:
        self._tenant_routes = tenant_routes
        self._tenant_of_domain = tenant_of_domain
        self._store = store  # where MTA-STS policies are kept across restarts (None: memory only)
        self.configure(dns_settings, mx_port, mta_sts_port=mta_sts_port, tls_ca_file=tls_ca_file)

    def configure(self, dns_settings: DnsSettings, mx_port: int, *, mta_sts_port: int = 443,
                  tls_ca_file: str | None = None) -> None:
        """Use these resolver settings, MX port and MTA-STS fetch settings from the next lookup on
        (a policy reload); the MTA-STS cache is kept."""
        if getattr(self, "_resolver", None) is None:
            self._resolver = Resolver(dns_settings)
            self.mta_sts = MtaSts(self._resolver, port=mta_sts_port, ca_file=tls_ca_file, store=self._store)
        else:
            self._resolver.configure(dns_settings)
            self.mta_sts.configure(port=mta_sts_port, ca_file=tls_ca_file)
        self._mx_port = mx_port

    def tenant_of_domain(self, domain: str) -> str | None:
        """The tenant owning `domain` in the current policy, if any."""
        return self._tenant_of_domain(domain.strip().lower().rstrip("."))

    def routes(self, tenant: str) -> Sequence[Route]:
        """The tenant's routes in the current policy (empty when the tenant is gone)."""
        return self._tenant_routes(tenant)

    async def for_address(self, address: str) -> list[Hop] | NoRoute:
        """Ordered hops for mail to `address` (see the module docstring)."""
        domain = address.rpartition("@")[2].strip().lower().rstrip(".")
        if not domain:
            return NoRoute(f"5.1.3 no domain in address {address!r}", permanent=True)
        if domain.startswith("[") and domain.endswith("]"):  # address literal, RFC 5321 §4.1.3
            literal = domain[1:-1].removeprefix("ipv6:")
            try:
                address = str(ipaddress.ip_address(literal))
                return [self._hop(address, 0, address)]
            except ValueError:
                return NoRoute(f"5.1.2 bad address literal {domain}", permanent=True)
        tenant = self._tenant_of_domain(domain)
        if tenant is not None:
            routes = ordered(self.routes(tenant))
            return routes or NoRoute(f"4.4.0 tenant {tenant} has no routes", permanent=False)
        return await self._mx_hops(domain)

    def _hop(self, host: str, preference: int, mx_name: str, tls_name: str | None = None) -> Hop:
        tls = RouteTls.required if tls_name else RouteTls.opportunistic
        return Hop(host, self._mx_port, tls, preference, mx_name, tls_name)

    async def _mx_hops(self, domain: str) -> list[Hop] | NoRoute:
        answer = await self._resolver.query(domain, "MX")
        if answer.status == "nxdomain":
            return NoRoute(f"5.1.2 domain {domain} does not exist", permanent=True)
        if answer.status == "nodata":
            exchanges = [(0, domain)]  # implicit MX, RFC 5321 §5.1
        elif not answer.ok:  # timeout, SERVFAIL, bad name
            return NoRoute(f"4.4.3 MX lookup for {domain} failed: {answer.status} {answer.error}".rstrip(),
                           permanent=False)
        else:
            records = [(int(r.preference), r.exchange) for r in answer.rdata]  # type: ignore[attr-defined]
            if any(str(exchange) == "." for _, exchange in records):
                return NoRoute(f"5.1.10 {domain} accepts no mail (null MX, RFC 7505)", permanent=True)
            exchanges = [(pref, exchange.to_text(omit_final_dot=True)) for pref, exchange in records]
        sts = await self.mta_sts.lookup(domain)
        enforce = sts.policy is not None and sts.policy.mode == "enforce"
        if sts.policy is not None and sts.policy.mode != "none":
            allowed = [(pref, host) for pref, host in exchanges if sts.policy.matches(host)]
            if len(allowed) < len(exchanges):
                others = ",".join(host for _, host in exchanges if not sts.policy.matches(host))
                metrics.relay_event(f"mta-sts-{sts.policy.mode}-mx-mismatch")
                log.warning("mta-sts domain=%s mode=%s mx not in policy: %s", domain, sts.policy.mode, others)
            if enforce:
                if not allowed:
                    return NoRoute(f"4.7.5 no mail exchanger of {domain} matches its MTA-STS policy (RFC 8461 §4.1)",
                                   permanent=False)
                exchanges = allowed
        hops: list[Hop] = []
        temporary = False
        for preference, host in sorted(exchanges, key=lambda item: (item[0], random.random())):
            addresses, failed = await self._addresses(host)
            temporary |= failed
            hops.extend(self._hop(address, preference, host, host if enforce else None) for address in addresses)
        if hops:
            return hops
        if temporary:
            return NoRoute(f"4.4.3 cannot resolve the mail exchangers of {domain}", permanent=False)
        return NoRoute(f"5.1.2 the mail exchangers of {domain} have no address", permanent=True)

    async def _addresses(self, host: str) -> tuple[list[str], bool]:
        """IPv4 then IPv6 addresses of `host`, and whether a lookup failed temporarily."""
        found: list[str] = []
        temporary = False
        for rdtype in ("A", "AAAA"):
            answer = await self._resolver.query(host, rdtype)
            temporary |= answer.temporary
            found.extend(answer.records if answer.ok else ())
        return found, temporary
