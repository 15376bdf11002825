"""Outbound listener accept rate against the inbound listener's, in one run of one `serve`.

    .venv/bin/python bench/outbound.py [N] [SESSIONS]     # default 1000 messages, 10 sessions

Starts `liveprism serve` (example rule sets, archive and fsync on) with one tenant whose servers
are 127.0.0.1, and Postfix's smtp-sink as that tenant's route; sends N 2 KB messages with
SESSIONS concurrent smtplib clients to the inbound listener (to the tenant), then N to the
outbound listener (from the tenant to a stranger's domain: anti-spoofing, outbound rules, rate
limit bookkeeping in the store), and prints msgs/s of each and their ratio. Outbound deliveries
stay queued (the stranger's MX is not resolvable): only the accept path is measured. Not a test.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LH = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LH, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int) -> None:
    for _ in range(400):
        try:
            with socket.create_connection((LH, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port}")


def message(sender: str, rcpt: str, n: int) -> bytes:
    body = ("The quarterly figures are attached below for review. " * 36)[:2000]
    return (f"From: {sender}\r\nTo: {rcpt}\r\nSubject: report {n}\r\nMessage-ID: <{n}.{time.time()}@bench>\r\n"
            f"\r\n{body}\r\n").encode()


def blast(port: int, sender: str, rcpt: str, count: int, sessions: int) -> float:
    """msgs/s of `count` messages over `sessions` concurrent connections (each reused)."""
    def worker(share: int) -> int:
        sent = 0
        with smtplib.SMTP(LH, port, local_hostname="bench.client", timeout=60) as client:
            for n in range(share):
                client.sendmail(sender, [rcpt], message(sender, rcpt, n))
                sent += 1
        return sent

    shares = [count // sessions + (1 if i < count % sessions else 0) for i in range(sessions)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(sessions) as pool:
        done = sum(pool.map(worker, shares))
    assert done == count
    return count / (time.perf_counter() - start)


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    sessions = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    work = Path(tempfile.mkdtemp(prefix="liveprism-bench-outbound-"))
    port, out_port, sink_port = free_port(), free_port(), free_port()
    policy = work / "policy"
    (policy / "tenants").mkdir(parents=True)
    shutil.copytree(REPO / "policies" / "rules", policy / "rules")
    (policy / "gateway.yaml").write_text(
        f"hostname: mxpath.bench.example\nlisteners:\n  inbound: {{address: {LH}, port: {port}}}\n"
        f"  outbound: {{address: {LH}, port: {out_port}}}\n"
        "limits: {max_connections_per_ip: 1000}\nrules: [global-content]\n"
        f"dns: {{nameservers: [{LH}], port: {free_port()}, timeout: 0.2}}\n")
    (policy / "tenants" / "bench.yaml").write_text(json.dumps({
        "name": "bench", "domains": ["bench.example"], "routes": [{"host": LH, "port": sink_port, "tls": "none"}],
        "outbound": {"networks": [f"{LH}/32"], "limits": {"per_sender_per_hour": 10 * count}},
    }))
    procs = [subprocess.Popen(["smtp-sink", "-u", "nobody", "-c", f"{LH}:{sink_port}", "1000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    serve = [sys.executable, "-m", "engine", "serve", str(policy), "--state", str(work / "state")]
    procs.append(subprocess.Popen(serve, cwd=REPO, stdout=subprocess.DEVNULL,
                                  stderr=open(work / "serve.log", "wb")))  # noqa: SIM115
    try:
        wait_port(sink_port)
        wait_port(out_port)
        blast(port, "warm@sender.example", "bob@bench.example", 50, 5)  # warm up both paths
        blast(out_port, "warm@bench.example", "friend@stranger.example", 50, 5)
        inbound = blast(port, "alice@sender.example", "bob@bench.example", count, sessions)
        outbound = blast(out_port, "alice@bench.example", "friend@stranger.example", count, sessions)
        print(f"inbound  msgs_per_s={inbound:.0f}")
        print(f"outbound msgs_per_s={outbound:.0f}")
        print(f"outbound/inbound ratio={outbound / inbound:.2f}  (N={count}, sessions={sessions})")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
