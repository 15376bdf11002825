"""Hostile input never raises: any mangled signed/sealed message gives a result value (the checks
run on data from the network; any SPF record text: test_spf.py)."""

from __future__ import annotations

import asyncio
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.checks.arc import verify_arc
from engine.checks.authres import strip_authentication_results
from engine.checks.dkim import verify_dkim
from engine.checks.dmarc import author_domains
from tests.support.keys import Keys, arc_seal, auth_message, make_keys, sign
from tests.support.resolvers import FakeResolver


@cache
def _material() -> tuple[Keys, bytes, FakeResolver]:
    keys = make_keys()
    raw = sign(auth_message(body_size=300), "rsa", "sender.test", keys.rsa_pem)
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
