"""Hostile input never raises: any SPF record text, any mangled signed/sealed message gives a
result value (the checks run on data from the network)."""

from __future__ import annotations

import asyncio
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.checks.arc import verify_arc
from engine.checks.authres import strip_authentication_results
from engine.checks.dkim import verify_dkim
from engine.checks.dmarc import author_domains
from engine.checks.spf import check_spf
from tests.checks.fake_dns import FakeResolver
from tests.checks.world import Keys, arc_seal, make_keys, message, sign

SPF_WORDS = ["v=spf1", "a", "mx", "ptr", "all", "-all", "~all", "include:", "exists:", "redirect=", "exp=", "ip4:",
             "ip6:", "/24", "//64", "%{i}", "%{l1r-}", "%{d2}", "%{p}", "%{h}", "%%", "%-", "%_", "%{", "}", ".",
             "b.example", "c.example", ":", "=", " ", "192.0.2.1", "::1", "?", "+", "\x00", "é"]


@settings(max_examples=300)
@given(st.lists(st.sampled_from(SPF_WORDS), max_size=12),
       st.sampled_from(["192.0.2.1", "2001:db8::1", "::ffff:1.2.3.4"]))
def test_any_spf_record_gives_a_result(words: list[str], ip: str) -> None:
    record = "".join(words)
    resolver = FakeResolver({
        "a.example": [("TXT", record)],
        "b.example": [("TXT", "v=spf1 " + record[6:]), ("A", "192.0.2.1"), ("MX", "10 c.example.")],
        "c.example": [("A", "192.0.2.2"), ("TIMEOUT", "")],
        "1.2.0.192.in-addr.arpa": [("PTR", "b.example.")],
    })
    result = asyncio.run(check_spf(resolver, client_ip=ip, helo="h.example", mail_from="x@a.example"))
    assert result.result in ("none", "neutral", "pass", "fail", "softfail", "temperror", "permerror")
    assert result.result not in ("temperror", "permerror") or result.reason


@cache
def _material() -> tuple[Keys, bytes, FakeResolver]:
    keys = make_keys()
    raw = sign(message(body_size=300), "rsa", "sender.test", keys.rsa_pem)
    sealed = arc_seal(raw, "dkim=pass header.d=sender.test", "arc", "list.test", keys.list_pem)
    resolver = FakeResolver({
        "rsa._domainkey.sender.test": [("TXT", "v=DKIM1; k=rsa; p=" + keys.rsa_dns)],
        "arc._domainkey.list.test": [("TXT", "v=DKIM1; k=rsa; p=" + keys.list_dns)],
    })
    return keys, sealed, resolver


@settings(max_examples=150)
@given(st.integers(min_value=0, max_value=10_000), st.integers(min_value=0, max_value=40),
       st.binary(min_size=0, max_size=8))
def test_mangled_signed_message_gives_results(position: int, cut: int, junk: bytes) -> None:
    _, sealed, resolver = _material()
    at = position % (len(sealed) + 1)
    mangled = sealed[:at] + junk + sealed[at + cut:]
    dkim_results = asyncio.run(verify_dkim(resolver, mangled))
    assert dkim_results and all(r.result in ("none", "pass", "fail", "neutral", "permerror") for r in dkim_results)
    assert asyncio.run(verify_arc(resolver, mangled)).result in ("none", "pass", "fail")
    assert isinstance(author_domains(mangled), tuple)
    assert isinstance(strip_authentication_results(mangled, "mx.example"), bytes)
