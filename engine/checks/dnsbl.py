"""DNS block lists: the client address against DNSBL zones, domains against RHSBL/URIBL zones.

Contract (detection only; what a listing does is the policy's business):
- `query_name(ip, zone)`: IPv4 as reversed octets (RFC 5782 §2.1), IPv6 as reversed nibbles
  (RFC 5782 §2.4); an IPv4-mapped IPv6 address is queried as IPv4;
- a zone answers with A records in 127.0.0.0/8 for a listed name (RFC 5782 §2.3). Answers in
  127.255.255.0/24 are the operator refusing or rate-limiting the query (Spamhaus, SURBL, URIBL
  conventions): an `error`, never a listing. Answers outside 127.0.0.0/8 (a resolver rewriting
  NXDOMAIN) are an `error` too. With `returns`, only those answers count as a listing;
- NXDOMAIN / no data: `clean`; timeout, SERVFAIL: `error`. Nothing here raises;
- zones and names are queried concurrently; each result says what was asked, what came back and
  how long it took.
Link domains (`link_domains`) are the registrable domains (public suffix list) of the http(s)
and `www.` links in the text and HTML parts, at most `limit` distinct ones in order of appearance.
Given the message's MIME view, the raw message (quoted-printable soft line breaks removed) and
the view's decoded texts are searched, without a second MIME parse; only a base64-encoded HTML
part (whose href targets the view does not keep) needs the stdlib parser (`needs_full_parse`).
"""

from __future__ import annotations

import email
import email.policy
import ipaddress
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal, Protocol

from publicsuffixlist import PublicSuffixList

from engine.checks.lookup import gather
from engine.dns.resolver import DnsAnswer
from engine.mime.view import MessageView, text_preview, text_str

ListStatus = Literal["listed", "clean", "error"]

_REFUSED = ipaddress.ip_network("127.255.255.0/24")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
# A link's host: after a scheme (http, https) or a bare "www." start.
_LINK_HOST = re.compile(r"(?i)(?:\bhttps?://(?:[^\s/@<>\"']*@)?|\bwww\.)([a-z0-9\u00a1-\uffff][a-z0-9.\u00a1-\uffff-]*)")
# Searched in lowercased bytes: no IGNORECASE, so the regex engine skips ahead to an "h" or a "w".
_LINK_HOST_BYTES = re.compile(rb"(?:https?://(?:[^\s/@<>\"']*@)?|www\.)([a-z0-9][a-z0-9.-]*)")
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_BASE64_PART = re.compile(rb"content-transfer-encoding:[ \t]*base64")  # in lowercased bytes
_MAX_SCAN_BYTES = 2_000_000  # text bytes searched for links per message


class DnsClient(Protocol):
    """The one resolver method the checks use (`engine.dns.resolver.Resolver.query`)."""

    async def query(self, name: str, rdtype: str, *, timeout: float | None = None) -> DnsAnswer: ...


class ListZone(Protocol):
    """A configured zone (`checks.dnsbl[]` / `checks.uribl[]` item)."""

    @property
    def zone(self) -> str: ...

    @property
    def returns(self) -> Sequence[ipaddress.IPv4Address]: ...


@dataclass(frozen=True, slots=True)
class ListResult:
    """One lookup of one subject (an address or a domain) in one zone."""

    zone: str
    subject: str
    query: str
    status: ListStatus
    answers: tuple[str, ...] = ()
    reason: str = ""
    elapsed: float = 0.0

    @property
    def listed(self) -> bool:
        return self.status == "listed"


@lru_cache(maxsize=4096)
def query_name(ip: str, zone: str) -> str | None:
    """The DNSBL name for `ip` in `zone`; None when `ip` is not an IP address."""
    try:
        address = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        reversed_part = ".".join(reversed(str(address).split(".")))
    else:
        reversed_part = ".".join(reversed(address.exploded.replace(":", "")))
    return f"{reversed_part}.{zone}"


def classify(answer: DnsAnswer, returns: Sequence[ipaddress.IPv4Address]) -> tuple[ListStatus, str]:
    """(status, reason) of one A answer of a block list zone."""
    if answer.missing:
        return "clean", ""
    if not answer.ok:
        return "error", f"{answer.status}: {answer.error}".rstrip(": ")
    addresses = []
    for record in answer.records:
        try:
            addresses.append(ipaddress.IPv4Address(record))
        except ValueError:
            return "error", f"not an IPv4 answer: {record}"
    refused = [a for a in addresses if a in _REFUSED]
    if refused:
        return "error", f"query refused by the list operator ({refused[0]})"
    odd = [a for a in addresses if a not in _LOOPBACK]
    if odd:
        return "error", f"answer outside 127.0.0.0/8 ({odd[0]}): not a block list answer"
    if returns:
        wanted = set(returns)
        matched = [a for a in addresses if a in wanted]
        if not matched:
            return "clean", f"answer {', '.join(map(str, addresses))} not in returns"
        return "listed", ", ".join(map(str, matched))
    return "listed", ", ".join(map(str, addresses))


async def _lookup(resolver: DnsClient, zone: ListZone, subject: str, name: str) -> ListResult:
    answer = await resolver.query(name, "A")
    status, reason = classify(answer, zone.returns)
    return ListResult(zone.zone, subject, name, status, answer.records, reason, answer.elapsed)


async def check_ip(resolver: DnsClient, client_ip: str, zones: Sequence[ListZone]) -> tuple[ListResult, ...]:
    """`client_ip` in every DNSBL zone, concurrently; a non-IP client gives an error per zone."""
    lookups = []
    results: list[ListResult] = []
    for zone in zones:
        name = query_name(client_ip, zone.zone)
        if name is None:
            results.append(ListResult(zone.zone, client_ip, "", "error", reason="client address is not an IP"))
        else:
            lookups.append(_lookup(resolver, zone, client_ip, name))
    return (*results, *await gather(lookups))


async def check_domains(
    resolver: DnsClient, domains: Iterable[str], zones: Sequence[ListZone]
) -> tuple[ListResult, ...]:
    """Every domain in every RHSBL/URIBL zone (`domain.zone`, RFC 5782 §3), concurrently."""
    unique = list(dict.fromkeys(d.lower().rstrip(".") for d in domains if d))
    lookups = [_lookup(resolver, zone, domain, f"{domain}.{zone.zone}") for zone in zones for domain in unique]
    return tuple(await gather(lookups))


@lru_cache(maxsize=1)
def _psl() -> PublicSuffixList:
    return PublicSuffixList()


@lru_cache(maxsize=4096)
def registrable_domain(host: str) -> str | None:
    """The registrable domain (public suffix + one label) of a host name; None for IPs and suffixes."""
    host = host.strip().strip(".").lower()
    if not host or "." not in host:
        return None
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    domain = _psl().privatesuffix(host)
    return str(domain) if domain else None


def _texts(raw: bytes) -> Iterable[str]:
    """Decoded text/* parts (HTML source included, so href targets are seen), bounded in size."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    budget = _MAX_SCAN_BYTES
    for part in message.walk():
        if part.get_content_maintype() != "text" or part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes):
            continue
        payload = payload[:budget]
        budget -= len(payload)
        charset = part.get_content_charset() or "utf-8"
        try:
            yield payload.decode(charset, "replace")
        except LookupError:
            yield payload.decode("utf-8", "replace")
        if budget <= 0:
            return


def _has_base64_part(lowered: bytes) -> bool:
    return b"base64" in lowered and _BASE64_PART.search(lowered) is not None


def needs_full_parse(raw: bytes, view: MessageView) -> bool:
    """Whether link extraction needs the stdlib parser: an HTML part may be base64-encoded."""
    return "text/html" in view.content_types and _has_base64_part(raw[:_MAX_SCAN_BYTES].lower())


def link_domains(raw: bytes, limit: int, view: MessageView | None = None) -> tuple[str, ...]:
    """Registrable domains of the links in the message's text and HTML parts, at most `limit`.

    With `view` (and no base64 HTML part, see `needs_full_parse`) the raw bytes and the view's
    decoded texts are searched; without it every text part is decoded by the stdlib parser."""
    found: dict[str, None] = {}
    if limit <= 0:
        return ()
    hosts: list[str] = []
    lowered = raw[:_MAX_SCAN_BYTES].lower()
    base64_part = _has_base64_part(lowered)
    if view is not None and not (base64_part and "text/html" in view.content_types):
        end = _HEADER_END.search(lowered)
        start = end.end() if end is not None else 0  # the body: links in header fields do not count
        data = lowered[start:].replace(b"=\r\n", b"").replace(b"=\n", b"")  # QP soft breaks
        hosts.extend(_hosts(_LINK_HOST_BYTES.finditer(data), bytes))
        if base64_part:  # base64 text/plain: its decoded text
            for text in view.texts:
                hosts.extend(_hosts(_LINK_HOST.finditer(text_str(text)), str))
            for deferred in view.deferred:  # (a large text not decoded yet: its first bytes)
                hosts.extend(_hosts(_LINK_HOST.finditer(text_preview(raw, deferred, _MAX_SCAN_BYTES)), str))
    else:
        try:
            texts = list(_texts(raw))
        except Exception:  # a message the stdlib parser chokes on has no links we can read
            return ()
        for text in texts:
            hosts.extend(_hosts(_LINK_HOST.finditer(text), str))
    for host in hosts:
        domain = registrable_domain(host)
        if domain is not None and domain not in found:
            found[domain] = None
            if len(found) >= limit:
                break
    return tuple(found)


def _hosts(matches: Iterable[re.Match[Any]], kind: type) -> Iterator[str]:
    for match in matches:
        host = match.group(1)
        start = match.group(0)[:4]
        if kind is bytes:
            host, start = host.decode("ascii"), start.decode("ascii")
        host = host.rstrip(".-")
        yield "www." + host if start.lower() == "www." else host
