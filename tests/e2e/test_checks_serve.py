"""The checks end to end through a real `liveprism serve`: nsd serving a DNSBL, a URIBL and the
sender's SPF/DKIM/DMARC records, clamd with an EICAR signature, a DNS server that never answers;
smtplib as the client and `liveprism sink` as the tenant's server."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import dkim

from tests.support.gateway import Gateway, send, start_gateway
from tests.support.keys import make_key
from tests.support.messages import eicar_zip, message
from tests.support.nsd import Nsd, nsd_fixture, zone_files
from tests.support.peers import Clamd, SilentDns, Sink, start_sink
from tests.support.policies import route
from tests.support.processes import wait_for

KEY = make_key()
ZONES = {
    "bl.test": "1.0.0.127 IN A 127.0.0.2\n",  # lists the test client, 127.0.0.1
    "block.test": "1.0.0.127 IN A 127.0.0.2\n",
    "uribl.test": "bad-links.example IN A 127.0.0.2\n",
    "reject.test": f'@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n_dmarc IN TXT "v=DMARC1; p=reject"\n'
                   f"lp1._domainkey IN TXT {KEY.record}\n",
}
TENANT = "acme"


nsd = nsd_fixture(zone_files(ZONES), scope="module")


def from_reject_test(body: str = "Hello Bob,\r\nsee you at lunch.\r\n", *, sign: bool = True, extra: str = "") -> bytes:
    """Alice's message from reject.test, DKIM-signed by reject.test unless `sign` is false."""
    raw = message(body, raw=True, sender="Alice <alice@reject.test>", subject="lunch", date=None,
                  message_id="<e2e@reject.test>", headers=extra)
    if not sign:
        return raw
    return dkim.sign(raw, b"lp1", b"reject.test", KEY.pem, include_headers=[b"from", b"to", b"subject"]) + raw


def transact(port: int, raw: bytes, sender: str = "alice@reject.test") -> tuple[int, str]:
    """(code, text) of the first refusal, or of the reply to DATA."""
    result: tuple[int, str] = send(port, sender, ["bob@acme.example"], raw)["final"]
    return result


def gateway(tmp_path: Path, procs: list[Any], checks: str, dns: str) -> tuple[Gateway, Sink]:
    box = start_sink(tmp_path, procs)
    gw = start_gateway(tmp_path, procs, {TENANT: {"domains": ["acme.example"], "routes": [route(box.port)]}},
                       extra_gateway=f"{dns}\nchecks:\n{checks}")
    return gw, box


def delivered(box: Sink, count: int) -> list[bytes]:
    assert wait_for(lambda: len(box.messages()) >= count, timeout=30), "copy not delivered"
    return box.messages()


DNS_CHECKS = """\
  dnsbl: [{zone: bl.test, score: 1.0}]
  uribl: [{zone: uribl.test, score: 7.0}]
  spf: {enabled: true}
  dkim: {enabled: true}
  dmarc: {enabled: true}
"""


def test_dns_checks_through_serve(tmp_path: Path, procs: list[Any], nsd: Nsd) -> None:
    gw, box = gateway(tmp_path, procs, DNS_CHECKS, nsd.gateway_settings())
    # 1. DKIM-signed by the author's domain: DMARC passes although SPF fails from 127.0.0.1
    forged = "Authentication-Results: mxpath.test.example; dkim=pass header.d=bank.example\r\n"
    code, text = transact(gw.port, from_reject_test(extra=forged))
    assert code == 250, text
    copy = delivered(box, 1)[0]
    head = copy.split(b"\r\n\r\n", 1)[0].decode()
    assert "header.d=bank.example" not in head  # the forged claim of our authserv-id is gone
    assert "Authentication-Results: mxpath.test.example;" in head
    assert "spf=fail" in head and "dkim=pass header.d=reject.test" in head and "dmarc=pass" in head
    verdict = next(line for line in head.splitlines() if line.startswith("X-LivePrism-Verdict:"))
    assert "hits=dnsbl:bl.test,spf:fail,dkim:pass,dmarc:pass" in verdict and "score=4" in verdict
    # 2. unsigned: DMARC fails under p=reject, which is honoured at the end of DATA
    code, text = transact(gw.port, from_reject_test(sign=False))
    assert code == 550, text
    # 3. a link to a domain on the URIBL: 1 + 3 + 7 = 11 >= quarantine_at 6, held
    code, text = transact(gw.port, from_reject_test("Pay at http://www.bad-links.example/pay now\r\n"))
    assert code == 250, text
    assert wait_for(lambda: "uribl:uribl.test" in gw.log())
    assert len(box.messages()) == 1
    # 4. explain runs the same checks and shows every lookup with its answer and time
    eml = tmp_path / "unsigned.eml"
    eml.write_bytes(from_reject_test(sign=False))
    done = gw.cli("explain", str(gw.policy), "--message", str(eml), "--mail-from", "alice@reject.test",
                  "--rcpt", "bob@acme.example", "--client-ip", "127.0.0.1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["action"] == "reject"
    assert [h["id"] for h in result["tenants"][TENANT]["hits"]][:4] == [
        "dnsbl:bl.test", "spf:fail", "dkim:none", "dmarc:reject"]
    lookups = {(lookup["name"], lookup["status"]) for lookup in result["checks"]["lookups"]}
    assert {("1.0.0.127.bl.test", "ok"), ("reject.test", "ok"), ("_dmarc.reject.test", "ok")} <= lookups
    assert all("ms" in lookup for lookup in result["checks"]["lookups"])
    # 5. a DNSBL with action reject refuses the client at MAIL, before DATA
    gw.restart_with("  dnsbl: [{zone: bl.test, score: 1.0}]",
                    "  dnsbl: [{zone: bl.test, score: 1.0}, {zone: block.test, action: reject}]")
    code, text = transact(gw.port, from_reject_test())
    assert code == 550 and "dnsbl:block.test" in text, text


def test_antivirus_through_serve(tmp_path: Path, procs: list[Any]) -> None:
    scanner = Clamd(tmp_path / "clamd").start()
    procs.append(scanner)
    checks = f"  antivirus: {{clamd: '{scanner.address}', on_virus: reject, on_error: tempfail, timeout: 10}}\n"
    gw, box = gateway(tmp_path, procs, checks, "")
    def with_attachment(data: bytes, name: str) -> bytes:
        return message("see attached\n", sender="a@sender.example", subject="invoice",
                       attachments=((name, "application/zip", data),))

    code, text = transact(gw.port, with_attachment(eicar_zip(), "invoice.zip"), sender="a@sender.example")
    assert code == 550 and "virus found: eicar.com" in text, text
    code, text = transact(gw.port, with_attachment(b"PK just some bytes", "notes.zip"), sender="a@sender.example")
    assert code == 250, text
    delivered(box, 1)
    scanner.stop()
    code, text = transact(gw.port, with_attachment(b"more bytes", "notes.zip"), sender="a@sender.example")
    assert code == 451 and "not scanned" in text, text  # nothing unscanned is delivered
    assert len(box.messages()) == 1


def test_dns_that_never_answers_still_gets_a_verdict(tmp_path: Path, procs: list[Any]) -> None:
    silent = SilentDns().start()
    procs.append(silent)
    checks = DNS_CHECKS + "  timeout: 1.0\n  budget: 3.0\n"
    gw, box = gateway(tmp_path, procs, checks, silent.gateway_settings(timeout=1.0))
    started = time.monotonic()
    code, text = transact(gw.port, from_reject_test())
    assert code == 250, text
    assert time.monotonic() - started < 10
    head = delivered(box, 1)[0].split(b"\r\n\r\n", 1)[0].decode()
    assert "spf:temperror" in head and "dmarc:temperror" in head  # never turned into a failure
