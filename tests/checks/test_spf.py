"""`check_spf` (engine/checks/spf.py) with the in-memory resolver: a temporary failure inside an
include stays temperror, and any record text, however hostile, gives a result value.

SPF is also tested against the openspf RFC 7208 suite (test_spf_rfc7208_suite.py), against a
real nsd (tests/e2e/test_auth_checks_nsd.py, tests/e2e/test_checks_auth.py) and through a
running gateway (tests/e2e/test_checks_serve.py).
"""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.checks.spf import check_spf
from tests.support.resolvers import FakeResolver


def test_spf_temperror_in_an_include_is_never_fail() -> None:
    resolver = FakeResolver({
        "a.example": [("TXT", "v=spf1 include:slow.example -all")],
        "slow.example": [("TIMEOUT", "")],
    })
    result = asyncio.run(check_spf(resolver, client_ip="192.0.2.1", helo="h.example", mail_from="x@a.example"))
    assert (result.result, result.reason.split(":")[0]) == ("temperror", "dns-timeout")
    assert [(a.name, a.status) for a in result.lookups] == [("a.example", "ok"), ("slow.example", "timeout")]


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
