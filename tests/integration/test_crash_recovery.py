"""kill -9 of `liveprism serve` in the middle of a burst: nothing that got 250 is lost."""

from __future__ import annotations

import re
import signal
import smtplib
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from tests.integration.conftest import LOCALHOST, Gateway, Sink, free_port, route, wait_for, write_policy

BURST = 1000
KILL_AFTER = 300
SENDERS = 10


def message(index: int) -> bytes:
    return (
        f"From: burst@example.com\r\nTo: bob@acme.example\r\nSubject: burst {index}\r\n"
        f"Message-ID: <burst-{index}@example.com>\r\n\r\nmessage number {index}\r\n"
    ).encode()


def test_kill_9_during_burst_loses_nothing_acknowledged(tmp_path: Path, procs: list[Any]) -> None:
    box = Sink(free_port(), tmp_path / "maildir").start()
    procs.append(box)
    port = free_port()
    policy = write_policy(tmp_path / "policy", port=port,
                          tenants={"acme": {"domains": ["acme.example"], "routes": [route(box.port)]}})
    gateway = Gateway(policy, tmp_path / "state", port).start()
    procs.append(gateway)

    acked: set[int] = set()
    lock = threading.Lock()
    killed = threading.Event()
    work = iter(range(BURST))

    def sender() -> None:
        while True:
            with lock:
                index = next(work, None)
            if index is None:
                return
            try:
                with smtplib.SMTP(LOCALHOST, port, timeout=30) as client:
                    client.sendmail("burst@example.com", ["bob@acme.example"], message(index))
                with lock:
                    acked.add(index)
                    if len(acked) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        gateway.stop(signal.SIGKILL)
            except (OSError, smtplib.SMTPException):
                pass  # not acknowledged: the client keeps responsibility

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert killed.is_set()
    gateway.start()  # same state dir: recovery, then delivery of everything acknowledged

    def delivered() -> Counter[int]:
        ids = Counter[int]()
        for raw in box.messages():
            found = re.search(rb"Message-ID: <burst-(\d+)@example.com>", raw)
            if found:
                ids[int(found.group(1))] += 1
        return ids

    wait_for(lambda: acked <= set(delivered()), timeout=120, interval=0.5)
    counts = delivered()
    lost = acked - set(counts)
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    print(f"\nburst: acked={len(acked)} delivered={len(counts)} lost={len(lost)} duplicates={duplicates}")
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:10]}"
    assert len(acked) >= KILL_AFTER
