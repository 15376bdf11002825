"""Benchmark of hot reload on a large policy: time from writing one changed file to the first
SMTP transaction decided by it, against a running `liveprism serve` (not a test).

Usage (from the repository root):  python bench/reload.py [--rules 10000] [--repeats 3]

The policy is bench/graph.py's (RULES content rules in one file, 100,000 list entries in three
lists) plus a small rule file `rules/probe.yaml`. For each scenario the script writes one file
(atomically: temporary file + rename), then sends probe transactions back to back until one is
answered 550 by the rule or list entry the write added, and reports the time from the write to
that reply:
  small-rule-file  rules/probe.yaml gets a rule rejecting the probe's Subject;
  list-file        lists/acme-block.yaml (40,000 entries) gets the probe's sender as its first
                   entry (every entry after it moves one line down);
  big-rule-file    rules/bench-content.yaml (all RULES rules) gets a rule rejecting the probe at
                   its end;
  big-rule-edit    the same file with its middle rule rewritten into one rejecting the probe
                   (the rules after it may move to other lines).
Baseline, same run, same box: a cold `load_graph` of the policy (what every reload cost before
the incremental path). Reported: each scenario's median and its ratio to the baseline; also the
cold load of the reload path (`IncrementalLoader.load_graph`, what `serve` does at start), and
each scenario's reload CPU seconds measured in this process (same writes, no gateway): on a busy
machine wall-clock times stretch with the load, CPU seconds much less.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from graph import write_policy

from engine.graph.build.compiler import load_graph
from engine.graph.build.incremental import IncrementalLoader

PROBE_RULES = (
    "name: probe\nrules:\n  - id: probe-{n}\n    when: {{header: {{name: Subject, regex: '^probe-{n}$'}}}}\n"
    "    then: {{action: reject}}\n"
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def probe_code(port: int, n: int) -> int:
    with smtplib.SMTP("127.0.0.1", port, local_hostname="probe.bench.test", timeout=60) as smtp:
        smtp.ehlo()
        smtp.mail(f"probe-{n}@probe.example")
        code, _ = smtp.rcpt("bob@acme.example")
        if code != 250:
            return code
        code, _ = smtp.data(f"From: probe-{n}@probe.example\r\nSubject: probe-{n}\r\n\r\nmeeting\r\n".encode())
        return code


def time_to_decision(port: int, n: int, write: Callable[[], None], timeout: float = 120.0) -> float:
    """Seconds from the end of `write()` to the first probe answered 550."""
    write()
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if probe_code(port, n) == 550:
            return time.perf_counter() - start
    raise TimeoutError(f"probe {n} never rejected")


def edit_middle_rule(text: str, n: int) -> str:
    """`text` (the big rule file) with its middle rule rewritten to reject the probe (same id)."""
    head, sep, tail = text.partition(f"\n  - id: bench-rule-{text.count(chr(10) + '  - id: ') // 2}\n")
    _, _, rest = tail.partition("\n  - id: ")
    probe = PROBE_RULES.format(n=n).split("\n    when: ", 1)[1]
    rule_id = sep.strip().removeprefix("- id: ")
    return f"{head}\n  - id: {rule_id}\n    when: {probe.rstrip()}\n  - id: {rest}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="liveprism-reload-bench-"))
    root = work / "policy"
    write_policy(root, args.rules)
    port = free_port()
    gateway = root / "gateway.yaml"
    gateway.write_text(
        gateway.read_text().replace("rules: [bench-content]", "rules: [bench-content, probe]")
        + f"listeners: {{inbound: {{address: 127.0.0.1, port: {port}}}}}\n"
        + "limits: {max_connections_per_ip: 1000}\n"
    )
    tenant = root / "tenants" / "acme.yaml"
    tenant.write_text(tenant.read_text().replace("mail.acme.internal, port: 25", "127.0.0.1, port: 9"))
    write_atomically(root / "rules" / "probe.yaml", PROBE_RULES.format(n=0))

    cold, cpu = [], []
    for _ in range(max(1, args.repeats)):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = load_graph(root)
        cold.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        assert result.graph is not None, result.problems[:3]
    baseline = min(cold)
    print(f"python {sys.version.split()[0]}; {args.rules:,} rules, 100,000 list entries; "
          f"baseline cold load_graph: {baseline:.2f} s (best of {len(cold)}; CPU {min(cpu):.2f} s)")
    start, start_cpu = time.perf_counter(), time.process_time()
    incremental, _ = IncrementalLoader().load_graph(root)
    assert incremental.graph is not None
    print(f"cold IncrementalLoader.load_graph (serve start): {time.perf_counter() - start:.2f} s"
          f" (CPU {time.process_time() - start_cpu:.2f} s)")

    log = open(work / "gateway.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "engine", "serve", str(root), "--state", str(work / "state")],
                            cwd=Path(__file__).resolve().parent.parent, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"gateway did not start; see {work / 'gateway.log'}") from None
                time.sleep(0.2)
        time.sleep(2)  # the watcher's first pass
        block = root / "lists" / "acme-block.yaml"
        big = root / "rules" / "bench-content.yaml"
        big_text, block_text = big.read_text(), block.read_text()
        scenarios: dict[str, Callable[[int], Callable[[], None]]] = {
            "small-rule-file": lambda n: lambda: write_atomically(root / "rules" / "probe.yaml",
                                                                   PROBE_RULES.format(n=n)),
            "list-file": lambda n: lambda: write_atomically(
                block, block_text.replace("senders:\n", f"senders:\n  - probe-{n}@probe.example\n", 1)),
            "big-rule-file": lambda n: lambda: write_atomically(
                big, big_text + PROBE_RULES.format(n=n).split("rules:\n", 1)[1].replace("probe-", "big-probe-", 1)),
            "big-rule-edit": lambda n: lambda: write_atomically(big, edit_middle_rule(big_text, n)),
        }
        serial = 100
        print(f"{'scenario':<16} {'median s':>8} {'runs':>24} {'vs baseline':>11}")
        for name, make in scenarios.items():
            times = []
            for _ in range(max(1, args.repeats)):
                serial += 1
                times.append(time_to_decision(port, serial, make(serial)))
            median = statistics.median(times)
            runs = " ".join(f"{t:.2f}" for t in times)
            print(f"{name:<16} {median:>8.2f} {runs:>24} {median / baseline:>10.2f}x")
        # The same writes, reloaded in this process: CPU seconds of load + validate + compile (what
        # the gateway's reload costs, without the scheduling delays of a shared box).
        loader = IncrementalLoader()
        loader.load_graph(root)
        print(f"{'scenario':<16} {'reload CPU s (in process, median)':>34}")
        for name, make in scenarios.items():
            cpu_times = []
            for _ in range(max(1, args.repeats)):
                serial += 1
                make(serial)()
                start_cpu = time.process_time()
                done, _ = loader.load_graph(root)
                cpu_times.append(time.process_time() - start_cpu)
                assert done.graph is not None
            print(f"{name:<16} {statistics.median(cpu_times):>34.3f}")
        reloads = [line for line in (work / "gateway.log").read_text().splitlines() if "policy reloaded" in line]
        print("# gateway reload log lines (files parsed, seconds):")
        for line in reloads[-args.repeats * len(scenarios):]:
            print("#  ", line.split("INFO ", 1)[-1][:160])
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
