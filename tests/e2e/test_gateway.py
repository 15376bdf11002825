"""End to end through a real `liveprism serve`: swaks as client, real SMTP servers as tenants."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import smtplib
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.gateway import Gateway, send, start_gateway
from tests.support.messages import GTUBE
from tests.support.peers import Dnsmasq, Sink, refusing_server, self_signed, smtp_sink, start_sink
from tests.support.policies import acme_to, route, write_policy
from tests.support.processes import LOCALHOST, free_port, swaks, wait_for

CLEAN = (
    b"From: Alice Martin <alice@example.com>\r\n"
    b"To: Bob <bob@acme.example>\r\n"
    b"Subject: Quarterly report\r\n"
    b"Message-ID: <e2e-clean@example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b".leading dot stays\r\n"
    b"\r\n"
    b"the figures are attached.\r\n"
)


def strip_added(delivered: bytes) -> bytes:
    """The delivered copy minus the sink's and the gateway's prepended header lines."""
    lines = delivered.split(b"\r\n") if b"\r\n" in delivered else delivered.split(b"\n")
    index = 0
    added = (b"X-Sink-", b"Received:", b"X-LivePrism-", b"X-Spam-", b"\t", b" ")
    while index < len(lines) and lines[index].startswith(added):
        index += 1
    sep = b"\r\n" if b"\r\n" in delivered else b"\n"
    return sep.join(lines[index:])


def test_clean_mail_is_delivered_byte_exact(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    result = send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN)
    assert result["data"][0] == 250, result
    assert "queued as" in result["data"][1]
    assert wait_for(lambda: len(box.messages()) == 1)
    delivered = box.messages()[0]
    assert b"X-LivePrism-Verdict: action=deliver" in delivered
    assert b"X-LivePrism-Policy: " in delivered
    assert b"Received: from client.test.example ([127.0.0.1])" in delivered
    assert strip_added(delivered).replace(b"\r\n", b"\n") == CLEAN.replace(b"\r\n", b"\n")


def test_gtube_rejected_at_data_with_rule_message(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    out = swaks(gateway.port, "--from", "alice@example.com", "--to", "bob@acme.example", "--body", GTUBE)
    assert "<** 550 5.7.1 GTUBE test message rejected by LivePrism" in out.stdout, out.stdout
    assert box.messages() == []
    # refused, but archived with its verdict (and nothing queued for delivery)
    with contextlib.closing(sqlite3.connect(gateway.state / "index.sqlite3")) as db:
        rows = db.execute("SELECT m.verdict FROM archive a JOIN messages m USING (queue_id)").fetchall()
        assert len(rows) == 1 and json.loads(rows[0][0])["action"] == "reject"
        assert db.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)


def test_blocked_network_refused_before_data(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    block = "name: global-block\naction: block\nnetworks: [127.0.0.2/32]\n"
    gateway = start_gateway(
        tmp_path, procs, acme_to(box.port),
        lists={"global-block": block},
    )
    refused = send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN, source="127.0.0.2")
    assert refused["mail"][0] == 550 and refused["data"] is None, refused
    allowed = send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN, source="127.0.0.3")
    assert allowed["data"][0] == 250


def test_open_relay_attempts_refused(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    attempts = [
        "victim@elsewhere.example",
        "victim%elsewhere.example@acme.example",
        "elsewhere.example!victim@acme.example",
        '"victim@elsewhere.example"@acme.example',
        "victim@[127.0.0.1]",
        "victim@acme.example.elsewhere.example",
    ]
    with smtplib.SMTP(LOCALHOST, gateway.port, timeout=30) as client:
        client.ehlo("client.test.example")
        assert client.mail("spammer@example.net")[0] == 250
        for address in attempts:
            code, text = client.rcpt(address)
            assert code == 550 and b"relaying denied" in text, (address, code, text)
        code, text = client.docmd("RCPT TO:<@relay.example:victim@acme.example>")
        assert code == 550, text
    # the transaction ended without DATA: its refusals still get a log line
    assert wait_for(lambda: "RCPT refused: victim@elsewhere.example: 550 5.7.1 relaying denied" in gateway.log())


def test_oversized_message_gets_552(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    with smtplib.SMTP(LOCALHOST, gateway.port, timeout=30) as client:
        client.ehlo("client.test.example")
        assert client.has_extn("size") and client.has_extn("pipelining") and client.has_extn("enhancedstatuscodes")
        code, _ = client.mail("alice@example.com", ["SIZE=900000"])
        assert code == 552
    big = CLEAN + (b"x" * 998 + b"\r\n") * 250
    result = send(gateway.port, "alice@example.com", ["bob@acme.example"], big)
    assert result["data"][0] == 552, result
    assert box.messages() == []


def test_quarantine_hold_then_release(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    phish = CLEAN.replace(b"the figures are attached.", b"Please verify your password at http://x.example/ now.\r\n"
                          b"Also we need a gift card urgently, discreet.")
    result = send(gateway.port, "alice@example.com", ["bob@acme.example"], phish)
    assert result["data"][0] == 250, result
    listing = gateway.cli("quarantine", "list", "--state", str(gateway.state), "--json")
    assert listing.returncode == 0, listing.stderr
    entries = json.loads(listing.stdout)
    assert len(entries) == 1 and entries[0]["tenant"] == "acme"
    assert box.messages() == []
    released = gateway.cli("quarantine", "release", str(entries[0]["id"]), "--state", str(gateway.state))
    assert released.returncode == 0, released.stderr + released.stdout
    assert wait_for(lambda: len(box.messages()) == 1)
    assert b"verify your password" in box.messages()[0]


def test_malformed_mime_is_accepted_and_quarantined(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    broken = (
        b"From: a@example.com\r\nSubject: broken\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed\r\n\r\n--nobody\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    )
    result = send(gateway.port, "alice@example.com", ["bob@acme.example"], broken)
    assert result["data"][0] == 250, result
    listing = json.loads(gateway.cli("quarantine", "list", "--state", str(gateway.state), "--json").stdout)
    assert len(listing) == 1
    assert gateway.proc is not None and gateway.proc.poll() is None


def test_two_tenants_get_separate_verdicts(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    block = "name: globex-block\naction: block\nsenders: ['*@example.com']\n"
    gateway = start_gateway(
        tmp_path, procs,
        {
            "acme": {"domains": ["acme.example"], "routes": [route(box.port)]},
            "globex": {"domains": ["globex.example"], "routes": [route(box.port)], "lists": ["globex-block"]},
        },
        lists={"globex-block": block},
    )
    result = send(gateway.port, "alice@example.com", ["bob@acme.example", "carol@globex.example"], CLEAN)
    assert result["rcpt"] == {"bob@acme.example": 250, "carol@globex.example": 550}
    assert result["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1)
    assert b"X-Sink-Rcpt-To: bob@acme.example\r\n" in box.messages()[0].replace(b"\n", b"\r\n").replace(
        b"\r\r\n", b"\r\n")


def test_first_route_down_second_used(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    dead = free_port()
    gateway = start_gateway(
        tmp_path, procs,
        {"acme": {"domains": ["acme.example"], "routes": [route(dead, 10), route(box.port, 20)]}},
    )
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN)["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1)


def test_downstream_down_then_up_is_retried(tmp_path: Path, procs: list[Any]) -> None:
    port = free_port()
    gateway = start_gateway(tmp_path, procs, acme_to(port))
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN)["data"][0] == 250
    box = Sink(port, tmp_path / "late").start()
    procs.append(box)
    assert wait_for(lambda: len(box.messages()) == 1, timeout=30)


def test_queue_list_shows_the_deferred_copy_and_flush_retries_it_now(tmp_path: Path, procs: list[Any]) -> None:
    """Downstream down, backoff of an hour: `queue list` says why it waits; once the server is
    back, `queue flush` gets it delivered at once instead of an hour later."""
    port = free_port()
    gateway = start_gateway(tmp_path, procs, acme_to(port))
    gateway.restart_with("retry_initial: 1, retry_max: 2", "retry_initial: 3600, retry_max: 7200")
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN)["data"][0] == 250

    def queue() -> list[dict[str, Any]]:
        listed = gateway.cli("queue", "list", str(gateway.policy), "--state", str(gateway.state), "--json")
        assert listed.returncode == 0, listed.stderr
        return list(json.loads(listed.stdout))

    assert wait_for(lambda: queue() and queue()[0]["attempts"] == 1 and queue()[0]["state"] == "queued", timeout=30)
    (entry,) = queue()
    assert entry["recipients"][0]["rcpt"] == "bob@acme.example" and entry["last_error"], entry
    text = gateway.cli("queue", "list", "--state", str(gateway.state))
    assert "bob@acme.example" in text.stdout and "-- 1 deliveries" in text.stdout, text.stdout
    box = Sink(port, tmp_path / "back").start()
    procs.append(box)
    time.sleep(1.5)
    assert box.messages() == []  # not before its time…
    flushed = gateway.cli("queue", "flush", "--state", str(gateway.state))
    assert flushed.returncode == 0 and flushed.stdout.strip() == "1 waiting deliveries due now", flushed
    assert wait_for(lambda: len(box.messages()) == 1, timeout=10)  # …but at once when flushed
    assert wait_for(lambda: queue() == [], timeout=10)


def assert_dsn_for(dsn: bytes, rcpt: str, to: str) -> None:
    assert b"X-Sink-Mail-From: <>" in dsn  # RFC 5321 §4.5.5: null sender, so no DSN loop
    assert f"X-Sink-Rcpt-To: <{to}>".encode() in dsn or f"X-Sink-Rcpt-To: {to}".encode() in dsn, dsn[:400]
    assert b"multipart/report" in dsn and b"report-type=delivery-status" in dsn.replace(b'"', b"")
    assert re.search(rf"Final-Recipient: rfc822; ?{re.escape(rcpt)}".encode(), dsn), dsn
    assert b"Action: failed" in dsn


def test_downstream_5xx_sends_dsn_to_sender(tmp_path: Path, procs: list[Any]) -> None:
    """The tenant server refuses DATA with 5xx: the sender (in another tenant's domain) gets a DSN."""
    box = start_sink(tmp_path, procs)
    refusing = refusing_server(procs)
    gateway = start_gateway(
        tmp_path, procs,
        {
            "acme": {"domains": ["acme.example"], "routes": [route(refusing)]},
            "globex": {"domains": ["globex.example"], "routes": [route(box.port)]},
        },
    )
    assert send(gateway.port, "carol@globex.example", ["bob@acme.example"], CLEAN)["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1, timeout=30)
    assert_dsn_for(box.messages()[0], "bob@acme.example", "carol@globex.example")


def test_dsn_to_an_external_sender_goes_to_its_mx_found_in_dns(tmp_path: Path, procs: list[Any]) -> None:
    """The usual inbound case: the sender is on the internet. The DSN goes to the MX of the
    sender's domain, looked up in a real DNS server (dnsmasq on loopback) and reached on
    `delivery.mx_port`; a sender whose domain does not exist gets none (and nothing loops)."""
    senders_mx = start_sink(tmp_path, procs, "senders-mx")
    dnsmasq = Dnsmasq(tmp_path, {"sender.example": ("mx.sender.example", LOCALHOST)}).start()
    procs.append(dnsmasq)
    refusing = refusing_server(procs)
    gateway = start_gateway(
        tmp_path, procs, acme_to(refusing),
        extra_gateway=dnsmasq.gateway_settings(), mx_port=senders_mx.port,
    )
    assert send(gateway.port, "carol@sender.example", ["bob@acme.example"], CLEAN)["data"][0] == 250
    assert send(gateway.port, "dave@nowhere.sender.example", ["bob@acme.example"], CLEAN)["data"][0] == 250
    assert wait_for(lambda: len(senders_mx.messages()) >= 1, timeout=30)
    assert_dsn_for(senders_mx.messages()[0], "bob@acme.example", "carol@sender.example")
    # the DSN for the sender in a non-existent domain fails for good (NXDOMAIN), and is not retried
    assert wait_for(lambda: "rcpt=dave@nowhere.sender.example status=bounced" in gateway.log(), timeout=30), (
        gateway.log()[-3000:]
    )
    time.sleep(1.5)  # a retry would come after retry_initial (1 s)
    assert len(senders_mx.messages()) == 1


def test_starttls_offered_when_tls_is_set(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    keys = tmp_path / "policy" / "keys"
    keys.mkdir(parents=True)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=mxpath.test.example",
         "-keyout", str(keys / "key.pem"), "-out", str(keys / "cert.pem"), "-days", "2"],
        check=True, capture_output=True,
    )
    gateway = start_gateway(
        tmp_path, procs, acme_to(box.port),
        extra_gateway="tls: {cert: keys/cert.pem, key: keys/key.pem}",
    )
    out = swaks(gateway.port, "--from", "alice@example.com", "--to", "bob@acme.example", "--tls")
    assert "<-  220 " in out.stdout and "TLS started" in out.stdout, out.stdout + out.stderr
    assert "<~  250 2.0.0 queued as" in out.stdout, out.stdout
    assert wait_for(lambda: len(box.messages()) == 1)
    assert b"with ESMTPS id" in box.messages()[0]


def test_connection_limit_per_ip_gets_421(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    gateway.restart_with("max_connections_per_ip: 100", "max_connections_per_ip: 2")
    held = [smtplib.SMTP(LOCALHOST, gateway.port, timeout=10) for _ in range(2)]
    try:
        with socket_banner(gateway.port) as banner:
            assert banner.startswith(b"421 4.7.0"), banner
        other = send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN, source="127.0.0.5")
        assert other["data"][0] == 250
    finally:
        for client in held:
            client.close()


def test_policy_hot_reload(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    assert send(gateway.port, "alice@example.com", ["bob@initech.example"], CLEAN)["rcpt"] == {
        "bob@initech.example": 550}
    initech = {"name": "initech", "domains": ["initech.example"], "routes": [route(box.port).model_dump(mode="json")]}
    tenant = json.dumps(initech)
    (gateway.policy / "tenants" / "initech.yaml").write_text(tenant)
    assert wait_for(lambda: "policy reloaded" in gateway.log(), timeout=20), gateway.log()
    assert send(gateway.port, "alice@example.com", ["bob@initech.example"], CLEAN)["data"][0] == 250
    (gateway.policy / "tenants" / "broken.yaml").write_text("name: [unclosed\n")
    assert wait_for(lambda: "reload rejected" in gateway.log(), timeout=20), gateway.log()
    assert send(gateway.port, "alice@example.com", ["bob@initech.example"], CLEAN)["data"][0] == 250


@contextlib.contextmanager
def socket_banner(port: int) -> Iterator[bytes]:
    """Connect and yield the greeting line."""
    with socket.create_connection((LOCALHOST, port), timeout=10) as sock:
        yield sock.makefile("rb").readline()


def test_tagged_copy_gets_spam_headers_and_subject_prefix(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    suspicious = CLEAN.replace(b"Subject: Quarterly report", b"Subject: URGENT payment today")
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], suspicious)["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1)
    delivered = box.messages()[0]
    assert b"X-Spam-Flag: YES" in delivered and b"X-Spam-Score: 3" in delivered
    assert b"Subject: [SPAM] URGENT payment today" in delivered
    assert b"X-LivePrism-Verdict: action=tag; score=3; reason=score; hits=urgent-payment-request" in delivered


def test_too_many_recipients_get_452(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    rcpts = [f"user{n}@acme.example" for n in range(51)]  # the test gateway allows 50
    result = send(gateway.port, "alice@example.com", rcpts, CLEAN)
    assert [result["rcpt"][r] for r in rcpts] == [250] * 50 + [452]
    assert result["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1)


def test_sigterm_leaves_the_queue_on_disk_and_restart_delivers(tmp_path: Path, procs: list[Any]) -> None:
    port = free_port()
    gateway = start_gateway(tmp_path, procs, acme_to(port))
    for n in range(5):
        message = CLEAN.replace(b"e2e-clean@", f"e2e-term-{n}@".encode())
        assert send(gateway.port, "alice@example.com", ["bob@acme.example"], message)["data"][0] == 250
    gateway.stop()  # SIGTERM while the tenant server is down: everything stays queued
    assert gateway.proc is not None and gateway.proc.returncode == 0
    assert "stopped; queue left in" in gateway.log()
    box = Sink(port, tmp_path / "later").start()
    procs.append(box)
    gateway.start()
    assert wait_for(lambda: len(box.messages()) == 5, timeout=30)


def test_json_transaction_log(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(
        tmp_path, procs, acme_to(box.port),
        extra_gateway="log: {format: json}",
    )
    result = send(gateway.port, "alice@example.com", ["bob@acme.example", "nobody@elsewhere.example"], CLEAN)
    queue_id = result["data"][1].rsplit(" ", 1)[1]

    def record() -> dict[str, Any] | None:
        for line in gateway.log().splitlines():
            if "liveprism.txn" in line and queue_id in line:
                return dict(json.loads(line[line.index("{"):]))
        return None

    assert wait_for(lambda: record() is not None)
    entry = record()
    assert entry is not None
    assert entry["queue_id"] == queue_id and entry["client"] == "127.0.0.1" and entry["helo"] == "client.test.example"
    assert entry["from"] == "alice@example.com" and entry["rcpts"] == ["bob@acme.example"]
    assert entry["refused"] == ["nobody@elsewhere.example: 550 5.7.1 relaying denied"]
    assert entry["tenants"] == {"acme": {"action": "deliver", "score": 0.0, "hits": []}}
    assert entry["size"] == len(CLEAN) and entry["duration_ms"] >= 0 and entry["policy"]


def test_hostile_messages_never_crash_the_gateway(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    nested = b"Content-Type: multipart/mixed; boundary=b0\r\n\r\n"
    for depth in range(1, 120):
        nested += f"--b{depth - 1}\r\nContent-Type: multipart/mixed; boundary=b{depth}\r\n\r\n".encode()
    hostile = {
        "binary": bytes(range(256)) * 40 + b"\r\n",
        "nul-and-8bit-headers": b"From: \x00\xff\xfe@x\r\nSubject: \x80\x81\x82\r\n\r\nbody\x00\r\n",
        "no-header-separator": b"just text without any header\r\n" * 50,
        "deep-nesting": nested,
        "huge-header": b"X-Big: " + b"a" * 60_000 + b"\r\n\r\nbody\r\n",
        "bad-encodings": b"Subject: =?x-unknown?B?!!!?=\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@@\r\n",
    }
    accepted = 0
    for name, raw in hostile.items():
        result = send(gateway.port, "alice@example.com", ["bob@acme.example"], raw)
        assert result["data"] is not None and result["data"][0] in (250, 550), (name, result)
        accepted += result["data"][0] == 250
        assert gateway.proc is not None and gateway.proc.poll() is None, name
    assert accepted >= len(hostile) - 1  # odd mail is held, not refused (a rule may still reject one)
    # still serving normal mail, and every accepted hostile message is held or delivered, not lost
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN)["data"][0] == 250

    def held() -> int:
        listing = gateway.cli("quarantine", "list", "--state", str(gateway.state), "--json")
        return len(json.loads(listing.stdout))

    assert wait_for(lambda: len(box.messages()) + held() == accepted + 1, interval=0.5)


def test_tempfailed_copy_after_250_is_held_not_lost(tmp_path: Path, procs: list[Any]) -> None:
    """One tenant's copy is tempfailed, another's accepted: the client got 250, so the
    tempfailed copy cannot be retried by the client — it is held in quarantine instead."""
    box = start_sink(tmp_path, procs)
    port = free_port()
    policy = write_policy(
        tmp_path / "policy", port=port,
        tenants={
            "acme": {"domains": ["acme.example"], "routes": [route(box.port)], "rules": ["acme-wait"]},
            "globex": {"domains": ["globex.example"], "routes": [route(box.port)]},
        },
    )
    (policy / "rules" / "acme-wait.yaml").write_text(
        "name: acme-wait\nrules:\n  - id: acme-wait\n    when: {body: {contains: [acmewait]}}\n"
        "    then: {action: tempfail}\n"
    )
    gateway = Gateway(policy, tmp_path / "state", port).start()
    procs.append(gateway)
    body = CLEAN.replace(b"the figures are attached.", b"acmewait")
    result = send(gateway.port, "alice@example.com", ["bob@acme.example", "carol@globex.example"], body)
    assert result["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1)
    assert b"X-Sink-Rcpt-To: carol@globex.example" in box.messages()[0]
    held = json.loads(gateway.cli("quarantine", "list", "--state", str(gateway.state), "--json").stdout)
    assert [(entry["tenant"], entry["recipients"]) for entry in held] == [("acme", ["bob@acme.example"])]


def test_recipient_case_is_kept_and_duplicates_delivered_once(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    result = send(gateway.port, "alice@example.com", ["Bob.Smith@acme.example", "bob.smith@ACME.example"], CLEAN)
    assert result["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1)
    assert b"X-Sink-Rcpt-To: Bob.Smith@acme.example\r\n" in box.messages()[0].replace(b"\r\r\n", b"\r\n")


def test_relay_restart_while_the_policy_on_disk_is_broken_still_delivers(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    (gateway.policy / "tenants" / "broken.yaml").write_text("name: [unclosed\n")
    assert wait_for(lambda: "reload rejected" in gateway.log(), timeout=20), gateway.log()
    def relay_pids() -> list[int]:
        pattern = f"engine relay --state {gateway.state}$"
        found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    assert wait_for(lambda: len(relay_pids()) == 1), relay_pids()
    os.kill(relay_pids()[0], signal.SIGKILL)  # the supervisor restarts it; it must not need the broken YAML
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN)["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1, timeout=30), gateway.log()[-2000:]
    assert "relay process exited" in gateway.log()


def test_tls_required_route_fails_over_from_a_server_without_starttls(tmp_path: Path, procs: list[Any]) -> None:
    """Route 1 (`tls: required`) offers no STARTTLS: not used, not even in clear. Route 2 is a real
    STARTTLS server (a second `liveprism serve` with a self-signed certificate): used, encrypted."""
    plain = start_sink(tmp_path, procs, "plain")
    mailbox = start_sink(tmp_path, procs, "mailbox")
    downstream_dir = tmp_path / "downstream"
    downstream_port = free_port()
    cert, key = self_signed(downstream_dir / "keys", "mail.acme.example")
    downstream_policy = write_policy(
        downstream_dir / "policy", port=downstream_port,
        tenants=acme_to(mailbox.port),
        extra_gateway=f"tls: {{cert: {cert}, key: {key}}}",
    )
    downstream = Gateway(downstream_policy, downstream_dir / "state", downstream_port).start()
    procs.append(downstream)
    required = [
        {"host": LOCALHOST, "port": plain.port, "priority": 10, "tls": "required"},
        {"host": LOCALHOST, "port": downstream_port, "priority": 20, "tls": "required"},
    ]
    gateway = start_gateway(tmp_path, procs, {"acme": {"domains": ["acme.example"], "routes": required}})
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN)["data"][0] == 250
    assert wait_for(lambda: len(mailbox.messages()) == 1, timeout=30), gateway.log()[-2000:]
    assert b"with ESMTPS" in mailbox.messages()[0]  # the hop gateway -> downstream was encrypted
    assert plain.messages() == []
    assert f"relay=127.0.0.1:{downstream_port}" in gateway.log()


def established_local_ports(remote_port: int) -> set[int]:
    """Local ports of this machine's established IPv4 TCP connections to 127.0.0.1:`remote_port`."""
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, state = fields[1], fields[2], fields[3]
        if state == "01" and remote == f"0100007F:{remote_port:04X}":
            ports.add(int(local.split(":")[1], 16))
    return ports


def test_one_relay_connection_carries_several_messages(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    connections = []
    for n in range(1, 6):
        assert send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN)["data"][0] == 250
        assert wait_for(lambda n=n: len(box.messages()) == n, timeout=30)
        connections.append(established_local_ports(box.port))
    assert len(connections[0]) == 1, connections
    assert all(seen == connections[0] for seen in connections), connections  # the same session every time


def test_silent_client_is_dropped_after_command_timeout(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    gateway.restart_with("command_timeout: 60", "command_timeout: 1")
    with socket.create_connection((LOCALHOST, gateway.port), timeout=15) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"220 ")
        started = time.monotonic()
        assert reader.readline().startswith(b"421 4.4.2"), "no timeout reply"
        assert reader.readline() == b""  # and the connection is closed
        assert 0.9 <= time.monotonic() - started < 10


def test_4xx_from_first_route_fails_over_to_second(tmp_path: Path, procs: list[Any]) -> None:
    """Postfix's smtp-sink answering 4xx to RCPT on route 1: the copy goes to route 2 at once."""
    box = start_sink(tmp_path, procs)
    busy = smtp_sink(procs, "-r", "rcpt")
    gateway = start_gateway(
        tmp_path, procs, {"acme": {"domains": ["acme.example"], "routes": [route(busy, 10), route(box.port, 20)]}}
    )
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], CLEAN)["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1, timeout=30), gateway.log()[-2000:]
    # (the sink stores the message before the relay logs its reply: wait for the line)
    assert wait_for(lambda: f"relay=127.0.0.1:{box.port}" in gateway.log(), timeout=10), gateway.log()[-2000:]
    assert "attempts=1" in gateway.log().split(f"relay=127.0.0.1:{box.port}")[1].splitlines()[0]  # no retry wait


def test_postmaster_without_domain_and_idn_recipients_are_delivered(tmp_path: Path, procs: list[Any]) -> None:
    """RFC 5321 §4.5.1: RCPT TO:<postmaster> is accepted and goes to the configured mailbox; an
    SMTPUTF8 recipient in a U-label domain is the tenant's (policy domains are A-labels)."""
    box = start_sink(tmp_path, procs)
    tenants = {
        "acme": {"domains": ["acme.example"], "routes": [route(box.port)]},
        "muenchen": {"domains": ["münchen.example"], "routes": [route(box.port)]},
    }
    gateway = start_gateway(tmp_path, procs, tenants, extra_gateway="postmaster: hostmaster@acme.example")
    out = swaks(gateway.port, "--from", "alice@example.com", "--to", "postmaster")
    assert "<-  250 2.1.5" in out.stdout and "queued as" in out.stdout, out.stdout
    with smtplib.SMTP(LOCALHOST, gateway.port, timeout=30) as client:
        client.ehlo("client.test.example")
        client.command_encoding = "utf-8"
        assert client.mail("alice@example.com", ["SMTPUTF8"])[0] == 250
        assert client.rcpt("anna@münchen.example")[0] == 250
        assert client.data(CLEAN)[0] == 250
    assert wait_for(lambda: len(box.messages()) == 2)
    rcpts = sorted(re.search(rb"X-Sink-Rcpt-To: (.*)", m).group(1).strip() for m in box.messages())  # type: ignore[union-attr]
    assert rcpts == [b"anna@xn--mnchen-3ya.example", b"hostmaster@acme.example"]
