"""SPF, DKIM, DMARC and ARC against a real authoritative server (nsd on 127.0.0.1).

The zones (`auth_zones`, tests/support/keys.py) hold SPF include and redirect chains, one chain over the
10-lookup limit, void-lookup cases, DKIM keys made in this run (RSA 2048, Ed25519, a revoked
and a too-short one) and DMARC records (reject, quarantine, none, sp=, pct=, strict
alignment); messages are signed here with dkimpy, and one is ARC-sealed by a forwarder whose
changes broke the original DKIM signature. A DNS server that never answers proves that
timeouts become temperror within the budget.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.checks.arc import ArcResult, verify_arc
from engine.checks.authres import authentication_results, strip_authentication_results
from engine.checks.dkim import DkimResult, verify_dkim
from engine.checks.dmarc import DmarcResult, author_domains, check_dmarc, sample
from engine.checks.spf import SpfResult, check_spf
from engine.dns.resolver import Resolver
from engine.policy.models import DnsSettings
from tests.support.keys import Keys, arc_seal, auth_message, auth_zones, sign
from tests.support.nsd import Nsd, nsd_fixture
from tests.support.peers import SilentDns

nsd = nsd_fixture(lambda request: auth_zones(request.getfixturevalue("keys")), scope="module")


@pytest.fixture()
def resolver(nsd: Nsd) -> Resolver:
    return Resolver(DnsSettings(nameservers=["127.0.0.1"], port=nsd.port, timeout=2.0))  # type: ignore[list-item]


@pytest.fixture()
def dead_resolver() -> Iterator[tuple[Resolver, SilentDns]]:
    server = SilentDns().start()
    try:
        yield Resolver(DnsSettings(nameservers=["127.0.0.1"], port=server.port, timeout=0.5)), server  # type: ignore[list-item,unused-ignore]
    finally:
        server.stop()


def spf(resolver: Resolver, ip: str, mail_from: str, helo: str = "mta.example") -> SpfResult:
    return asyncio.run(check_spf(resolver, client_ip=ip, helo=helo, mail_from=mail_from))


# -- SPF ----------------------------------------------------------------------------------


def test_spf_include_chain_pass_and_fail(resolver: Resolver) -> None:
    ok = spf(resolver, "192.0.2.10", "alice@sender.test")
    assert (ok.result, ok.mechanism, ok.domain, ok.identity) == ("pass", "include:_spf.sender.test", "sender.test",
                                                                 "mailfrom")
    assert [(a.name, a.rdtype, a.status) for a in ok.lookups] == [
        ("sender.test", "TXT", "ok"), ("_spf.sender.test", "TXT", "ok"), ("_net.sender.test", "TXT", "ok")]
    assert all(a.elapsed > 0 for a in ok.lookups)  # real round trips to nsd, each timed
    v6 = spf(resolver, "2001:db8:1::25", "alice@sender.test")
    assert v6.result == "pass"
    bad = spf(resolver, "198.51.100.7", "alice@sender.test")
    assert (bad.result, bad.mechanism) == ("fail", "-all")


def test_spf_redirect_chain(resolver: Resolver) -> None:
    assert spf(resolver, "192.0.2.20", "x@redir.spf.test").result == "pass"
    other = spf(resolver, "192.0.2.21", "x@redir.spf.test")
    assert (other.result, other.mechanism, other.domain) == ("softfail", "~all", "redir.spf.test")
    assert [a.name for a in other.lookups][:3] == ["redir.spf.test", "_r1.spf.test", "_r2.spf.test"]


def test_spf_mx_and_exists_macro(resolver: Resolver) -> None:
    assert spf(resolver, "192.0.2.20", "x@mxtest.spf.test").result == "pass"
    assert spf(resolver, "192.0.2.40", "x@macro.spf.test").result == "pass"
    assert spf(resolver, "192.0.2.41", "x@macro.spf.test").result == "fail"


def test_spf_ten_lookup_limit(resolver: Resolver) -> None:
    over = spf(resolver, "192.0.2.99", "x@toomany.spf.test")
    assert over.result == "permerror"
    assert over.reason.startswith("too-many-dns-lookups")
    at_limit = spf(resolver, "192.0.2.99", "x@atlimit.spf.test")  # exactly 10 includes
    assert at_limit.result == "pass"


def test_spf_void_lookup_limit(resolver: Resolver) -> None:
    over = spf(resolver, "192.0.2.1", "x@void.spf.test")
    assert (over.result, over.reason.split(":")[0]) == ("permerror", "too-many-void-lookups")
    assert spf(resolver, "192.0.2.1", "x@void2.spf.test").result == "fail"  # two voids are allowed


def test_spf_null_sender_checks_helo(resolver: Resolver) -> None:
    result = spf(resolver, "192.0.2.30", "", helo="mta.spf.test")
    assert (result.result, result.identity, result.sender) == ("pass", "helo", "postmaster@mta.spf.test")


def test_spf_none_and_explanation(resolver: Resolver) -> None:
    assert spf(resolver, "192.0.2.31", "x@nospf.spf.test").result == "none"
    assert spf(resolver, "192.0.2.31", "x@nxdomain.spf.test").result == "none"
    failed = spf(resolver, "192.0.2.50", "x@expl.spf.test")
    assert (failed.result, failed.explanation) == ("fail", "192.0.2.50 is not a mail server of expl.spf.test")


# -- DKIM ---------------------------------------------------------------------------------


def test_dkim_rsa_and_ed25519_pass(resolver: Resolver, keys: Keys) -> None:
    raw = sign(sign(auth_message(), "rsa", "sender.test", keys.rsa_pem), "ed", "sender.test", keys.ed_seed,
               b"ed25519-sha256")
    results = asyncio.run(verify_dkim(resolver, raw))
    assert [(r.domain, r.selector, r.result, r.algorithm) for r in results] == [
        ("sender.test", "ed", "pass", "ed25519-sha256"), ("sender.test", "rsa", "pass", "rsa-sha256")]
    assert all(r.lookup is not None and r.lookup.ok for r in results)


def test_dkim_modified_body_fails(resolver: Resolver, keys: Keys) -> None:
    raw = sign(sign(auth_message(), "rsa", "sender.test", keys.rsa_pem), "ed", "sender.test", keys.ed_seed,
               b"ed25519-sha256")
    results = asyncio.run(verify_dkim(resolver, raw + b"-- \r\nappended footer\r\n"))
    assert [r.result for r in results] == ["fail", "fail"]
    assert all(r.reason.startswith("body-hash-mismatch") for r in results)
    forged_subject = raw.replace(b"Subject: Quarterly figures", b"Subject: Pay this invoice")
    assert [r.result for r in asyncio.run(verify_dkim(resolver, forged_subject))] == ["fail", "fail"]


def test_dkim_key_problems_and_unsigned(resolver: Resolver, keys: Keys) -> None:
    no_key = asyncio.run(verify_dkim(resolver, sign(auth_message(), "nosuch", "sender.test", keys.rsa_pem)))
    assert (no_key[0].result, no_key[0].reason.split(":")[0]) == ("permerror", "no-key")
    revoked = asyncio.run(verify_dkim(resolver, sign(auth_message(), "revoked", "sender.test", keys.rsa_pem)))
    assert (revoked[0].result, revoked[0].reason.split(":")[0]) == ("permerror", "key-revoked")
    short = asyncio.run(verify_dkim(resolver, sign(auth_message(), "short", "sender.test", keys.short_pem)))
    assert (short[0].result, short[0].reason.split(":")[0]) == ("permerror", "key-too-short")
    unsigned = asyncio.run(verify_dkim(resolver, auth_message()))
    assert [(r.result, r.reason) for r in unsigned] == [("none", "no-signature")]
    broken = b"DKIM-Signature: v=1; a=rsa-sha256; d=sender.test\r\n" + auth_message()
    assert asyncio.run(verify_dkim(resolver, broken))[0].result == "neutral"
    # a signature that does not cover From could be replayed under any From (dkimpy refuses to make one)
    signed = sign(auth_message(), "rsa", "sender.test", keys.rsa_pem)
    no_from = re.sub(rb"h=[^;]*;", b"h=to : subject : date;", signed, count=1)
    unsigned_from = asyncio.run(verify_dkim(resolver, no_from))
    assert (unsigned_from[0].result, unsigned_from[0].reason.split(":")[0]) == ("permerror", "from-not-signed")


# -- DMARC --------------------------------------------------------------------------------


def dmarc_for(resolver: Resolver, raw: bytes, ip: str, mail_from: str, seed: str = "<m1@sender.test>") -> DmarcResult:
    async def run() -> DmarcResult:
        spf_result, dkim_results = await asyncio.gather(
            check_spf(resolver, client_ip=ip, helo="mta.example", mail_from=mail_from), verify_dkim(resolver, raw))
        return await check_dmarc(resolver, header_from_domain=author_domains(raw), spf=spf_result,
                                 dkim=dkim_results, seed=seed)
    return asyncio.run(run())


def test_dmarc_reject_policy(resolver: Resolver, keys: Keys) -> None:
    signed = sign(auth_message(), "rsa", "sender.test", keys.rsa_pem)
    ok = dmarc_for(resolver, signed, "198.51.100.7", "bounce@elsewhere.example")  # DKIM aligned, SPF not
    assert (ok.result, ok.dkim_aligned, ok.spf_aligned, ok.disposition) == ("pass", "sender.test", False, "none")
    via_spf = dmarc_for(resolver, auth_message(), "192.0.2.10", "bounce@sender.test")  # SPF aligned only
    assert (via_spf.result, via_spf.spf_aligned) == ("pass", True)
    forged = dmarc_for(resolver, auth_message(), "198.51.100.7", "x@elsewhere.example")
    assert (forged.result, forged.policy, forged.disposition, forged.policy_domain) == (
        "fail", "reject", "reject", "sender.test")


@pytest.mark.parametrize(("author", "policy_domain", "disposition"), [
    ("quar.test", "quar.test", "quarantine"),
    ("pnone.test", "pnone.test", "none"),
    ("news.shop.test", "shop.test", "reject"),  # no record at the author: sp= of the organisational domain
    ("shop.test", "shop.test", "none"),  # the organisational domain itself: p=
])
def test_dmarc_policies(resolver: Resolver, author: str, policy_domain: str, disposition: str) -> None:
    result = dmarc_for(resolver, auth_message(f"x@{author}"), "198.51.100.7", f"x@{author}")
    assert (result.result, result.policy_domain, result.disposition) == ("fail", policy_domain, disposition)
    assert result.lookups[0].name == f"_dmarc.{author}"


def test_dmarc_several_records_end_discovery(resolver: Resolver) -> None:
    result = dmarc_for(resolver, auth_message("x@dup.test"), "198.51.100.7", "x@dup.test")
    assert (result.result, result.disposition, result.reason.split(":")[0]) == ("none", "none", "multiple-records")
    assert [a.name for a in result.lookups] == ["_dmarc.dup.test"]  # RFC 7489 §6.6.3: no fallback


def test_dmarc_pct_sampling_is_deterministic(resolver: Resolver) -> None:
    seen = {}
    for n in range(12):
        seed = f"<{n}@pct.test>"
        result = dmarc_for(resolver, auth_message("x@pct.test"), "198.51.100.7", "x@pct.test", seed=seed)
        again = dmarc_for(resolver, auth_message("x@pct.test"), "198.51.100.7", "x@pct.test", seed=seed)
        assert (result.disposition, result.sampled) == (again.disposition, again.sampled)
        assert result.disposition == ("reject" if sample(seed, 50) else "quarantine")  # §6.6.4: one step less
        seen[result.disposition] = seed
    assert set(seen) == {"reject", "quarantine"}


def test_dmarc_strict_and_relaxed_alignment(resolver: Resolver, keys: Keys) -> None:
    strict = dmarc_for(resolver, sign(auth_message("x@news.strict.test"), "rsa", "strict.test", keys.rsa_pem),
                       "198.51.100.7", "x@elsewhere.example")
    assert (strict.result, strict.disposition) == ("fail", "reject")  # adkim=s: d=strict.test != news.strict.test
    relaxed = dmarc_for(resolver, sign(auth_message("x@news.sender.test"), "rsa", "sender.test", keys.rsa_pem),
                        "198.51.100.7", "x@elsewhere.example")
    assert (relaxed.result, relaxed.dkim_aligned, relaxed.policy_domain) == ("pass", "sender.test", "sender.test")


def test_dmarc_several_and_no_authors(resolver: Resolver) -> None:
    raw = auth_message("a@pnone.test, b@quar.test")
    several = dmarc_for(resolver, raw, "198.51.100.7", "x@elsewhere.example")
    assert (several.result, several.disposition, several.domain) == ("fail", "quarantine", "quar.test")
    assert several.authors == ("pnone.test", "quar.test") and len(several.per_author) == 2
    nobody = asyncio.run(check_dmarc(resolver, header_from_domain=(), spf=spf(resolver, "192.0.2.1", ""),
                                     dkim=(DkimResult("", "", "none"),)))
    assert (nobody.result, nobody.reason.split(":")[0]) == ("permerror", "no-author-domain")


# -- ARC ----------------------------------------------------------------------------------


def forwarded(keys: Keys) -> bytes:
    """sender.test signs; the list.test forwarder tags the subject and adds a footer, then seals."""
    original = sign(auth_message(), "rsa", "sender.test", keys.rsa_pem)
    changed = original.replace(b"Subject: Quarterly figures", b"Subject: [team] Quarterly figures")
    changed += b"--\r\nteam mailing list\r\n"
    seen = "dkim=pass header.d=sender.test; spf=pass smtp.mailfrom=sender.test; dmarc=pass header.from=sender.test"
    return arc_seal(changed, seen, "arc", "list.test", keys.list_pem)


def test_arc_trusted_forwarder_vouches_for_broken_dkim(resolver: Resolver, keys: Keys) -> None:
    raw = forwarded(keys)
    dkim_results = asyncio.run(verify_dkim(resolver, raw))
    assert [r.result for r in dkim_results] == ["fail"]  # the list broke the author's signature
    arc = asyncio.run(verify_arc(resolver, raw))
    assert (arc.result, arc.sealers, arc.oldest_pass) == ("pass", ("list.test",), 0)
    assert arc.sets[0].seal_valid and arc.sets[0].ams_valid and arc.sets[0].cv == "none"
    assert "dkim=pass header.d=sender.test" in arc.sets[0].authentication_results
    assert arc.trusted_sealer({"List.Test"}) == "list.test"
    assert arc.trusted_sealer({"other.example"}) is None
    dmarc = dmarc_for(resolver, raw, "203.0.113.5", "owner-team@list.test")
    assert (dmarc.result, dmarc.disposition) == ("fail", "reject")  # what policy overrides for a trusted sealer


def test_arc_modified_after_sealing_fails_and_unsealed_is_none(resolver: Resolver, keys: Keys) -> None:
    raw = forwarded(keys).replace(b"Subject: [team] Quarterly figures", b"Subject: [team] Pay now")
    arc = asyncio.run(verify_arc(resolver, raw))
    assert arc.result == "fail" and arc.reason
    assert arc.trusted_sealer({"list.test"}) is None
    assert asyncio.run(verify_arc(resolver, auth_message())).result == "none"


# -- Authentication-Results over real results --------------------------------------------


def test_authentication_results_header(resolver: Resolver, keys: Keys) -> None:
    raw = forwarded(keys)
    spf_result = spf(resolver, "203.0.113.5", "owner-team@list.test")
    dkim_results = asyncio.run(verify_dkim(resolver, raw))
    arc = asyncio.run(verify_arc(resolver, raw))
    dmarc = dmarc_for(resolver, raw, "203.0.113.5", "owner-team@list.test")
    value = authentication_results("mxpath.liveprism.example", spf=spf_result, dkim=dkim_results, dmarc=dmarc,
                                   arc=arc)
    lines = [part.strip() for part in value.split(";")]
    assert lines[0] == "mxpath.liveprism.example"
    assert lines[1] == "spf=pass smtp.mailfrom=owner-team@list.test"
    assert lines[2].startswith('dkim=fail reason="body-hash-mismatch')
    assert "header.d=sender.test header.s=rsa" in lines[2]
    assert lines[3].startswith("dmarc=fail") and lines[3].endswith("header.from=sender.test policy.dmarc=reject")
    assert lines[4] == "arc=pass (sealers list.test) header.oldest-pass=0"
    # a forged A-R claiming our id is removed, the forwarder's own is kept
    forged = b"Authentication-Results: MXPATH.liveprism.example;\r\n\tdkim=pass header.d=bank.example\r\n" + raw
    cleaned = strip_authentication_results(forged, "mxpath.liveprism.example")
    assert cleaned == raw and b"Authentication-Results: list.test;" in cleaned


# -- DNS that never answers ---------------------------------------------------------------


def test_timeouts_become_temperror_within_budget(dead_resolver: tuple[Resolver, SilentDns], keys: Keys) -> None:
    resolver, server = dead_resolver
    raw = forwarded(keys)

    async def everything() -> tuple[SpfResult, tuple[DkimResult, ...], ArcResult, DmarcResult]:
        spf_task = check_spf(resolver, client_ip="192.0.2.10", helo="mta.example", mail_from="a@sender.test",
                             timeout_budget=1.0)
        spf_result, dkim_results, arc = await asyncio.gather(
            spf_task, verify_dkim(resolver, raw, timeout_budget=1.0), verify_arc(resolver, raw, timeout_budget=1.0))
        dmarc = await check_dmarc(resolver, header_from_domain="sender.test", spf=spf_result, dkim=dkim_results,
                                  timeout_budget=1.0)
        return spf_result, dkim_results, arc, dmarc

    started = time.monotonic()
    spf_result, dkim_results, arc, dmarc = asyncio.run(everything())
    elapsed = time.monotonic() - started
    assert spf_result.result == "temperror" and spf_result.lookups[0].status == "timeout"
    assert [r.result for r in dkim_results] == ["temperror"]
    assert arc.result == "temperror"
    assert dmarc.result == "temperror"
    assert elapsed < 4.0, elapsed  # two budgets of 1 s in sequence, never the resolver's retries
    assert server.received >= 4


def test_spf_budget_bounds_a_long_chain(dead_resolver: tuple[Resolver, SilentDns]) -> None:
    resolver, _ = dead_resolver
    started = time.monotonic()
    result = asyncio.run(check_spf(resolver, client_ip="192.0.2.1", helo="h.example", mail_from="a@b.example",
                                   timeout_budget=0.2))
    assert result.result == "temperror"
    assert time.monotonic() - started < 2.0


def test_fixtures_are_real(nsd: Nsd, tmp_path: Path) -> None:
    """The zones really come from nsd (not a fake): a query over UDP to its port is answered."""
    import dns.message
    import dns.query
    reply = dns.query.udp(dns.message.make_query("_dmarc.quar.test", "TXT"), "127.0.0.1", port=nsd.port, timeout=2)
    assert "p=quarantine" in reply.answer[0].to_text()
