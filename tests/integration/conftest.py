"""End-to-end harness: real `liveprism serve` / `liveprism sink` processes, Postfix's smtp-sink and
swaks, all on 127.0.0.1, each started by the test and stopped by PID.

A test builds a policy with `write_policy(...)` (tenants whose routes point at ports the test
chose), starts the gateway with `Gateway.start(...)` and talks SMTP to it with swaks or smtplib.
"""

from __future__ import annotations

import mailbox
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.nsd import Nsd

REPO = Path(__file__).resolve().parents[2]
LOCALHOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
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


def wait_for(predicate: object, timeout: float = 20.0, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(interval)
    return bool(predicate())  # type: ignore[operator]


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def liveprism(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


@dataclass
class Sink:
    """`liveprism sink`: a real SMTP server writing Maildir (a tenant's mail server)."""

    port: int
    maildir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Sink:
        log = open(self.maildir.parent / f"sink-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            liveprism("sink", "--listen", f"{LOCALHOST}:{self.port}", "--maildir", str(self.maildir)),
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def messages(self) -> list[bytes]:
        if not self.maildir.exists():
            return []
        box = mailbox.Maildir(self.maildir, create=False)
        return [box.get_bytes(key) for key in sorted(box.keys())]


@dataclass
class Dnsmasq:
    """Debian's dnsmasq on 127.0.0.1: a real DNS server answering for the test's domains only.

    `mx` maps a domain to (exchange, address): the domain gets an MX record (preference 10)
    naming the exchange, the exchange an A record. Other names under those domains are NXDOMAIN.
    """

    workdir: Path
    mx: dict[str, tuple[str, str]]
    port: int = field(default_factory=lambda: free_port())
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Dnsmasq:
        args = [
            "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
            f"--port={self.port}", f"--listen-address={LOCALHOST}", "--bind-interfaces",
            f"--pid-file={self.workdir / 'dnsmasq.pid'}", "--log-facility=-",
        ]
        for domain, (exchange, address) in self.mx.items():
            args += [f"--mx-host={domain},{exchange},10", f"--host-record={exchange},{address}", f"--local=/{domain}/"]
        log = open(self.workdir / f"dnsmasq-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        self._wait_answering(next(iter(self.mx)))
        return self

    def _wait_answering(self, domain: str) -> None:
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = [LOCALHOST], self.port, 0.5
        deadline = time.monotonic() + 20
        while True:
            assert self.proc is not None and self.proc.poll() is None, "dnsmasq exited"
            try:
                resolver.resolve(domain, "MX")
                return
            except dns.exception.DNSException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def gateway_settings(self) -> str:
        """The gateway.yaml lines that make the gateway ask this server."""
        return f"dns: {{nameservers: [{LOCALHOST}], port: {self.port}, timeout: 2}}"

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@dataclass
class Gateway:
    """A real `liveprism serve` process on a policy dir written by the test."""

    policy: Path
    state: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)
    args: tuple[str, ...] = ()  # more `serve` options (e.g. --workers 2)

    def start(self) -> Gateway:
        self.log_path = self.state.parent / "gateway.log"
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            liveprism("serve", str(self.policy), "--state", str(self.state), *self.args),
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )
        wait_port(self.port, proc=self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)

    def restart_with(self, old: str, new: str) -> None:
        """Replace `old` by `new` in gateway.yaml (it must be there) and restart the gateway."""
        path = self.policy / "gateway.yaml"
        text = path.read_text()
        assert old in text, f"{old!r} not in gateway.yaml"
        path.write_text(text.replace(old, new))
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(liveprism(*args), cwd=REPO, capture_output=True, text=True, timeout=60)


def write_policy(
    root: Path,
    *,
    port: int,
    tenants: dict[str, dict[str, object]],
    extra_gateway: str = "",
    lists: dict[str, str] | None = None,
    mx_port: int = 25,
    private_next_hops: str = "allow",
    delivery_extra: str = "",
) -> Path:
    """A policy dir: the example rule sets, the given tenants (YAML-able dicts) and lists. The lab's
    mail exchangers are on 127.0.0.1, so DSNs may go to internal next hops unless the test says
    `private_next_hops="refuse"` (the gateway's default)."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    (root / "tenants").mkdir(exist_ok=True)
    (root / "lists").mkdir(exist_ok=True)
    shutil.copytree(REPO / "policies" / "rules", root / "rules", dirs_exist_ok=True)
    gateway = f"""
hostname: mxpath.test.example
listeners:
  inbound: {{address: 127.0.0.1, port: {port}}}
limits: {{max_message_size: 200000, max_recipients: 50, max_connections: 200, max_connections_per_ip: 100,
          command_timeout: 60}}
delivery: {{retry_initial: 1, retry_max: 2, give_up_after: 3600, connect_timeout: 2, mx_port: {mx_port},
           private_next_hops: {private_next_hops}{", " + delivery_extra if delivery_extra else ""}}}
scoring: {{tag_at: 3.0, quarantine_at: 6.0, reject_at: 15.0, subject_prefix: "[SPAM] "}}
lists: [{", ".join(name for name in (lists or {}) if name.startswith("global"))}]
rules: [global-content]
{extra_gateway}
"""
    (root / "gateway.yaml").write_text(gateway)
    for name, tenant in tenants.items():
        (root / "tenants" / f"{name}.yaml").write_text(json.dumps({"name": name, **tenant}))
    for name, text in (lists or {}).items():
        (root / "lists" / f"{name}.yaml").write_text(text)
    subprocess.run(["git", "init", "-q", str(root)], check=False)
    return root


def route(port: int, priority: int = 10) -> dict[str, object]:
    return {"host": LOCALHOST, "port": port, "priority": priority, "tls": "opportunistic"}


def swaks(port: int, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run Debian's swaks against the gateway; returns the transcript."""
    return subprocess.run(
        ["swaks", "--server", f"{LOCALHOST}:{port}", "--helo", "client.test.example", *args],
        capture_output=True, text=True, timeout=timeout,
    )


@pytest.fixture
def ports() -> Iterator[object]:
    yield free_port


@pytest.fixture
def procs() -> Iterator[list[object]]:
    """Everything appended here is stopped (by PID) at teardown."""
    started: list[object] = []
    yield started
    for item in reversed(started):
        item.stop()  # type: ignore[attr-defined]


@pytest.fixture
def nsd(tmp_path: Path) -> Iterator[Nsd]:
    """A real nsd on 127.0.0.1 (tests/integration/nsd.py): `port = nsd.start({origin: zone_text})`,
    `nsd.reload(zones)`; stopped by PID at teardown."""
    server = Nsd(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
