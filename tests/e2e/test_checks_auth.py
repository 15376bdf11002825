"""SPF, DKIM, DMARC and ARC through the check runner against real nsd: what each result becomes as a
hit (score, action) under the policy, the ARC override by a trusted sealer, Authentication-Results."""

from __future__ import annotations

import asyncio

import dkim

from engine.checks.runner import CheckReport, CheckRun
from engine.mime.view import parse_message
from engine.policy.models import Action, Checks
from tests.support.keys import make_key, sign
from tests.support.messages import message
from tests.support.nsd import Nsd, nsd_fixture, resolver_for, zone_files

SENDER_KEY = make_key()
LIST_KEY = make_key()


nsd = nsd_fixture(zone_files({
    "reject.test": f'@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n'
                   f"lp1._domainkey IN TXT {SENDER_KEY.record}\n",
    "quar.test": '@ IN TXT "v=spf1 ip4:192.0.2.1 ~all"\n_dmarc IN TXT "v=DMARC1; p=quarantine"\n',
    "lists.test": f'@ IN TXT "v=spf1 ip4:127.0.0.1 -all"\narc._domainkey IN TXT {LIST_KEY.record}\n',
}), scope="module")


def unsigned(author: str, body: str = "Hello Bob.\r\n") -> bytes:
    """A plain message from Alice at `author`, no MIME fields."""
    return message(body, raw=True, sender=f"Alice <{author}>", subject="lunch", date="Tue, 01 Dec 2026 10:00:00 +0000",
                   message_id=f"<1@{author.split('@')[1]}>", content_type=None)


def signed(author: str) -> bytes:
    return sign(unsigned(author), "lp1", author.split("@")[1], SENDER_KEY.pem)


def run_checks(nsd: Nsd, raw: bytes, sender: str, client_ip: str = "127.0.0.1", **settings: object) -> CheckReport:
    checks = Checks.model_validate({"spf": {"enabled": True}, "dkim": {"enabled": True},
                                    "dmarc": {"enabled": True}, **settings})

    async def run() -> CheckReport:
        resolver = resolver_for(nsd.port)
        checks_run = CheckRun(checks, resolver, hostname="mx.test.example")
        checks_run.connect(client_ip, "client.test.example")
        checks_run.mail(sender)
        return await checks_run.data(raw, parse_message(raw))

    return asyncio.run(run())


def outcome(report: CheckReport) -> list[tuple[str, float, Action | None]]:
    return [(hit.id, hit.score, hit.action) for hit in report.hits]


def test_spf_fail_and_dmarc_reject_honoured(nsd: Nsd) -> None:
    report = run_checks(nsd, unsigned("alice@reject.test"), "alice@reject.test")
    assert outcome(report) == [
        ("spf:fail", 3.0, None), ("dkim:none", 0.0, None), ("dmarc:reject", 6.0, Action.reject),
    ]
    header = report.authentication_results("mx.test.example")
    assert header is not None and header.startswith("mx.test.example;")
    assert "spf=fail" in header and "dmarc=fail" in header
    assert {lookup.name for lookup in report.lookups} >= {"reject.test", "_dmarc.reject.test"}


def test_dmarc_scored_only_when_policy_not_honoured(nsd: Nsd) -> None:
    report = run_checks(nsd, unsigned("alice@reject.test"), "alice@reject.test",
                        dmarc={"enabled": True, "honour_policy": False, "scores": {"reject": 2.5}})
    assert ("dmarc:reject", 2.5, None) in outcome(report)


def test_dkim_pass_aligns_dmarc_despite_spf_fail(nsd: Nsd) -> None:
    report = run_checks(nsd, signed("alice@reject.test"), "alice@reject.test")
    assert outcome(report) == [("spf:fail", 3.0, None), ("dkim:pass", 0.0, None), ("dmarc:pass", 0.0, None)]


def test_dmarc_quarantine_and_softfail(nsd: Nsd) -> None:
    report = run_checks(nsd, unsigned("carol@quar.test"), "carol@quar.test", spf={"enabled": True,
                        "actions": {"softfail": "tag"}})
    assert outcome(report) == [
        ("spf:softfail", 1.0, Action.tag), ("dkim:none", 0.0, None), ("dmarc:quarantine", 4.0, Action.quarantine),
    ]


def test_trusted_arc_sealer_forgives_dmarc_failure(nsd: Nsd) -> None:
    # the list received a signed message, checked it, changed the body (DKIM breaks) and sealed it
    original = signed("alice@reject.test")
    received = b"Authentication-Results: lists.test; dkim=pass header.d=reject.test\r\n" + original
    modified = received.replace(b"Hello Bob.", b"[list footer] Hello Bob.")
    seal = dkim.arc_sign(modified, b"arc", b"lists.test", LIST_KEY.pem, b"lists.test")
    forwarded = b"".join(seal) + modified
    settings = {"arc": {"enabled": True, "trusted_sealers": ["lists.test"]}}
    report = run_checks(nsd, forwarded, "list-bounces@lists.test", **settings)
    ids = [hit.id for hit in report.hits]
    assert "dkim:fail" in ids and "arc:pass" in ids
    assert "dmarc:pass" in ids and "dmarc:reject" not in ids
    dmarc_hit = next(hit for hit in report.hits if hit.id == "dmarc:pass")
    assert dmarc_hit.message is not None and "trusted lists.test" in dmarc_hit.message
    untrusted = run_checks(nsd, forwarded, "list-bounces@lists.test",
                           arc={"enabled": True, "trusted_sealers": ["other.test"]})
    assert "dmarc:reject" in [hit.id for hit in untrusted.hits]
