"""kill -9 of `liveprism serve` in the middle of a burst: nothing that got 250 is lost.

Ten client threads send 1,000 distinct messages and retry a message until it gets 250, as an
MTA would. After 300 acknowledgements the gateway is killed with SIGKILL and restarted on the
same state dir while the burst goes on. Every acknowledged message must reach the sink;
duplicates (committed, but the 250 never reached the client, so it retried) are counted and
reported, never treated as loss.
"""

from __future__ import annotations

import re
import signal
import smtplib
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.support.gateway import start_gateway
from tests.support.messages import message
from tests.support.peers import start_sink
from tests.support.policies import acme_to
from tests.support.processes import LOCALHOST, wait_for

BURST = 1000
KILL_AFTER = 300
SENDERS = 10


def numbered_message(index: int) -> bytes:
    return message(f"message number {index}\r\n", raw=True, sender="burst@example.com", subject=f"burst {index}",
                   date=None, message_id=f"<burst-{index}@example.com>", content_type=None)


def test_kill_9_during_burst_loses_nothing_acknowledged(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    port = gateway.port

    acked: set[int] = set()
    failures = Counter[str]()
    lock = threading.Lock()
    kill_now = threading.Event()
    restarted = threading.Event()
    work = iter(range(BURST))

    def sender() -> None:
        while True:
            with lock:
                index = next(work, None)
            if index is None:
                return
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    with smtplib.SMTP(LOCALHOST, port, timeout=30) as client:
                        client.sendmail("burst@example.com", ["bob@acme.example"], numbered_message(index))
                    with lock:
                        acked.add(index)
                        if len(acked) >= KILL_AFTER:
                            kill_now.set()
                    break
                except (OSError, smtplib.SMTPException) as exc:
                    with lock:
                        failures[type(exc).__name__] += 1
                    time.sleep(0.05)  # not acknowledged: the client keeps it and retries

    def killer() -> None:
        kill_now.wait(120)
        gateway.stop(signal.SIGKILL)
        gateway.start()  # same state dir: recovery, then delivery of everything acknowledged
        restarted.set()

    threads = [threading.Thread(target=sender) for _ in range(SENDERS)] + [threading.Thread(target=killer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert restarted.is_set(), "the gateway was never killed"

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
    print(f"\nburst: acked={len(acked)}/{BURST} delivered={len(counts)} lost={len(lost)} "
          f"duplicates={duplicates} client_errors={dict(failures)}")
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:10]}"
    assert len(acked) == BURST
