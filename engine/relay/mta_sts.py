"""MTA-STS (RFC 8461) for the relay's deliveries to the world: discovery, fetch, cache, matching.

Algorithm for a recipient domain D (RFC 8461 §5.1), on the shared resolver:

1. TXT `_mta-sts.D`: exactly one record starting with `v=STSv1` carrying an `id=` (§3.1); several,
   or none, mean no record.
2. A cached policy of D that has not outlived its `max_age` and whose id equals the record's is
   used as is. A cached policy is also used, unchanged, when there is no record now or the
   lookup fails (§5: a cached policy stays in force until it expires).
3. Otherwise the policy is fetched from `https://mta-sts.D/.well-known/mta-sts.txt` (port
   `delivery.mta_sts_port`), the host resolved on the shared resolver, with strict checks (§3.3):
   a certificate valid for `mta-sts.D` (system CAs + `delivery.tls_ca_file`), status 200 (no
   redirects followed), `Content-Type: text/plain`, at most MAX_POLICY_BYTES, within
   FETCH_TIMEOUT seconds. A fetched policy replaces the cached one; when the fetch fails the
   cached one (if still valid) stays in force, else D has no policy. A failed fetch is not
   repeated for the same id within FAILURE_BACKOFF seconds.

The cache lives in memory and, when a store is given (the relay's), in the store's `mta_sts`
table until each policy's max_age runs out: a relay restart keeps enforcing what it learnt
(§5: the cache is what protects against a downgrade), a store error only costs that.
What a policy means for delivery (`enforce`: only matching MX hosts, verified TLS; `testing`:
report only) is `nexthop`'s business; `StsPolicy.matches` is §4.1.
Results are values: `lookup` never raises.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Literal

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from engine.dns.resolver import Resolver
from engine.store.base import Store, StoreError

log = logging.getLogger("liveprism.relay")

MAX_POLICY_BYTES = 64 * 1024
FETCH_TIMEOUT = 10.0
FAILURE_BACKOFF = 300.0
MAX_AGE_LIMIT = 31_557_600  # RFC 8461 §3.2: at most a year
Mode = Literal["enforce", "testing", "none"]


@dataclass(frozen=True, slots=True)
class StsPolicy:
    """A parsed policy (RFC 8461 §3.2) and when it was fetched."""

    id: str
    mode: Mode
    mx: tuple[str, ...]  # patterns: "mail.example.com" or "*.example.com"
    max_age: int
    fetched_at: float

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "mode": self.mode, "mx": list(self.mx), "max_age": self.max_age,
                           "fetched_at": self.fetched_at})

    @classmethod
    def from_json(cls, text: str) -> StsPolicy | None:
        """The policy `to_json` wrote; None when the text is not one."""
        try:
            data = json.loads(text)
            policy = cls(str(data["id"]), data["mode"], tuple(str(m) for m in data["mx"]), int(data["max_age"]),
                         float(data["fetched_at"]))
        except (ValueError, KeyError, TypeError):
            return None
        return policy if policy.mode in ("enforce", "testing", "none") else None

    def expired(self, now: float) -> bool:
        return now >= self.fetched_at + self.max_age

    def matches(self, host: str) -> bool:
        """Whether MX host `host` is allowed (RFC 8461 §4.1: a `*.` pattern stands for exactly one label)."""
        name = host.lower().rstrip(".")
        for pattern in self.mx:
            pattern = pattern.lower().rstrip(".")
            if pattern.startswith("*."):
                label, _, rest = name.partition(".")
                if label and rest == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False


def parse_policy(text: str, policy_id: str, now: float) -> StsPolicy | str:
    """The policy in `text`, or why it is invalid."""
    values: dict[str, list[str]] = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        if not line.strip():
            continue
        key, colon, value = line.partition(":")
        if not colon:
            return f"malformed line {line[:80]!r}"
        values.setdefault(key.strip().lower(), []).append(value.strip())
    if values.get("version") != ["STSv1"]:
        return "version is not STSv1"
    mode = (values.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        return f"invalid mode {mode!r}"
    age = (values.get("max_age") or [""])[0]
    if not age.isdigit() or len(age) > 10:
        return f"invalid max_age {age!r}"
    mx = tuple(values.get("mx", ()))
    if mode != "none" and not mx:
        return "no mx: lines"
    return StsPolicy(policy_id, mode, mx, min(int(age), MAX_AGE_LIMIT), now)  # type: ignore[arg-type]


def record_id(texts: tuple[str, ...]) -> str | None:
    """The id= of the one `v=STSv1` TXT record among `texts` (RFC 8461 §3.1), else None."""
    records = [t for t in texts if t.strip().startswith("v=STSv1")]
    if len(records) != 1:
        return None
    for field in records[0].split(";"):
        key, _, value = field.strip().partition("=")
        if key.strip() == "id" and value.strip().isalnum() and len(value.strip()) <= 32:
            return value.strip()
    return None


class _SharedResolver(AbstractResolver):
    """aiohttp's host lookups on the gateway's resolver (`dns:` of gateway.yaml), not the system's."""

    def __init__(self, resolver: Resolver) -> None:
        self._resolver = resolver

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        found: list[ResolveResult] = []
        for rdtype, fam in (("A", socket.AF_INET), ("AAAA", socket.AF_INET6)):
            if family not in (socket.AF_UNSPEC, fam):
                continue
            answer = await self._resolver.query(host, rdtype)
            found.extend(
                ResolveResult(hostname=host, host=address, port=port, family=fam, proto=0, flags=0)
                for address in answer.records
            )
        if not found:
            raise OSError(f"cannot resolve {host}")
        return found

    async def close(self) -> None:
        return None


def verified_context(ca_file: str | None) -> ssl.SSLContext:
    """A client context that verifies certificates and names: system CAs, plus `ca_file` when set
    (one that cannot be read is logged and left out: certificates it would vouch for then fail)."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            log.error("delivery.tls_ca_file %s cannot be loaded: %s", ca_file, exc)
    return context


@dataclass(frozen=True, slots=True)
class StsLookup:
    """The policy in force for a domain (None: no policy) and how it was found, for logs."""

    policy: StsPolicy | None
    note: str = ""


class MtaSts:
    """Discovers, fetches and caches MTA-STS policies; see the module docstring."""

    def __init__(self, resolver: Resolver, *, port: int = 443, ca_file: str | None = None,
                 store: Store | None = None) -> None:
        self._resolver = resolver
        self._store = store
        self._cache: dict[str, StsPolicy] = {}
        self._read_from_store: set[str] = set()  # domains looked up in the store since the start
        self._failed: dict[tuple[str, str], float] = {}  # (domain, id) -> when the fetch failed
        self.configure(port=port, ca_file=ca_file)

    def configure(self, *, port: int, ca_file: str | None) -> None:
        """Use this HTTPS port and CA file from the next fetch on (a policy reload)."""
        self._port = port
        self._ca_file = ca_file
        self._context = verified_context(ca_file)

    async def lookup(self, domain: str) -> StsLookup:
        """The policy in force for `domain` (never raises)."""
        now = time.time()
        if domain not in self._cache and domain not in self._read_from_store:
            await self._restore(domain, now)
        cached = self._cache.get(domain)
        if cached is not None and cached.expired(now):
            del self._cache[domain]
            cached = None
        answer = await self._resolver.query(f"_mta-sts.{domain}", "TXT")
        policy_id = record_id(answer.records) if answer.ok else None
        if policy_id is None:
            why = "lookup failed" if answer.temporary else "no record"
            return StsLookup(cached, f"_mta-sts TXT: {why}" + ("; cached policy kept" if cached else ""))
        if cached is not None and cached.id == policy_id:
            return StsLookup(cached, "cached")
        failed_at = self._failed.get((domain, policy_id))
        if failed_at is not None and now - failed_at < FAILURE_BACKOFF:
            return StsLookup(cached, "recent fetch failed" + ("; cached policy kept" if cached else ""))
        fetched = await self.fetch(domain, policy_id, now)
        if isinstance(fetched, str):
            self._failed[(domain, policy_id)] = now
            log.warning("mta-sts domain=%s id=%s fetch failed: %s%s", domain, policy_id, fetched,
                        "; the cached policy stays in force" if cached else "")
            return StsLookup(cached, f"fetch failed: {fetched}")
        self._failed.pop((domain, policy_id), None)
        self._cache[domain] = fetched
        if self._store is not None:
            try:
                await self._store.save_mta_sts_policy(domain, fetched.to_json(), fetched.fetched_at + fetched.max_age)
            except StoreError as exc:
                log.error("mta-sts domain=%s cannot store the policy: %s", domain, exc)
        log.info("mta-sts domain=%s id=%s mode=%s max_age=%d mx=%s", domain, policy_id, fetched.mode,
                 fetched.max_age, ",".join(fetched.mx))
        return StsLookup(fetched, "fetched")

    async def _restore(self, domain: str, now: float) -> None:
        """Load `domain`'s policy from the store into the cache (once per domain and process)."""
        self._read_from_store.add(domain)
        if self._store is None:
            return
        try:
            text = await self._store.mta_sts_policy(domain, now)
        except StoreError as exc:
            log.error("mta-sts domain=%s cannot read the stored policy: %s", domain, exc)
            return
        policy = StsPolicy.from_json(text) if text is not None else None
        if policy is not None:
            self._cache[domain] = policy

    async def fetch(self, domain: str, policy_id: str, now: float) -> StsPolicy | str:
        """GET the policy file with the checks of the module docstring; the policy or why not."""
        port = "" if self._port == 443 else f":{self._port}"
        url = f"https://mta-sts.{domain}{port}/.well-known/mta-sts.txt"
        connector = aiohttp.TCPConnector(resolver=_SharedResolver(self._resolver), ssl=self._context,
                                         use_dns_cache=False)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT)) as http,
                http.get(url, allow_redirects=False) as response,
            ):
                if response.status != 200:
                    return f"{url} answered HTTP {response.status}"
                content_type = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
                if content_type != "text/plain":
                    return f"{url} is {content_type or 'untyped'}, not text/plain"
                body = await response.content.read(MAX_POLICY_BYTES + 1)
                if len(body) > MAX_POLICY_BYTES:
                    return f"{url} is larger than {MAX_POLICY_BYTES} bytes"
        except (aiohttp.ClientError, OSError, TimeoutError, ssl.SSLError, ValueError) as exc:
            return f"{url}: {type(exc).__name__}: {exc}"
        parsed = parse_policy(body.decode("utf-8", "replace"), policy_id, now)
        return parsed if isinstance(parsed, StsPolicy) else f"{url}: {parsed}"
