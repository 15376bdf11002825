"""Issue 7 (hardening against hostile clients and operator mistakes), end to end through a real
`liveprism serve`: real sockets as clients, `liveprism sink` as the tenant's server."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import LOCALHOST, Gateway, Sink, free_port, route, write_policy

CLEAN = b"From: alice@example.com\r\nTo: bob@acme.example\r\nSubject: hello\r\n\r\nHello Bob.\r\n"


def start(tmp_path: Path, procs: list[Any], box: Sink, *, max_size: int = 200000, gateway_extra: str = "") -> Gateway:
    port = free_port()
    policy = write_policy(
        tmp_path / "policy", port=port, tenants={"acme": {"domains": ["acme.example"], "routes": [route(box.port)]}},
        extra_gateway=gateway_extra,
    )
    path = policy / "gateway.yaml"
    path.write_text(path.read_text().replace("max_message_size: 200000", f"max_message_size: {max_size}"))
    gateway = Gateway(policy, tmp_path / "state", port).start()
    procs.append(gateway)
    return gateway


def sink(tmp_path: Path, procs: list[Any]) -> Sink:
    box = Sink(free_port(), tmp_path / "maildir").start()
    procs.append(box)
    return box


class Line:
    """A raw SMTP client socket: send a command, read one (possibly multi-line) reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOCALHOST, port), timeout=60)
        self.buffer = b""
        self.reply()

    def reply(self) -> str:
        while True:
            lines = self.buffer.split(b"\r\n")
            for index, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    self.buffer = b"\r\n".join(lines[index + 1 :])
                    return b"\r\n".join(lines[: index + 1]).decode("utf-8", "replace")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread {self.buffer!r}")
            self.buffer += chunk

    def cmd(self, line: str | bytes) -> str:
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- item 1: event-loop stalls

def folded_encoded_words(size: int) -> bytes:
    word = b"=?utf-8?b?" + b"QUJD" * 10 + b"?="
    subject = b"\r\n ".join([word] * (size // (len(word) + 3)))
    return b"From: alice@example.com\r\nTo: bob@acme.example\r\nSubject: " + subject + b"\r\n\r\nbody\r\n"


def many_parts(count: int) -> bytes:
    return (b"From: alice@example.com\r\nTo: bob@acme.example\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * count + b"--b--\r\n")


NOOP_BOUND = 0.1  # seconds: issue 7 asks that a second client's NOOP be answered within 100 ms
STALL_BOUND = 0.6  # seconds: no single NOOP waits this long (scheduling noise of a loaded machine aside)


def noop_latencies_while_processing(port: int, raw: bytes) -> tuple[list[float], str, float]:
    """Client A sends *raw*; client B sends NOOPs back to back from just before A's final dot
    until A has its reply. Returns B's round-trip times, A's DATA reply and A's wait for it."""
    a, b = Line(port), Line(port)
    try:
        for client in (a, b):
            assert client.cmd("EHLO client.test.example").startswith("250")
        assert a.cmd("MAIL FROM:<alice@example.com>").startswith("250")
        assert a.cmd("RCPT TO:<bob@acme.example>").startswith("250")
        assert a.cmd("DATA").startswith("354")
        a.sock.sendall(raw)  # everything but the final dot: the gateway only buffers this
        latencies: list[float] = []
        done = threading.Event()
        result: dict[str, Any] = {}

        def finish_a() -> None:
            started = time.monotonic()
            result["reply"] = a.cmd(b".")
            result["wait"] = time.monotonic() - started
            done.set()

        assert b.cmd("NOOP").startswith("250")  # B's session is live before A's dot
        sender = threading.Thread(target=finish_a)
        sender.start()
        while not done.is_set():
            started = time.monotonic()
            assert b.cmd("NOOP").startswith("250")
            latencies.append(time.monotonic() - started)
        sender.join()
        return latencies, result["reply"], result["wait"]
    finally:
        a.close()
        b.close()


def test_noop_answered_within_100ms_while_hostile_messages_are_processed(tmp_path: Path, procs: list[Any]) -> None:
    box = sink(tmp_path, procs)
    gateway = start(tmp_path, procs, box, max_size=30 * 1024 * 1024)
    for raw in (folded_encoded_words(6 * 1024 * 1024), many_parts(200_000)):
        latencies, reply, wait = noop_latencies_while_processing(gateway.port, raw)
        assert reply.startswith("250"), reply
        # B kept talking throughout A's processing (which once stalled the loop for all of it,
        # 3.4 s to 20 s): 95% of its NOOPs answered within 100 ms, none stalled for long. (On this
        # shared 2-core CI machine an idle gateway's NOOP already takes up to ~60 ms now and then.)
        latencies.sort()
        figure = f"p95 {latencies[len(latencies) * 95 // 100] * 1000:.0f} ms, max {latencies[-1] * 1000:.0f} ms"
        assert len(latencies) >= 10, (latencies, wait)
        assert latencies[len(latencies) * 95 // 100] < NOOP_BOUND, f"{figure} (A waited {wait:.2f} s)"
        assert latencies[-1] < STALL_BOUND, f"{figure} (A waited {wait:.2f} s)"
    # both were accepted with the malformed-mime hit (a cap was reached: the example policy holds them)
    accepted = [line for line in gateway.log().splitlines() if "queued as" in line]
    assert len(accepted) == 2 and all("malformed-mime" in line for line in accepted), accepted
