"""Large messages end to end (issue 7 item 10): spooled to disk while received, stored as a file,
streamed to the tenant — through a real `liveprism serve` and `liveprism sink`, with raw sockets
and smtplib as clients. No spool file outlives its transaction (accepted, refused, hung up,
killed). The memory figures are bench/memory.py's, not a test's."""

from __future__ import annotations

import os
import random
import re
import signal
import smtplib
import socket
from pathlib import Path
from typing import Any

from tests.support.gateway import Gateway, Line, start_gateway
from tests.support.messages import GTUBE, message
from tests.support.peers import Sink, start_sink
from tests.support.policies import acme_to
from tests.support.processes import LOCALHOST, free_port, wait_for

GTUBE_BYTES = GTUBE.encode()


def big_message(size: int, seed: int = 7, extra: bytes = b"") -> bytes:
    """About `size` bytes of CRLF lines under 998 octets, many starting with dots (stuffed on
    every hop), with `extra` in the middle."""
    rnd = random.Random(seed)
    head = (b"From: Alice <alice@example.com>\r\nTo: bob@acme.example\r\nSubject: the big one\r\n"
            b"Message-ID: <big-%d@example.com>\r\n\r\n" % seed)
    lines: list[bytes] = []
    total = len(head)
    while total < size:
        line = b"." * rnd.randrange(3) + rnd.randbytes(rnd.randrange(20, 700)).hex().encode()[: rnd.randrange(1, 990)]
        lines.append(line)
        total += len(line) + 2
        if extra and len(lines) == 1000:
            lines.append(extra)
    return head + b"\r\n".join(lines) + b"\r\n"


def spool_files(gateway: Gateway) -> list[str]:
    spool = gateway.state / "spool"
    return sorted(os.listdir(spool)) if spool.exists() else []


def delivered_exactly(box: Sink, raw: bytes) -> bool:
    """The sink holds one message: the gateway's and the sink's header lines, then `raw` byte for byte."""
    got = box.messages()
    if len(got) != 1 or not got[0].endswith(raw):
        return False
    added = got[0][: len(got[0]) - len(raw)]
    return re.fullmatch(rb"(?:[!-9;-~]+:[^\r\n]*\r\n|[ \t][^\r\n]*\r\n)+", added) is not None  # header lines only


def test_25_mb_message_arrives_byte_exact_and_leaves_no_spool_file(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port), max_message_size=30_000_000)
    raw = big_message(25_000_000)
    with smtplib.SMTP(LOCALHOST, gateway.port, timeout=300) as client:
        refused = client.sendmail("alice@example.com", ["bob@acme.example"], raw)
    assert refused == {}
    assert spool_files(gateway) == []
    assert wait_for(lambda: len(box.messages()) == 1, timeout=120)
    assert delivered_exactly(box, raw)
    assert b"X-LivePrism-Verdict: action=deliver" in box.messages()[0][:4096]
    (stored,) = os.listdir(gateway.state / "bodies")  # archived: kept as a file, exactly as received
    assert (gateway.state / "bodies" / stored).read_bytes() == raw


def test_spool_file_removed_after_refusal_too_much_data_and_hang_up(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port), max_message_size=5_000_000)

    def transaction() -> Line:
        client = Line(gateway.port)
        for command in ("EHLO client.test.example", "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@acme.example>"):
            assert client.cmd(command).startswith("250")
        assert client.cmd("DATA").startswith("354")
        return client

    # refused after DATA by a content rule: 550, archived, no spool file
    client = transaction()
    assert client.cmd(big_message(3_000_000, extra=GTUBE_BYTES) + b".").startswith("550 5.7.1 GTUBE")
    assert spool_files(gateway) == []
    # over max_message_size: 552, no spool file, the session goes on
    assert client.cmd("MAIL FROM:<alice@example.com>").startswith("250")
    assert client.cmd("RCPT TO:<bob@acme.example>").startswith("250")
    assert client.cmd("DATA").startswith("354")
    assert client.cmd(big_message(6_000_000) + b".").startswith("552")
    assert spool_files(gateway) == []
    assert client.cmd("QUIT").startswith("221")
    client.close()
    # hung up mid-DATA: the file existed while bytes came, and goes with the session
    client = transaction()
    client.sock.sendall(big_message(3_000_000)[:2_500_000])
    assert wait_for(lambda: len(spool_files(gateway)) == 1, timeout=30)
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    assert wait_for(lambda: spool_files(gateway) == [], timeout=30)
    # the gateway serves on: a large clean message is accepted and delivered
    raw = big_message(3_000_000, seed=8)
    with smtplib.SMTP(LOCALHOST, gateway.port, timeout=120) as smtp:
        assert smtp.sendmail("alice@example.com", ["bob@acme.example"], raw) == {}
    assert wait_for(lambda: len(box.messages()) == 1, timeout=60)
    assert delivered_exactly(box, raw)
    assert spool_files(gateway) == []


def test_kill_9_keeps_an_accepted_large_message_and_clears_a_half_received_one(
    tmp_path: Path, procs: list[Any]
) -> None:
    box = Sink(free_port(), tmp_path / "maildir")  # not started yet: the message waits in the queue
    procs.append(box)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port), max_message_size=10_000_000)
    raw = big_message(4_000_000, seed=9)
    with smtplib.SMTP(LOCALHOST, gateway.port, timeout=120) as smtp:
        assert smtp.sendmail("alice@example.com", ["bob@acme.example"], raw) == {}  # 250: ours now
    client = Line(gateway.port)
    for command in ("EHLO client.test.example", "MAIL FROM:<alice@example.com>", "RCPT TO:<bob@acme.example>"):
        assert client.cmd(command).startswith("250")
    assert client.cmd("DATA").startswith("354")
    client.sock.sendall(big_message(4_000_000, seed=10)[:3_000_000])
    assert wait_for(lambda: len(spool_files(gateway)) == 1, timeout=30)
    gateway.stop(signal.SIGKILL)
    client.close()
    assert len(spool_files(gateway)) == 1  # left behind by the crash
    box.start()
    gateway.start()
    assert wait_for(lambda: len(box.messages()) == 1, timeout=60)
    assert delivered_exactly(box, raw)
    assert spool_files(gateway) == []  # removed at the start: never acknowledged


def long_text(ctype: str, cte: str, body: bytes, extra_header: bytes = b"") -> bytes:
    return message(body, raw=True, sender="Alice <alice@example.com>", subject="long text", date=None,
                   message_id=f"<text-{len(body)}@example.com>", headers=extra_header, content_type=ctype,
                   transfer_encoding=cte)


def test_large_text_bodies_are_decoded_after_the_bytes_are_let_go_and_still_matched(
    tmp_path: Path, procs: list[Any]
) -> None:
    """A spooled message's large texts (quoted-printable, HTML) are decoded from the spool file once
    the message bytes are let go (issue 7 item 10): content rules still see them, and a forged
    Authentication-Results field is still stripped from the stored and relayed copy."""
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port), max_message_size=10_000_000)
    lines = b"".join(b"Gr=C3=BC=C3=9Fe aus K=C3=B6ln, line %d of a long report =\r\nstill the same line\r\n" % i
                     for i in range(40_000))
    cut_gtube = GTUBE_BYTES[:35] + b"=\r\n" + GTUBE_BYTES[35:]  # a soft line break inside the string
    qp = long_text("text/plain; charset=utf-8", "quoted-printable", lines + b"P.S. " + cut_gtube + b"\r\n")
    forged = b"Authentication-Results: mxpath.test.example; dkim=pass header.d=bank.example\r\n"
    rows = b"<p>row <b>bold</b> &amp; more</p>\r\n" * 100_000
    html = long_text("text/html; charset=utf-8", "8bit", b"<p>Hello <!-- " + GTUBE_BYTES + b" -->\r\n" + rows, forged)
    assert len(qp) > 3_000_000 and len(html) > 3_000_000
    with smtplib.SMTP(LOCALHOST, gateway.port, timeout=120) as client:
        try:
            client.sendmail("alice@example.com", ["bob@acme.example"], qp)
            raise AssertionError("the GTUBE line cut by a soft line break was not found")
        except smtplib.SMTPDataError as exc:
            assert exc.smtp_code == 550 and b"GTUBE" in exc.smtp_error
        assert client.sendmail("alice@example.com", ["bob@acme.example"], html) == {}  # GTUBE in a comment: hidden
    assert spool_files(gateway) == []
    assert wait_for(lambda: len(box.messages()) == 1, timeout=60)
    (got,) = box.messages()
    assert b"dkim=pass header.d=bank.example" not in got
    assert got.endswith(html.replace(forged, b""))
