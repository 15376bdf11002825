"""A real authoritative DNS server for the checks' tests: Debian's `nsd` on 127.0.0.1.

`NsdServer(workdir).start({"zone.test": ZONE_TEXT, ...})` writes the zone files and a config,
runs `nsd -c CONF -d` in the foreground, waits until it answers the SOA of every zone and
returns the port (UDP and TCP); `stop()` ends it by PID. `DropServer` is a UDP socket that
reads every query and never answers, for timeout tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from tests.integration.conftest import LOCALHOST, free_port


class NsdServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, zones: dict[str, str]) -> int:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        zone_config = []
        for name, text in zones.items():
            (self.workdir / f"{name}.zone").write_text(text)
            zone_config.append(f"zone:\n  name: {name}\n  zonefile: {name}.zone\n")
        conf = self.workdir / "nsd.conf"
        conf.write_text(
            "server:\n"
            f"  ip-address: {LOCALHOST}@{self.port}\n"
            f"  port: {self.port}\n"
            f"  zonesdir: {self.workdir}\n"
            f"  pidfile: {self.workdir / 'nsd.pid'}\n"
            '  username: ""\n'
            '  chroot: ""\n'
            '  database: ""\n'
            f"  zonelistfile: {self.workdir / 'zone.list'}\n"
            f"  xfrdfile: {self.workdir / 'xfrd.state'}\n"
            f"  xfrdir: {self.workdir / 'xfr'}\n"
            f"  logfile: {self.workdir / 'nsd.log'}\n"
            "  server-count: 1\n"
            "  verbosity: 1\n"
            "  hide-version: yes\n"
            "remote-control:\n"
            "  control-enable: no\n" + "".join(zone_config)
        )
        self.proc = subprocess.Popen(["nsd", "-c", str(conf), "-d"], stdout=subprocess.DEVNULL,
                                     stderr=open(self.workdir / "nsd.stderr", "wb"))  # noqa: SIM115
        for name in zones:
            self._wait_answering(name)
        return self.port

    def _wait_answering(self, zone: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        query = dns.message.make_query(zone, "SOA")
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.workdir / "nsd.stderr").read_text() + self._log()
                raise RuntimeError(f"nsd exited with {self.proc.returncode}: {log}")
            try:
                reply = dns.query.udp(query, LOCALHOST, port=self.port, timeout=0.3)
                if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                    return
            except (OSError, dns.exception.Timeout):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"nsd does not answer for {zone}: {self._log()}")

    def _log(self) -> str:
        path = self.workdir / "nsd.log"
        return path.read_text() if path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None


class DropServer:
    """A UDP 'DNS server' on 127.0.0.1 that reads every query and never answers."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.port = int(self.sock.getsockname()[1])
        self.received = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> int:
        self._thread.start()
        return self.port

    def _run(self) -> None:
        self.sock.settimeout(0.1)
        while not self._stop.is_set():
            try:
                self.sock.recvfrom(4096)
                self.received += 1
            except TimeoutError:
                continue
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()
