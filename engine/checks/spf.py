"""SPF (RFC 7208) on the shared async resolver: detection only.

`check_spf` evaluates `check_host()` (RFC 7208 §4) for the MAIL FROM identity, or for the HELO
identity when the reverse-path is null (RFC 7208 §2.4), and returns an `SpfResult` value; it
never raises and never blocks the event loop (every query goes through `AsyncLookup.query`).

Contract:
- the whole record is parsed before any term is evaluated, so a syntax error anywhere is a
  `permerror` (RFC 7208 §4.6); macros (§7) are checked at parse time and expanded lazily;
- at most 10 terms that cause DNS queries (include, a, mx, ptr, exists, redirect) and at most 2
  void lookups (NXDOMAIN or no data) per check, else `permerror` (§4.6.4); at most 10 MX
  exchanges (else `permerror`) and 10 PTR names (the rest ignored) per mechanism;
- a DNS timeout or server failure is `temperror` and never turns into `fail`; `timeout_budget`
  bounds the whole check (every query gets at most the time left), spent budget = `temperror`;
- `exp=` is looked up only after a `fail`, and problems with it only drop the explanation
  (§6.2); its lookup counts against no limit;
- every DNS answer used is kept in `SpfResult.lookups` in query order, with its time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import time
import urllib.parse
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from engine.checks.lookup import AsyncLookup, Budget
from engine.dns.resolver import DnsAnswer

SpfResultCode = Literal["none", "neutral", "pass", "fail", "softfail", "temperror", "permerror"]
SpfIdentity = Literal["mailfrom", "helo"]

MAX_DNS_TERMS = 10  # RFC 7208 §4.6.4
MAX_VOID_LOOKUPS = 2  # RFC 7208 §4.6.4 (the RECOMMENDED default)
MAX_MX_OR_PTR_NAMES = 10  # RFC 7208 §4.6.4

_QUALIFIERS: dict[str, SpfResultCode] = {"+": "pass", "-": "fail", "~": "softfail", "?": "neutral"}
_MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})
_DOMAIN_MACROS = frozenset("slodiphv")  # RFC 7208 §7.2: c, r, t only in explanation text
_EXP_MACROS = _DOMAIN_MACROS | frozenset("crt")
_DELIMITERS = frozenset(".-+,/_=")
_MODIFIER_NAME = re.compile(r"[A-Za-z][A-Za-z0-9\-_.]*")
_TOPLABEL = re.compile(r"(?:[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9\-]*[A-Za-z0-9])")
_DOMAIN_END = re.compile(r"\.(?:" + _TOPLABEL.pattern + r")\.?$")
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4 = re.compile(rf"{_QNUM}\.{_QNUM}\.{_QNUM}\.{_QNUM}")
_CIDR = re.compile(r"0|[1-9][0-9]*")
_A_MX_ARGS = re.compile(r"(?::(?P<domain>.*?))?(?:/(?P<c4>[0-9]+))?(?://(?P<c6>[0-9]+))?", re.S)


@dataclass(frozen=True, slots=True)
class SpfResult:
    """The outcome of one SPF check (RFC 7208 §2.6), with every DNS answer it used."""

    result: SpfResultCode
    domain: str  # the domain whose policy was checked ("" when the identity had none)
    identity: SpfIdentity  # which identity was checked: MAIL FROM, or HELO for the null sender
    sender: str  # <sender> as checked (postmaster@helo for the null sender)
    mechanism: str = ""  # the term that decided ("-all", "ip4:192.0.2.0/24", "default" when none matched)
    explanation: str = ""  # the expanded exp= text after a fail ("" when none)
    reason: str = ""  # why permerror/temperror/none: a kebab-case token, then details
    lookups: tuple[DnsAnswer, ...] = ()  # every DNS answer used, in query order
    elapsed: float = 0.0  # seconds for the whole check


class _PermError(Exception):
    """Internal: aborts evaluation with permerror (turned into a value by `check_spf`)."""


class _TempError(Exception):
    """Internal: aborts evaluation with temperror (turned into a value by `check_spf`)."""


# -- parsing -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    """One piece of a macro-string: a literal, or a macro (letter, digits, reverse, delimiters)."""

    literal: str = ""
    letter: str = ""
    digits: int | None = None
    reverse: bool = False
    delimiters: str = ""


def _parse_macro_string(text: str, *, letters: frozenset[str], explanation: bool = False) -> tuple[_Token, ...]:
    """Tokens of a macro-string (RFC 7208 §7.1); a syntax error raises `_PermError`."""
    tokens: list[_Token] = []
    literal: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "%":
            if not explanation and not ("\x21" <= ch <= "\x7e"):
                raise _PermError(f"syntax-error: character {ch!r} in {text!r}")
            literal.append(ch)
            i += 1
            continue
        nxt = text[i + 1] if i + 1 < len(text) else ""
        if nxt in ("%", "_", "-"):
            literal.append({"%": "%", "_": " ", "-": "%20"}[nxt])
            i += 2
            continue
        if nxt != "{":
            raise _PermError(f"syntax-error: bad macro at {text[i:i + 3]!r} in {text!r}")
        end = text.find("}", i)
        if end < 0:
            raise _PermError(f"syntax-error: unterminated macro in {text!r}")
        body = text[i + 2 : end]
        m = re.fullmatch(r"([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)", body)
        if m is None or m.group(1).lower() not in letters:
            raise _PermError(f"syntax-error: bad macro %{{{body}}} in {text!r}")
        digits = int(m.group(2)) if m.group(2) else None
        if digits == 0:
            raise _PermError(f"syntax-error: zero transformer in %{{{body}}}")
        if literal:
            tokens.append(_Token(literal="".join(literal)))
            literal = []
        tokens.append(_Token(letter=m.group(1), digits=digits, reverse=bool(m.group(3)), delimiters=m.group(4)))
        i = end + 1
    if literal:
        tokens.append(_Token(literal="".join(literal)))
    return tuple(tokens)


def _parse_domain_spec(text: str) -> tuple[_Token, ...]:
    """A domain-spec (RFC 7208 §7.1): a macro-string ending in a macro or "." toplabel ["."]."""
    if not text:
        raise _PermError("syntax-error: empty domain-spec")
    tokens = _parse_macro_string(text, letters=_DOMAIN_MACROS)
    last = tokens[-1]
    if not last.letter and _DOMAIN_END.search(last.literal) is None:
        raise _PermError(f"syntax-error: domain-spec {text!r} does not end in a top label")
    return tokens


@dataclass(frozen=True, slots=True)
class _Mechanism:
    text: str
    qualifier: SpfResultCode
    name: str
    domain: tuple[_Token, ...] | None = None
    cidr4: int = 32
    cidr6: int = 128
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None


@dataclass(frozen=True, slots=True)
class _Record:
    mechanisms: tuple[_Mechanism, ...]
    redirect: tuple[_Token, ...] | None
    exp: tuple[_Token, ...] | None


def _cidr(text: str | None, maximum: int, default: int) -> int:
    if text is None:
        return default
    if not _CIDR.fullmatch(text) or int(text) > maximum:
        raise _PermError(f"syntax-error: bad CIDR length /{text}")
    return int(text)


def _parse_mechanism(term: str) -> _Mechanism:
    qualifier: SpfResultCode = "pass"
    body = term
    if body[:1] in _QUALIFIERS:
        qualifier, body = _QUALIFIERS[body[0]], body[1:]
    name_match = re.match(r"[A-Za-z0-9]*", body)
    name = name_match.group(0).lower() if name_match else ""
    rest = body[len(name):]
    if name not in _MECHANISMS:
        raise _PermError(f"syntax-error: unknown mechanism {term!r}")
    if name == "all":
        if rest:
            raise _PermError(f"syntax-error: {term!r}")
        return _Mechanism(term, qualifier, name)
    if name in ("include", "exists"):
        if not rest.startswith(":"):
            raise _PermError(f"syntax-error: {term!r} needs a domain")
        return _Mechanism(term, qualifier, name, _parse_domain_spec(rest[1:]))
    if name == "ptr":
        if rest and not rest.startswith(":"):
            raise _PermError(f"syntax-error: {term!r}")
        return _Mechanism(term, qualifier, name, _parse_domain_spec(rest[1:]) if rest else None)
    if name in ("a", "mx"):
        m = _A_MX_ARGS.fullmatch(rest)
        if m is None:
            raise _PermError(f"syntax-error: {term!r}")
        domain = m.group("domain")
        spec = _parse_domain_spec(domain) if domain is not None else None
        return _Mechanism(term, qualifier, name, spec, _cidr(m.group("c4"), 32, 32), _cidr(m.group("c6"), 128, 128))
    # ip4 / ip6
    if not rest.startswith(":"):
        raise _PermError(f"syntax-error: {term!r} needs an address")
    address, _, length = rest[1:].partition("/")
    try:
        if name == "ip4":
            if not _IP4.fullmatch(address):
                raise ValueError(address)
            net: ipaddress.IPv4Network | ipaddress.IPv6Network = ipaddress.IPv4Network(
                f"{address}/{_cidr(length if '/' in rest else None, 32, 32)}", strict=False)
        else:
            if not re.fullmatch(r"[0-9A-Fa-f:.]+", address):
                raise ValueError(address)
            net = ipaddress.IPv6Network(f"{address}/{_cidr(length if '/' in rest else None, 128, 128)}",
                                        strict=False)
    except ValueError as exc:
        raise _PermError(f"syntax-error: bad address in {term!r}") from exc
    return _Mechanism(term, qualifier, name, network=net)


def _parse_record(text: str) -> _Record:
    """Parse a whole SPF record (RFC 7208 §4.6, §12); any error raises `_PermError`. Remembered
    per record text (a pure function of it; a record answered from the DNS cache is not parsed again)."""
    parsed = _parse_record_cached(text)
    if isinstance(parsed, str):
        raise _PermError(parsed)
    return parsed


@lru_cache(maxsize=4096)
def _parse_record_cached(text: str) -> _Record | str:
    try:
        return _parse_record_uncached(text)
    except _PermError as exc:
        return str(exc)


def _parse_record_uncached(text: str) -> _Record:
    if any(not ("\x20" <= ch <= "\x7e") for ch in text):
        raise _PermError("syntax-error: record has characters outside printable US-ASCII")
    terms = [t for t in text.split(" ") if t][1:]  # drop "v=spf1"
    mechanisms: list[_Mechanism] = []
    redirect: tuple[_Token, ...] | None = None
    exp: tuple[_Token, ...] | None = None
    seen: set[str] = set()
    for term in terms:
        name_match = _MODIFIER_NAME.match(term)
        if name_match and term[name_match.end():name_match.end() + 1] == "=":
            name, value = name_match.group(0).lower(), term[name_match.end() + 1:]
            if name in ("redirect", "exp"):
                if name in seen:
                    raise _PermError(f"syntax-error: {name}= appears twice")
                seen.add(name)
                spec = _parse_domain_spec(value)
                if name == "redirect":
                    redirect = spec
                else:
                    exp = spec
            else:
                _parse_macro_string(value, letters=_EXP_MACROS)  # unknown modifiers: syntax only (§6)
            continue
        mechanisms.append(_parse_mechanism(term))
    return _Record(tuple(mechanisms), redirect, exp)


def _is_spf_record(text: str) -> bool:
    return text[:6].lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def _valid_domain(name: str, *, multi_label: bool = True) -> bool:
    """RFC 7208 §4.3: labels of 1..63 octets, at most 253 in all, and (for identities) two labels or more."""
    name = name[:-1] if name.endswith(".") else name
    if not name or len(name) > 253 or name.startswith("["):
        return False
    labels = name.split(".")
    if multi_label and len(labels) < 2:
        return False
    return all(0 < len(label) <= 63 for label in labels)


# -- evaluation ----------------------------------------------------------------------------


@dataclass(slots=True)
class _Outcome:
    result: SpfResultCode
    mechanism: str
    exp: tuple[tuple[_Token, ...], str] | None = None  # (exp= domain-spec, domain whose record it is)


@dataclass(slots=True)
class _Evaluator:
    resolver: AsyncLookup
    budget: Budget
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    sender: str
    helo: str
    receiver: str
    lookups: list[DnsAnswer] = field(default_factory=list)
    dns_terms: int = 0
    void: int = 0
    _validated: dict[str, str] = field(default_factory=dict)
    _confirmed: list[str] | None = None  # forward-confirmed PTR names, looked up once per check

    async def query(self, name: str, rdtype: str) -> DnsAnswer:
        timeout = self.budget.query_timeout()
        if timeout is not None and timeout <= 0.0:
            raise _TempError("budget-exhausted: no time left for DNS")
        answer = await self.resolver.query(name, rdtype, timeout=timeout)
        self.lookups.append(answer)
        return answer

    def count_term(self, term: str) -> None:
        self.dns_terms += 1
        if self.dns_terms > MAX_DNS_TERMS:
            raise _PermError(f"too-many-dns-lookups: more than {MAX_DNS_TERMS} at {term!r}")

    def count_void(self, answer: DnsAnswer) -> None:
        if answer.missing:
            self.void += 1
            if self.void > MAX_VOID_LOOKUPS:
                raise _PermError(f"too-many-void-lookups: more than {MAX_VOID_LOOKUPS} at {answer.name}")

    @staticmethod
    def temporary(answer: DnsAnswer) -> None:
        if answer.temporary:
            raise _TempError(f"dns-{answer.status}: {answer.name}/{answer.rdtype} {answer.error}".rstrip())

    # macros (RFC 7208 §7)

    async def expand(self, tokens: tuple[_Token, ...], domain: str, *, explanation: bool = False) -> str:
        out: list[str] = []
        for token in tokens:
            if not token.letter:
                out.append(token.literal)
                continue
            value = await self._macro_value(token.letter.lower(), domain)
            parts = re.split("[" + re.escape(token.delimiters or ".") + "]", value)
            if token.reverse:
                parts.reverse()
            if token.digits is not None:
                parts = parts[-token.digits:]
            value = ".".join(parts)
            if token.letter.isupper():
                value = urllib.parse.quote(value, safe="")
            out.append(value)
        text = "".join(out)
        if explanation:
            return text
        text = text[:-1] if text.endswith(".") else text
        while len(text) > 253 and "." in text:  # RFC 7208 §7.3: drop labels from the left
            text = text.split(".", 1)[1]
        return text

    async def _macro_value(self, letter: str, domain: str) -> str:
        local, _, sender_domain = self.sender.rpartition("@")
        if letter == "s":
            return self.sender
        if letter == "l":
            return local
        if letter == "o":
            return sender_domain
        if letter == "d":
            return domain
        if letter == "i":
            if self.ip.version == 4:
                return str(self.ip)
            return ".".join(self.ip.exploded.replace(":", ""))
        if letter == "c":
            return str(self.ip)
        if letter == "v":
            return "in-addr" if self.ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "r":
            return self.receiver
        if letter == "t":
            return str(int(time.time()))
        return await self.validated_name(domain)  # "p"

    async def validated_name(self, domain: str) -> str:
        """RFC 7208 §7.3 `p`: a forward-confirmed PTR name, preferring <domain> and its subdomains."""
        if domain in self._validated:
            return self._validated[domain]
        names = await self.confirmed_ptr_names()
        target = domain.lower()
        chosen = next((n for n in names if n.lower() == target), None)
        chosen = chosen or next((n for n in names if n.lower().endswith("." + target)), None)
        chosen = chosen or (names[0] if names else "unknown")
        self._validated[domain] = chosen
        return chosen

    async def confirmed_ptr_names(self) -> list[str]:
        """PTR names of the client whose A/AAAA include it (at most 10 tried, errors ignored; §5.5)."""
        if self._confirmed is None:
            self._confirmed = await self._confirm_ptr_names()
        return self._confirmed

    async def _confirm_ptr_names(self) -> list[str]:
        answer = await self.query(self.ip.reverse_pointer, "PTR")
        if not answer.ok:
            return []
        names: list[str] = []
        for ptr in answer.records[:MAX_MX_OR_PTR_NAMES]:
            name = ptr.rstrip(".")
            if not _valid_domain(name, multi_label=False):
                continue
            forward = await self.query(name, "A" if self.ip.version == 4 else "AAAA")
            if forward.ok and any(_same_ip(r, self.ip) for r in forward.records):
                names.append(name)
        return names

    # check_host() (RFC 7208 §4)

    async def check_host(self, domain: str) -> _Outcome:
        if not _valid_domain(domain):
            return _Outcome("none", "")
        answer = await self.query(domain, "TXT")
        self.temporary(answer)
        records = [r for r in answer.records if _is_spf_record(r)] if answer.ok else []
        if not records:
            return _Outcome("none", "")
        if len(records) > 1:
            raise _PermError(f"multiple-records: {len(records)} SPF records at {domain}")
        record = _parse_record(records[0])
        exp = (record.exp, domain) if record.exp is not None else None
        for mechanism in record.mechanisms:
            if await self.matches(mechanism, domain):
                return _Outcome(mechanism.qualifier, mechanism.text, exp)
        if record.redirect is not None:
            self.count_term("redirect")
            target = await self.expand(record.redirect, domain)
            outcome = await self.check_host(target)
            if outcome.result == "none":
                raise _PermError(f"redirect-none: no SPF record at {target}")
            return outcome
        return _Outcome("neutral", "default", exp)

    async def matches(self, mech: _Mechanism, domain: str) -> bool:
        if mech.name == "all":
            return True
        if mech.name in ("ip4", "ip6"):
            assert mech.network is not None
            return mech.network.version == self.ip.version and self.ip in mech.network
        self.count_term(mech.text)
        target = await self.expand(mech.domain, domain) if mech.domain is not None else domain
        queryable = _valid_domain(target, multi_label=False)
        if mech.name == "include":
            if not queryable:
                raise _PermError(f"include-none: {target!r} is not a domain name")
            outcome = await self.check_host(target)
            if outcome.result in ("none", "permerror"):
                raise _PermError(f"include-none: no SPF record at {target}")
            return outcome.result == "pass"
        if not queryable:
            return False  # RFC 7208 §4.3/§4.8: a name that cannot be queried does not exist
        if mech.name == "exists":
            answer = await self.query(target, "A")
            self.temporary(answer)
            self.count_void(answer)
            return answer.ok
        if mech.name == "a":
            return await self.address_matches(target, mech, count_void=True)
        if mech.name == "mx":
            answer = await self.query(target, "MX")
            self.temporary(answer)
            self.count_void(answer)
            if not answer.ok:
                return False
            if len(answer.records) > MAX_MX_OR_PTR_NAMES:
                raise _PermError(f"too-many-mx: {len(answer.records)} MX records at {target}")
            for record in answer.records:
                exchange = record.split()[-1].rstrip(".") if record.split() else ""
                if exchange and await self.address_matches(exchange, mech, count_void=False):
                    return True
            return False
        # ptr (RFC 7208 §5.5): DNS errors make it not match
        names = await self.confirmed_ptr_names()
        wanted = target.lower().rstrip(".")
        return any(n.lower() == wanted or n.lower().endswith("." + wanted) for n in names)

    async def address_matches(self, name: str, mech: _Mechanism, *, count_void: bool) -> bool:
        answer = await self.query(name, "A" if self.ip.version == 4 else "AAAA")
        self.temporary(answer)
        if count_void:
            self.count_void(answer)
        length = mech.cidr4 if self.ip.version == 4 else mech.cidr6
        for record in answer.records if answer.ok else ():
            try:
                net = ipaddress.ip_network(f"{record}/{length}", strict=False)
            except ValueError:
                continue
            if net.version == self.ip.version and self.ip in net:
                return True
        return False

    async def explanation(self, spec: tuple[_Token, ...], domain: str) -> str:
        """RFC 7208 §6.2: the exp= text, or "" on any problem (which never changes the result)."""
        try:
            name = await self.expand(spec, domain)
            if not _valid_domain(name, multi_label=False):
                return ""
            answer = await self.query(name, "TXT")
            if not answer.ok or len(answer.records) != 1:
                return ""
            text = answer.records[0]
            if any(not ("\x20" <= ch <= "\x7e") for ch in text):
                return ""
            return await self.expand(_parse_macro_string(text, letters=_EXP_MACROS, explanation=True), domain,
                                     explanation=True)
        except (_PermError, _TempError):
            return ""


def _same_ip(text: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    try:
        return ipaddress.ip_address(text) == ip
    except ValueError:
        return False


@lru_cache(maxsize=4096)
def _client_address(client_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(client_ip.strip().strip("[]").removeprefix("IPv6:").removeprefix("ipv6:"))
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped  # RFC 7208 §5: an IPv4-mapped client is checked as IPv4
    return ip


async def check_spf(
    resolver: AsyncLookup,
    *,
    client_ip: str,
    helo: str,
    mail_from: str,
    timeout_budget: float | None = None,
    receiver: str = "unknown",
) -> SpfResult:
    """SPF for MAIL FROM (HELO for the null sender); `receiver` is the %{r} macro (our hostname)."""
    started = time.monotonic()
    mail_from = mail_from.strip().strip("<>")
    identity: SpfIdentity = "mailfrom" if mail_from else "helo"
    if mail_from:
        local, at, domain = mail_from.rpartition("@")
        if not at:
            local, domain = "", mail_from
    else:
        local, domain = "", helo
    domain = domain.rstrip(".") if domain.endswith(".") and not domain.endswith("..") else domain
    sender = f"{local or 'postmaster'}@{domain}"

    def done(result: SpfResultCode, **kwargs: str) -> SpfResult:
        return SpfResult(result, domain, identity, sender, lookups=tuple(evaluator.lookups) if evaluator else (),
                         elapsed=time.monotonic() - started, **kwargs)

    evaluator: _Evaluator | None = None
    ip = _client_address(client_ip)
    if ip is None:
        return done("permerror", reason=f"bad-client-ip: {client_ip!r}")
    if not _valid_domain(domain):
        return done("none", reason=f"no-domain: {domain!r} is not a multi-label domain name (RFC 7208 §4.3)")
    evaluator = _Evaluator(resolver, Budget(resolver, timeout_budget), ip, sender, helo, receiver)
    try:
        async with asyncio.timeout(timeout_budget):
            outcome = await evaluator.check_host(domain)
            explanation = ""
            if outcome.result == "fail" and outcome.exp is not None:
                explanation = await evaluator.explanation(*outcome.exp)
    except _PermError as exc:
        return done("permerror", reason=str(exc))
    except (_TempError, TimeoutError) as exc:
        return done("temperror", reason=str(exc) or f"budget-exhausted: {timeout_budget:g} s")
    reason = "no-record" if outcome.result == "none" else ""
    return done(outcome.result, mechanism=outcome.mechanism, explanation=explanation, reason=reason)
