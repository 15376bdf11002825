"""The DNSBL/URIBL lookups, the clamd client and the check runner against real peers: nsd serving
block list zones, clamd with an EICAR signature, and a DNS server that never answers."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.checks import clamd, dnsbl
from engine.checks.runner import CheckRun
from engine.graph.verdict import KIND_ANTIVIRUS
from engine.mime.view import parse_message
from engine.policy.models import Action, Checks
from tests.support.messages import EICAR, eicar_zip, message
from tests.support.nsd import Nsd, nsd_fixture, resolver_for, zone_files
from tests.support.peers import Clamd, SilentDns

BL_ZONE = """
2.0.0.127 IN A 127.0.0.2
3.0.0.127 IN A 127.0.0.3
254.0.0.127 IN A 127.255.255.254
2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2 IN A 127.0.0.2
"""
URIBL_ZONE = """
bad-links.example IN A 127.0.0.2
spammer.example IN A 127.0.0.2
"""


nsd = nsd_fixture(zone_files({"bl.test": BL_ZONE, "uribl.test": URIBL_ZONE}), scope="module")


@pytest.fixture(scope="module")
def clamd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clamd]:
    server = Clamd(tmp_path_factory.mktemp("clamd"))
    try:
        yield server.start()
    finally:
        server.stop()


def checks(**values: object) -> Checks:
    return Checks.model_validate(values)


def scanned(body: str = "hello", html: str | None = None, attachment: tuple[bytes, str] | None = None) -> bytes:
    """A message for the checks: text, an HTML alternative (base64), an attachment (data, filename)."""
    return message(body, sender="alice@sender.example", subject="test", date=None, message_id=None, html=html,
                   html_cte="base64", attachments=((attachment[1], "application/octet-stream", attachment[0]),)
                   if attachment is not None else ())


# ---------------------------------------------------------------- DNSBL / URIBL


def test_dnsbl_listed_clean_refused_ipv6_and_returns(nsd: Nsd) -> None:
    zones = checks(dnsbl=[{"zone": "bl.test"}]).dnsbl
    strict = checks(dnsbl=[{"zone": "bl.test", "returns": ["127.0.0.2"]}]).dnsbl

    async def run() -> list[dnsbl.ListResult]:
        dns = resolver_for(nsd.port)
        found = []
        for ip in ("127.0.0.2", "127.0.0.1", "127.0.0.254", "2001:db8::2", "::ffff:127.0.0.2"):
            found.extend(await dnsbl.check_ip(dns, ip, zones))
        found.extend(await dnsbl.check_ip(dns, "127.0.0.3", strict))
        found.extend(await dnsbl.check_ip(dns, "127.0.0.2", strict))
        return found

    listed, clean, refused, ipv6, mapped, filtered, kept = asyncio.run(run())
    assert (listed.status, listed.answers, listed.query) == ("listed", ("127.0.0.2",), "2.0.0.127.bl.test")
    assert clean.status == "clean"
    assert refused.status == "error" and "refused" in refused.reason  # 127.255.255.254 is no listing
    assert ipv6.status == "listed" and ipv6.query == "2." + "0." * 23 + "8.b.d.0.1.0.0.2.bl.test"
    assert mapped.status == "listed"
    assert filtered.status == "clean"  # 127.0.0.3 is not in returns
    assert kept.status == "listed"


def test_uribl_sender_and_link_domains(nsd: Nsd) -> None:
    html = '<p>Pay <a href="https://www.Bad-Links.example/pay?x=1">here</a> or http://ok.example/</p>'
    raw = scanned(body="see www.fine.example", html=html)
    domains = dnsbl.link_domains(raw, 20)
    assert domains == ("fine.example", "bad-links.example", "ok.example")
    assert dnsbl.link_domains(raw, 1) == ("fine.example",)  # bounded per message
    zones = checks(uribl=[{"zone": "uribl.test", "score": 4}]).uribl
    results = asyncio.run(dnsbl.check_domains(resolver_for(nsd.port), ["spammer.example", *domains], zones))
    assert [r.subject for r in results if r.listed] == ["spammer.example", "bad-links.example"]


def test_runner_turns_listings_into_hits_and_refuses_early(nsd: Nsd) -> None:
    settings = checks(
        dnsbl=[{"zone": "bl.test", "score": 5.5, "action": "reject"}],
        uribl=[{"zone": "uribl.test", "score": 4}],
    )
    html = '<a href="http://bad-links.example/">x</a> <a href="http://sub.bad-links.example/">y</a>'
    raw = scanned(html=html)

    async def run() -> tuple[object, object]:
        run = CheckRun(settings, resolver_for(nsd.port))
        run.connect("127.0.0.2", "client.example")
        run.mail("someone@spammer.example")
        early = await run.early_hits()
        report = await run.data(raw, parse_message(raw))
        return early, report

    early, report = asyncio.run(run())
    # the refusing DNSBL was waited for; the sender RHSBL may or may not have answered by then
    assert ("dnsbl:bl.test", 5.5, Action.reject) in [(h.id, h.score, h.action) for h in early]  # type: ignore[attr-defined]
    ids = [h.id for h in report.hits]  # type: ignore[attr-defined]
    assert sorted(ids) == ["dnsbl:bl.test", "uribl:uribl.test"]  # uribl counted once per zone
    assert {*early, *report.new_hits} == set(report.hits)  # type: ignore[attr-defined]
    names = {lookup.name for lookup in report.lookups}  # type: ignore[attr-defined]
    assert {"2.0.0.127.bl.test", "spammer.example.uribl.test", "bad-links.example.uribl.test"} <= names


def test_dns_that_never_answers_gives_a_verdict_in_bounded_time() -> None:
    silent = SilentDns().start()
    try:
        settings = checks(dnsbl=[{"zone": "bl.test"}], uribl=[{"zone": "uribl.test"}], timeout=1.0, budget=1.5)
        raw = scanned(html='<a href="http://bad-links.example/">x</a>')

        async def run() -> object:
            run = CheckRun(settings, resolver_for(silent.port, timeout=5.0))
            run.connect("127.0.0.2")
            run.mail("a@spammer.example")
            return await run.data(raw, parse_message(raw))

        started = time.monotonic()
        report = asyncio.run(run())
        assert time.monotonic() - started < 4.0
        assert report.hits == ()  # type: ignore[attr-defined]  # nothing answered: no listing, no failure
        assert {lookup.status for lookup in report.lookups} == {"timeout"}  # type: ignore[attr-defined]
    finally:
        silent.stop()


# ---------------------------------------------------------------- clamd


def test_clamd_finds_eicar_in_base64_attachment_and_in_zip(clamd_server: Clamd) -> None:
    plain = scanned(attachment=(EICAR, "invoice.com"))
    assert base64.b64encode(EICAR)[:20] in plain  # really a base64 MIME part
    zipped = scanned(attachment=(eicar_zip(), "invoice.zip"))

    async def run() -> list[clamd.ScanResult]:
        return [await clamd.scan(clamd_server.address, raw, timeout=20, chunk_size=4096)
                for raw in (plain, zipped, scanned("a clean message"))]

    infected, in_zip, clean = asyncio.run(run())
    assert infected.status == "virus" and infected.virus.startswith("eicar.com")
    assert in_zip.status == "virus"
    assert clean.status == "clean"


def test_clamd_size_limit_and_down_are_errors(clamd_server: Clamd, tmp_path: Path) -> None:
    big = scanned(attachment=(b"x" * 1_500_000, "big.bin"))  # over StreamMaxLength 1M
    result = asyncio.run(clamd.scan(clamd_server.address, big, timeout=20))
    assert (result.status, result.reason) == ("error", clamd.REASON_SIZE_LIMIT)
    down = asyncio.run(clamd.scan(f"unix://{tmp_path}/none.sock", b"x", timeout=5))
    assert (down.status, down.reason) == ("error", clamd.REASON_UNREACHABLE)


def test_runner_antivirus_hits(clamd_server: Clamd) -> None:
    infected = scanned(attachment=(eicar_zip(), "invoice.zip"))

    async def run(settings: Checks, raw: bytes) -> object:
        run = CheckRun(settings, resolver_for(1))
        run.connect("127.0.0.1")
        return await run.data(raw, parse_message(raw))

    on = checks(antivirus={"clamd": clamd_server.address})
    virus = asyncio.run(run(on, infected)).hits  # type: ignore[attr-defined]
    assert [(h.id[:15], h.kind, h.action) for h in virus] == [("virus:eicar.com", KIND_ANTIVIRUS, Action.reject)]
    assert asyncio.run(run(on, scanned())).hits == ()  # type: ignore[attr-defined]
    down = checks(antivirus={"clamd": "tcp://127.0.0.1:1"})
    error = asyncio.run(run(down, scanned())).hits  # type: ignore[attr-defined]
    assert [(h.id, h.kind, h.action) for h in error] == [("antivirus:error", KIND_ANTIVIRUS, Action.tempfail)]
    lenient = checks(antivirus={"clamd": "tcp://127.0.0.1:1", "on_error": "deliver"})
    error = asyncio.run(run(lenient, scanned())).hits  # type: ignore[attr-defined]
    assert [(h.kind, h.action) for h in error] == [("check", Action.deliver)]  # no override of block lists
