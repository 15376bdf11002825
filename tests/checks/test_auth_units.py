"""Pure parts of the authentication checks: Authentication-Results building and stripping,
DMARC record parsing, sampling and organisational domains, DKIM on a large message (the
worker-thread path) and the runner's time limit, with the in-memory resolver (SPF: test_spf.py)."""

from __future__ import annotations

import asyncio

from engine.checks import dkim as dkim_check
from engine.checks.arc import ArcResult, ArcSet
from engine.checks.authres import authentication_results, authserv_id_of, strip_authentication_results
from engine.checks.dkim import DkimResult, verify_dkim
from engine.checks.dmarc import DmarcRecord, DmarcResult, organizational_domain, parse_record, sample
from engine.checks.spf import SpfResult
from tests.support.keys import auth_message, make_keys, sign
from tests.support.resolvers import FakeResolver

ID = "mxpath.liveprism.example"


def test_strip_removes_only_our_authserv_id_folded_and_commented() -> None:
    raw = (b"Received: from a by b\r\n"
           b"Authentication-Results: MXPATH.LivePrism.Example;\r\n\tspf=pass smtp.mailfrom=x@bank.example\r\n"
           b"Authentication-Results: (forged) mxpath.liveprism.example 1;\r\n dkim=pass\r\n"
           b'authentication-results :"mxpath.liveprism.example"; none\r\n'
           b"Authentication-Results: mxpath.liveprism.example.evil.example; dkim=pass\r\n"
           b"Authentication-Results: list.example; dkim=pass header.d=bank.example\r\n"
           b"Subject: hello\r\n\r\n"
           b"Authentication-Results: mxpath.liveprism.example; in the body, kept\r\n")
    cleaned = strip_authentication_results(raw, ID)
    assert cleaned == (b"Received: from a by b\r\n"
                       b"Authentication-Results: mxpath.liveprism.example.evil.example; dkim=pass\r\n"
                       b"Authentication-Results: list.example; dkim=pass header.d=bank.example\r\n"
                       b"Subject: hello\r\n\r\n"
                       b"Authentication-Results: mxpath.liveprism.example; in the body, kept\r\n")


def test_strip_handles_lf_only_and_leaves_clean_input_identical() -> None:
    raw = b"Authentication-Results: mxpath.liveprism.example;\n spf=pass\nSubject: x\n\nbody\n"
    assert strip_authentication_results(raw, ID) == b"Subject: x\n\nbody\n"
    clean = auth_message()
    assert strip_authentication_results(clean, ID) == clean
    assert authserv_id_of(b" (c (nested)) Example.COM; none") == "example.com"


def test_authentication_results_value() -> None:
    spf = SpfResult("softfail", "mta.example", "helo", "postmaster@mta.example", "~all", reason="")
    dkim = (DkimResult("a.example", "s1", "pass", algorithm="rsa-sha256"),
            DkimResult("b.example", "s2", "permerror", 'no-key: "s2._domainkey.b.example" nxdomain'))
    dmarc = DmarcResult("fail", "a.example", "quarantine", "quarantine")
    arc = ArcResult("pass", (ArcSet(1, "list.example", "arc", "none", True, "list.example", True, ""),))
    value = authentication_results(ID, spf=spf, dkim=dkim, dmarc=dmarc, arc=arc)
    assert value == (f"{ID};\r\n\tspf=softfail smtp.helo=mta.example;\r\n"
                     "\tdkim=pass header.d=a.example header.s=s1 header.a=rsa-sha256;\r\n"
                     '\tdkim=permerror reason="no-key: \\"s2._domainkey.b.example\\" nxdomain" header.d=b.example'
                     " header.s=s2;\r\n"
                     "\tdmarc=fail header.from=a.example policy.dmarc=quarantine;\r\n"
                     "\tarc=pass (sealers list.example) header.oldest-pass=0")
    assert authentication_results(ID) == f"{ID}; none"
    assert authentication_results(ID, dkim=(DkimResult("", "", "none", "no-signature"),)) == f"{ID};\r\n\tdkim=none"


def test_dmarc_record_parsing() -> None:
    assert parse_record("v=DMARC1; p=reject; sp=quarantine; adkim=s; pct=20") == DmarcRecord(
        "reject", "quarantine", "s", "r", 20, "v=DMARC1; p=reject; sp=quarantine; adkim=s; pct=20")
    assert parse_record("v=DMARC1; rua=mailto:x@y.example").p == "none"  # type: ignore[union-attr]
    assert isinstance(parse_record("v=DMARC1; p=bogus"), str)
    assert isinstance(parse_record("p=reject; v=DMARC1"), str)
    assert isinstance(parse_record("v=DMARC1; p=reject; pct=abc"), str)
    assert parse_record("v=DMARC1; p=reject; pct=250").pct == 100  # type: ignore[union-attr]


def test_dmarc_sampling_and_org_domain() -> None:
    assert not any(sample(f"<{n}@x>", 0) for n in range(50))
    assert all(sample(f"<{n}@x>", 100) for n in range(50))
    hits = sum(sample(f"<{n}@x>", 30) for n in range(1000))
    assert 200 < hits < 400
    assert sample("<a@x>", 30) == sample("<a@x>", 30)
    assert organizational_domain("a.b.example.co.uk") == "example.co.uk"
    assert organizational_domain("Mail.Acme.Test.") == "acme.test"
    assert organizational_domain("co.uk") == "co.uk"


def test_dkim_large_message_verifies_in_a_thread() -> None:
    keys = make_keys()
    resolver = FakeResolver({"rsa._domainkey.sender.test": [("TXT", "v=DKIM1; k=rsa; p=" + keys.rsa_dns)]})
    raw = sign(auth_message(body_size=dkim_check.THREAD_ABOVE + 4096), "rsa", "sender.test", keys.rsa_pem)
    assert len(raw) > dkim_check.THREAD_ABOVE
    assert [r.result for r in asyncio.run(verify_dkim(resolver, raw))] == ["pass"]


def test_dkim_body_length_limit_is_reported() -> None:
    import dkim as dkimpy

    keys = make_keys()
    resolver = FakeResolver({"rsa._domainkey.sender.test": [("TXT", "v=DKIM1; k=rsa; p=" + keys.rsa_dns)]})
    raw = auth_message()
    header = dkimpy.sign(raw, b"rsa", b"sender.test", keys.rsa_pem, include_headers=[b"from", b"subject"], length=True)
    appended = bytes(header) + raw + b"\r\nClick here: http://phish.example/\r\n"
    (result,) = asyncio.run(verify_dkim(resolver, appended))
    assert (result.result, result.reason.split(":")[0]) == ("pass", "body-length-limit")


class HangingResolver:
    """A resolver that never answers and ignores its timeout (a bug the runner's own limit bounds)."""

    timeout = 2.0

    async def query(self, name: str, rdtype: str, *, timeout: float | None = None) -> object:
        await asyncio.Event().wait()
        raise AssertionError("never answers")


def test_a_check_past_its_time_limit_is_cancelled_and_reported_as_timed_out() -> None:
    """The refusing DNSBL check is waited for at MAIL: its own limit (checks.timeout + 0.5 s), not
    the message budget (30 s here), ends the wait; the lookup says which limit it was."""
    from engine.checks.runner import CheckRun
    from engine.mime.view import parse_message
    from engine.policy.models import Checks

    settings = Checks.model_validate({"dnsbl": [{"zone": "bl.test", "action": "reject"}], "timeout": 0.2,
                                      "budget": 30.0})
    raw = auth_message()

    async def run() -> tuple[object, object]:
        checks = CheckRun(settings, HangingResolver(), hostname="mx.test")  # type: ignore[arg-type]
        checks.connect("192.0.2.1", "client.test")
        checks.mail("a@sender.test")
        early = await asyncio.wait_for(checks.early_hits(), 10)
        return early, await asyncio.wait_for(checks.data(raw, parse_message(raw)), 10)

    early, report = asyncio.run(run())
    assert early == ()
    assert report.hits == ()  # type: ignore[attr-defined]
    assert [(lookup.check, lookup.status, lookup.detail) for lookup in report.lookups] == [  # type: ignore[attr-defined]
        ("dnsbl", "timeout", "check timeout of 0.2 s")]
