"""What every test that starts a process needs: the checkout (`REPO`), a free port on 127.0.0.1,
waiting for a port or a condition, stopping a process by PID, the `liveprism` command line (in a
process of its own, or a command group in this one) and swaks.

The processes themselves are in tests/support/gateway.py (`liveprism serve`) and
tests/support/peers.py (mailboxes, DNS, clamd, TLS and HTTPS servers).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on at the moment (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Return once something accepts TCP connections on `port`; fail early when `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((LOCALHOST, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.1) -> bool:
    """Poll `predicate` until it is true or `timeout` passed; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Send `sig` to `proc` by PID and wait; SIGKILL when it is still there after `timeout`."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def liveprism(*args: str) -> list[str]:
    """The command line of `liveprism ARGS` with this interpreter and this checkout."""
    return [sys.executable, "-m", "engine", *args]


def run_liveprism(*args: str, cwd: Path | None = REPO, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`liveprism ARGS` in a process of its own; its exit code and output (never raises on failure)."""
    return subprocess.run(liveprism(*args), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def swaks(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run Debian's swaks against 127.0.0.1:`port`; returns the transcript."""
    return subprocess.run(
        ["swaks", "--server", f"{LOCALHOST}:{port}", "--helo", "client.test.example", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def invoke(app: Any, *args: str) -> tuple[int, str]:
    """A typer `app` (a `liveprism` command group) run in this process: (exit code, what it printed)."""
    from typer.testing import CliRunner

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output
