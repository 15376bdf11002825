"""Continuous SMTP load from its own process, for the reload-under-load test (not a test module).

    python tests/e2e/smtp_load.py PORT RCPT STOP_FILE OUT_FILE [THREADS]

Each thread sends one message per SMTP session, back to back, until STOP_FILE exists; every
message has a unique `Subject: probe N`. OUT_FILE gets JSON: the subjects accepted with 250 and
every failure (exception or non-250 reply), so the test can prove that none failed or got lost.
"""

from __future__ import annotations

import itertools
import json
import smtplib
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    port, rcpt, stop_file, out_file = int(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 4
    serial = itertools.count()
    lock = threading.Lock()
    accepted: list[str] = []
    failed: list[str] = []

    def run() -> None:
        while not stop_file.exists():
            subject = f"probe {next(serial)}"
            body = (f"From: alice@example.com\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
                    f"Message-ID: <{subject.replace(' ', '-')}@load.test>\r\n\r\nreload probe\r\n")
            try:
                with smtplib.SMTP("127.0.0.1", port, local_hostname="load.test.example", timeout=60) as smtp:
                    smtp.sendmail("alice@example.com", [rcpt], body.encode())
                with lock:
                    accepted.append(subject)
            except Exception as exc:  # any refusal or broken session is a failed transaction
                with lock:
                    failed.append(f"{subject}: {exc!r}")
                time.sleep(0.05)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    out_file.write_text(json.dumps({"accepted": accepted, "failed": failed}))


if __name__ == "__main__":
    main()
