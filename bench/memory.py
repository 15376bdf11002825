"""Memory per message in flight: peak RSS of `liveprism serve` and its relay child (not a test).

For each checkout (a baseline and this tree, measured in the same run, one after the other):
start a real `liveprism serve` (SQLite store, fsync on, archive on) whose one tenant routes to
Postfix's `smtp-sink`, in two phases, each against freshly started processes:

  1. send one message of SIZE bytes alone, wait until the relay has delivered it;
  2. send CONCURRENT such messages at once (one session each), wait until all are delivered;

and report, for the serve process and the relay process separately, the peak RSS of the phase
(VmHWM, reset at its start by writing 5 to /proc/PID/clear_refs) minus the idle RSS before it
(measured after one small warm-up message went through),
divided by the number of messages in flight and by SIZE: the memory each message in flight
costs, as a multiple of its size. The message is a small text part and a base64
attachment (the usual shape of a large message); SHAPE=text makes it one long text/plain body
(SHAPE=qp: quoted-printable UTF-8, SHAPE=html: text/html, SHAPE=html-unclosed: with a comment never closed).
The policy carries body keyword and regex rules, so content matching is part of the measure.

    .venv/bin/python bench/memory.py                       # BASE=/work/memory-before, this tree
    BASE=../other-checkout SIZE=25000000 CONCURRENT=8 .venv/bin/python bench/memory.py
    BASE= .venv/bin/python bench/memory.py                 # this tree only

Each checkout runs with its own .venv/bin/python when it has one, else with this interpreter
(cwd = the checkout, so `python -m engine` imports that checkout's engine), like bench/smtp.sh's REPO=.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import smtplib
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TREE = HERE.parent
SIZE = int(os.environ.get("SIZE", 25_000_000))
CONCURRENT = int(os.environ.get("CONCURRENT", 8))
BASE = os.environ.get("BASE", "/work/memory-before")
LH = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LH, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((LH, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


SHAPE = os.environ.get("SHAPE", "attachment")


def message(size: int, seed: int) -> bytes:
    """A message of `size` bytes: a short text part and a base64 attachment (SHAPE=attachment), or
    one text body of lines of words: text/plain in US-ASCII (SHAPE=text), text/plain in UTF-8,
    quoted-printable (SHAPE=qp), or text/html (SHAPE=html; SHAPE=html-unclosed opens a comment that
    never closes, the worst case of cutting HTML into pieces)."""
    if SHAPE in ("text", "qp", "html", "html-unclosed"):
        words = [b"lorem", b"ipsum", b"dolor", b"sit", b"amet", b"invoice", b"report", b"quarterly", b"numbers"]
        ctype, tag = "text/plain; charset=us-ascii", b""
        if SHAPE == "qp":
            words = [*words, b"=C3=BCber", b"Stra=C3=9Fe"]
            ctype = "text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable"
        elif SHAPE.startswith("html"):
            ctype, tag = "text/html; charset=utf-8", b"<p>"
        rnd = random.Random(seed)
        head = (f"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: long text {seed}\r\n"
                f"Message-ID: <bench-{seed}-{time.time_ns()}@example.com>\r\n"
                f"Content-Type: {ctype}\r\n\r\n").encode()
        if SHAPE == "html-unclosed":
            head += b"<!-- never closed\r\n"
        line = tag + b" ".join(rnd.choice(words) for _ in range(12)) + b"\r\n"
        body = line * ((size - len(head)) // len(line))
        raw = head + body
        return raw + b"x" * (size - len(raw) - 2) + b"\r\n" if size - len(raw) >= 2 else raw
    head = (
        f"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\nSubject: big attachment {seed}\r\n"
        f"Message-ID: <bench-{seed}-{time.time_ns()}@example.com>\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b0undary"\r\n\r\n'
        "--b0undary\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nThe report is attached.\r\n"
        '--b0undary\r\nContent-Type: application/pdf; name="report.pdf"\r\n'
        'Content-Disposition: attachment; filename="report.pdf"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
    ).encode()
    tail = b"\r\n--b0undary--\r\n"
    lines = (size - len(head) - len(tail)) // 78  # 76 base64 characters + CRLF
    binary = random.Random(seed).randbytes(lines * 57)
    encoded = base64.encodebytes(binary).replace(b"\n", b"\r\n")
    body = head + encoded.rstrip(b"\r\n") + tail
    pad = size - len(body)  # < 78 + 9: a header field of that length makes the size exact
    return b"X-Pad: " + b"p" * (pad - 9) + b"\r\n" + body if pad >= 9 else body


def status(pid: int, key: str) -> int:
    """A /proc/PID/status figure in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(t) for t in text)
    return found


def relay_of(serve: int) -> int:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in children(serve):
            cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"relay" in cmd:
                return child
        time.sleep(0.1)
    raise RuntimeError("no relay child found")


def queue_empty(state: Path) -> bool:
    db = state / "index.sqlite3"
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            return conn.execute("SELECT count(*) FROM deliveries").fetchone()[0] == 0
    except sqlite3.Error:
        return False


def policy(directory: Path, port: int, sink: int, state: Path) -> None:
    (directory / "tenants").mkdir(parents=True)
    (directory / "gateway.yaml").write_text(
        "hostname: mx.bench.test\n"
        f"listeners: {{inbound: {{address: {LH}, port: {port}}}}}\n"
        f"limits: {{max_message_size: {SIZE + 1_000_000}, max_connections_per_ip: 100}}\n"
        f"storage: {{path: {state}}}\n"
        "archive: {enabled: true}\n"
        "rules: [content]\n"
    )
    (directory / "rules").mkdir()
    (directory / "rules" / "content.yaml").write_text(  # body keywords and a regex: what a policy matches
        "name: content\nrules:\n"
        "  - {id: words, when: {body: {contains: [gift card, wire transfer, bitcoin]}}, then: {score: 2}}\n"
        "  - {id: pattern, when: {body: {regex: '(?i)password\\s+reset'}}, then: {score: 2}}\n"
    )
    (directory / "tenants" / "bench.yaml").write_text(
        "name: bench\ndomains: [example.net]\n"
        f"routes: [{{host: {LH}, port: {sink}, priority: 10, tls: none}}]\n"
    )


def send(port: int, raw: bytes, errors: list[str]) -> None:
    try:
        with smtplib.SMTP(LH, port, local_hostname="client.bench.test", timeout=600) as smtp:
            smtp.sendmail("alice@example.com", ["bob@example.net"], raw)
    except Exception as exc:  # reported, and the figures of that run flagged
        errors.append(repr(exc))


def phase(port: int, serve: int, relay: int, state: Path, msgs: list[bytes]) -> dict[str, float]:
    """Peak growth over idle of serve and relay while `msgs` are sent at once and delivered (the
    processes are fresh: memory a previous phase freed but kept would hide this one's growth)."""
    warm: list[str] = []  # one small message first: modules imported and pools made on first use are not per message
    send(port, message(20_000, 99), warm)
    while not queue_empty(state):
        time.sleep(0.1)
    time.sleep(1.0)
    idle = {"serve": status(serve, "VmRSS"), "relay": status(relay, "VmRSS")}
    for pid in (serve, relay):
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)
    errors: list[str] = []
    threads = [threading.Thread(target=send, args=(port, raw, errors)) for raw in msgs]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    accepted = time.monotonic() - started
    deadline = time.monotonic() + 600
    while not queue_empty(state) and time.monotonic() < deadline:
        time.sleep(0.2)
    delivered = time.monotonic() - started
    peak = {"serve": status(serve, "VmHWM"), "relay": status(relay, "VmHWM")}
    out: dict[str, float] = {"accepted_s": accepted, "delivered_s": delivered, "errors": float(len(errors))}
    for name in ("serve", "relay"):
        out[f"{name}_idle_mb"] = idle[name] / 1e6
        out[f"{name}_peak_mb"] = peak[name] / 1e6
        out[f"{name}_per_msg_x"] = (peak[name] - idle[name]) / len(msgs) / SIZE
    if errors:
        print("#  send errors:", errors[:3], file=sys.stderr)
    return out


def measure(repo: Path, label: str, count: int) -> dict[str, float]:
    """One phase of `count` messages against a fresh serve (and relay, and sink) of `repo`."""
    py = repo / ".venv" / "bin" / "python"
    python = str(py) if py.exists() else sys.executable
    work = Path(tempfile.mkdtemp(prefix=f"liveprism-mem-{label}-"))
    port, sink_port = free_port(), free_port()
    state = work / "state"
    policy(work / "policy", port, sink_port, state)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        sink = subprocess.Popen(["smtp-sink", "-u", "nobody", "-c", f"{LH}:{sink_port}", "1000"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(sink)
        wait_port(sink_port)
        with open(work / "serve.log", "wb") as log:
            serve = subprocess.Popen([python, "-m", "engine", "serve", str(work / "policy"), "--state", str(state)],
                                     cwd=repo, stdout=log, stderr=log)
        procs.append(serve)
        wait_port(port)
        relay = relay_of(serve.pid)
        return phase(port, serve.pid, relay, state, [message(SIZE, seed) for seed in range(count)])
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    checkouts = [(Path(BASE), "baseline")] if BASE else []
    checkouts.append((TREE, "current"))
    print(f"# {SIZE:,} byte messages (SHAPE={SHAPE}); serve + relay child + smtp-sink; "
          f"peak RSS growth over idle per message in flight, x message size")
    table: dict[str, dict[int, dict[str, float]]] = {}
    for repo, label in checkouts:
        table[label] = {}
        for count in (1, CONCURRENT):
            table[label][count] = row = measure(repo, label, count)
            print(f"{label:8} in_flight={count} serve_per_msg={row['serve_per_msg_x']:.2f}x "
                  f"relay_per_msg={row['relay_per_msg_x']:.2f}x "
                  f"serve_peak_mb={row['serve_peak_mb']:.0f} (idle {row['serve_idle_mb']:.0f}) "
                  f"relay_peak_mb={row['relay_peak_mb']:.0f} (idle {row['relay_idle_mb']:.0f}) "
                  f"accepted_s={row['accepted_s']:.1f} delivered_s={row['delivered_s']:.1f}"
                  + (f" ERRORS={row['errors']:.0f}" if row["errors"] else ""), flush=True)
    if "baseline" in table:
        for count in table["current"]:
            b, c = table["baseline"][count], table["current"][count]
            print(f"ratio    in_flight={count} serve={c['serve_per_msg_x'] / b['serve_per_msg_x']:.2f} "
                  f"relay={c['relay_per_msg_x'] / b['relay_per_msg_x']:.2f} (current / baseline, lower is better)")


if __name__ == "__main__":
    main()
