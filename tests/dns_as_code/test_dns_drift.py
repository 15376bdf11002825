"""The drift verdicts of `liveprism dns --check`, one planned RRset against canned DNS answers
(the real-DNS path is tests/e2e/test_dns_check.py, against nsd)."""

from __future__ import annotations

import asyncio

import pytest

from engine.dns.resolver import DnsStatus
from engine.dns_as_code.drift import DriftReport, check_drift, drift_metric_values
from engine.dns_as_code.records import DnsPlan, Record, RecordKind, Skipped, Zone
from tests.support.resolvers import FakeResolver

DOMAIN = "acme.example"


def judge(kind: RecordKind, name: str, rtype: str, planned: tuple[str, ...], status: DnsStatus,
          found: tuple[str, ...]) -> DriftReport:
    record = Record(DOMAIN, name, rtype, kind, DOMAIN, planned)  # type: ignore[arg-type]
    plan = DnsPlan(3600, (Zone(DOMAIN, "acme", (record,)),), ("mx1.gw.example", "mx2.gw.example"))
    resolver = FakeResolver.answering({(name, rtype): (status, found)})
    return asyncio.run(check_drift(plan, resolver))  # type: ignore[arg-type]


MX = ("10 mx1.gw.example.", "10 mx2.gw.example.")


@pytest.mark.parametrize(("found", "status"), [
    (("10 MX1.gw.example.", "10 mx2.gw.example."), "ok"),
    (("10 mx1.gw.example.",), "different"),
    (("20 mx1.gw.example.", "10 mx2.gw.example."), "different"),
    (("10 mx1.gw.example.", "10 mx2.gw.example.", "30 mx1.gw.example."), "extra"),
    (("10 mx1.gw.example.", "10 mx2.gw.example.", "20 backup.acme.example."), "bypass"),
    (("10 mail.acme.example.",), "bypass"),
    (("0 .",), "different"),  # a null MX refuses mail (RFC 7505): wrong, but no bypass
])
def test_mx_verdicts(found: tuple[str, ...], status: str) -> None:
    (item,) = judge("mx", DOMAIN, "MX", MX, "ok", found).items
    assert item.status == status and item.found == found and item.expected == MX


def test_bypass_names_the_host() -> None:
    report = judge("mx", DOMAIN, "MX", MX, "ok", (*MX, "20 backup.acme.example."))
    assert [i.detail for i in report.bypasses] == [
        "MX to backup.acme.example: mail can reach the tenant around the gateway"
    ]


@pytest.mark.parametrize(("kind", "planned", "found", "status"), [
    ("spf", "v=spf1 ip4:192.0.2.1 -all", ("V=SPF1  ip4:192.0.2.1 -all", "google-site-verification=x"), "ok"),
    ("spf", "v=spf1 ip4:192.0.2.1 -all", ("v=spf1 ip4:192.0.2.1 ~all",), "different"),
    ("spf", "v=spf1 ip4:192.0.2.1 -all", ("v=spf1 ip4:192.0.2.1 -all", "v=spf1 a -all"), "extra"),
    ("spf", "v=spf1 ip4:192.0.2.1 -all", ("google-site-verification=x", "v=spf10"), "missing"),
    ("dmarc", "v=DMARC1; p=reject; rua=mailto:d@acme.example", ("v=DMARC1;rua=mailto:d@acme.example;p=reject",),
     "ok"),
    ("dmarc", "v=DMARC1; p=reject", ("v=DMARC1; p=reject; pct=50",), "different"),
    ("dkim", "v=DKIM1; k=rsa; p=QUJD", ("v=DKIM1; h=sha256; p=QU JD",), "ok"),
    ("dkim", "v=DKIM1; k=rsa; p=QUJD", ("v=DKIM1; k=ed25519; p=QUJD",), "different"),
    ("mta-sts", "v=STSv1; id=abc", ("v=STSv1; id=abd",), "different"),
    ("tls-rpt", "v=TLSRPTv1; rua=mailto:t@acme.example", ("v=TLSRPTv1;rua=mailto:t@acme.example",), "ok"),
])
def test_txt_verdicts(kind: RecordKind, planned: str, found: tuple[str, ...], status: str) -> None:
    (item,) = judge(kind, DOMAIN, "TXT", (planned,), "ok", found).items
    assert item.status == status, item


@pytest.mark.parametrize(("status", "verdict", "drifted"), [
    ("nxdomain", "missing", True), ("nodata", "missing", True), ("timeout", "error", True),
    ("servfail", "error", True),
])
def test_negative_and_failed_lookups(status: DnsStatus, verdict: str, drifted: bool) -> None:
    report = judge("a", "mx1.gw.example", "A", ("192.0.2.1",), status, ())
    (item,) = report.items
    assert item.status == verdict and item.drifted is drifted and report.ok is not drifted


def test_addresses_compare_as_addresses() -> None:
    (item,) = judge("aaaa", "mx1.gw.example", "AAAA", ("2001:db8::10",), "ok", ("2001:0db8:0:0::10",)).items
    assert item.status == "ok"


def test_skipped_records_are_reported_but_not_drift_nor_metrics() -> None:
    skipped = Skipped(DOMAIN, "dkim", f"lp1._domainkey.{DOMAIN}", "key file missing")
    record = Record(DOMAIN, DOMAIN, "MX", "mx", DOMAIN, MX)
    plan = DnsPlan(3600, (Zone(DOMAIN, "acme", (record,), skipped=(skipped,)),), ("mx1.gw.example", "mx2.gw.example"))
    resolver = FakeResolver.answering({(DOMAIN, "MX"): ("ok", (*MX, "20 backup.acme.example."))})
    report = asyncio.run(check_drift(plan, resolver))  # type: ignore[arg-type]
    assert [(i.kind, i.status) for i in report.items] == [("mx", "bypass"), ("dkim", "skipped")]
    assert drift_metric_values(report) == {(DOMAIN, "mx"): 1.0}


def test_spf_lookups_follow_nested_includes_and_warn_past_ten() -> None:
    answers: dict[tuple[str, str], tuple[DnsStatus, tuple[str, ...]]] = {
        ("big.example", "TXT"): ("ok", ("v=spf1 " + " ".join(f"include:n{i}.example" for i in range(4)) + " -all",)),
        **{(f"n{i}.example", "TXT"): ("ok", ("v=spf1 a mx ip4:192.0.2.9 ~all", "other=x")) for i in range(4)},
        ("empty.example", "TXT"): ("ok", ("not spf",)),
        ("loop.example", "TXT"): ("ok", ("v=spf1 include:loop.example -all",)),
        ("down.example", "TXT"): ("timeout", ()),
    }
    resolver = FakeResolver.answering(answers)
    spf = "v=spf1 ip4:192.0.2.1 include:big.example -all"
    record = Record(DOMAIN, DOMAIN, "TXT", "spf", DOMAIN, (spf,))
    plan = DnsPlan(3600, (Zone(DOMAIN, "acme", (record,)),), ())
    report = asyncio.run(check_drift(plan, resolver))  # type: ignore[arg-type]
    # 1 (big) + 4 includes + 4 x (a + mx) = 13
    assert report.warnings == (
        f"{DOMAIN}: SPF takes 13 DNS lookups with its includes; RFC 7208 §4.6.4 allows 10 (receivers return"
        " permerror)",
    )
    from engine.dns_as_code.drift import spf_lookups

    count, problems = asyncio.run(spf_lookups(  # type: ignore[arg-type]
        "v=spf1 include:empty.example ?include:loop.example include:down.example redirect=n0.example", resolver))
    assert count == 1 + 2 + 1 + 1 + 2
    assert problems == [
        "include:empty.example: empty.example publishes no SPF records (receivers: permerror)",
        "include:loop.example: include loop",
        "include:down.example: lookup failed (timeout)",
    ]
