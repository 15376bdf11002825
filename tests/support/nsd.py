"""A real authoritative DNS server for tests: NLnet Labs' `nsd` on 127.0.0.1, one free port.

    server = Nsd(tmp_path)
    port = server.start({"zone.example": zone_text})   # zone texts: whole zone files, SOA included
    server.reload({"zone.example": changed_text})       # serves the new texts (restart, same port)
    server.stop()                                       # by PID; safe to call twice

`zone_file(origin, body)` wraps records (a `liveprism dns` snippet, say) in a throwaway zone
with SOA and NS, `zone_files({origin: body})` does it for several, `txt(text)` quotes a TXT
value; `resolver_for(port)` and `dns_settings(port)` ask the server. Everything nsd writes
(config, zones, pid, log) lives under `workdir/nsd`; it runs in the foreground (`nsd -d`) as
the current user, without chroot, database or control socket. `start` returns once every zone
answers its SOA over UDP.

`nsd_fixture(zones, scope=...)` makes the pytest fixture of a module: an `Nsd` serving `zones`
(or, without zones, not started: the test calls `start`), stopped at teardown. tests/e2e/conftest.py
defines `nsd` with it; a module serving fixed zones defines its own `nsd` the same way.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from engine.dns.resolver import Resolver
from engine.policy.models import DnsSettings
from tests.support.processes import LOCALHOST, free_port

Zones = Mapping[str, str]


def zone_file(origin: str, body: str, serial: int = 1, ttl: int = 300) -> str:
    """A complete zone: `$ORIGIN`, `$TTL`, SOA, NS (ns1 in the zone, at 127.0.0.1), then `body`."""
    origin = origin.rstrip(".")
    return (
        f"$ORIGIN {origin}.\n$TTL {ttl}\n"
        f"@ IN SOA ns1.{origin}. hostmaster.{origin}. {serial} 3600 600 86400 60\n"
        f"@ IN NS ns1.{origin}.\nns1 IN A {LOCALHOST}\n"
        f"{body}\n$ORIGIN {origin}.\n"
    )


def zone_files(records: Zones) -> dict[str, str]:
    """`zone_file` of each origin -> records."""
    return {origin: zone_file(origin, body) for origin, body in records.items()}


def txt(text: str) -> str:
    """A TXT rdata: the text split into quoted character-strings of at most 200 octets."""
    return " ".join('"' + text[i:i + 200].replace('"', '\\"') + '"' for i in range(0, len(text), 200)) or '""'


class Nsd:
    """One nsd process serving the zones given to `start`/`reload` (see the module docstring)."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir / "nsd"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, zones: Zones) -> int:
        """Write the config and zone files, start nsd, wait until it answers; return the port."""
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("nsd is already running: use reload()")
        self._write(zones)
        log = open(self.workdir / "nsd.out", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(["nsd", "-d", "-c", str(self.workdir / "nsd.conf")],
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_answering([origin.rstrip(".") for origin in zones])
        return self.port

    def reload(self, zones: Zones) -> None:
        """Serve these zone texts instead (nsd restarted on the same port)."""
        self.stop()
        self.start(zones)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def gateway_settings(self, timeout: float = 2.0) -> str:
        """The gateway.yaml line that makes the gateway ask this server."""
        return f"dns: {{nameservers: [{LOCALHOST}], port: {self.port}, timeout: {timeout}}}"

    def log(self) -> str:
        """What nsd logged (for assertion messages)."""
        parts = [p.read_text(errors="replace") for p in (self.workdir / "nsd.log", self.workdir / "nsd.out")
                 if p.exists()]
        return "\n".join(parts)

    def _write(self, zones: Zones) -> None:
        work = self.workdir
        for old in work.glob("*.zone"):
            old.unlink()
        config = [
            "server:",
            f"  ip-address: {LOCALHOST}",
            f"  port: {self.port}",
            "  do-ip6: no",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{work}"',
            f'  pidfile: "{work}/nsd.pid"',
            '  database: ""',
            f'  zonelistfile: "{work}/zone.list"',
            f'  xfrdfile: "{work}/xfrd.state"',
            f'  xfrdir: "{work}"',
            f'  logfile: "{work}/nsd.log"',
            "  server-count: 1",
            "  verbosity: 1",
            "  hide-version: yes",
            "remote-control:",
            "  control-enable: no",
        ]
        for origin, text in zones.items():
            name = origin.rstrip(".")
            (work / f"{name}.zone").write_text(text)
            config += ["zone:", f"  name: {name}", f'  zonefile: "{name}.zone"']
        (work / "nsd.conf").write_text("\n".join(config) + "\n")
        (work / "zone.list").unlink(missing_ok=True)  # else nsd remembers zones across restarts

    def _wait_answering(self, origins: list[str], timeout: float = 30.0) -> None:
        import dns.exception
        import dns.message
        import dns.query
        import dns.rcode

        deadline = time.monotonic() + timeout
        pending = list(origins)
        while pending:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"nsd exited:\n{self.log()}")
            query = dns.message.make_query(pending[0], "SOA")
            try:
                response = dns.query.udp(query, LOCALHOST, port=self.port, timeout=0.5)
                if response.rcode() == dns.rcode.NOERROR and response.answer:
                    pending.pop(0)
                    continue
            except (dns.exception.DNSException, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"nsd does not serve {pending[0]}:\n{self.log()}")
            time.sleep(0.05)


def nsd_fixture(zones: Zones | Callable[[pytest.FixtureRequest], Zones] | None = None, *,
                scope: Any = "function") -> Any:
    """A pytest fixture yielding an `Nsd` in a fresh temporary directory: serving `zones` (whole zone
    texts; a callable is given the fixture request, for zones made from other fixtures), or not
    started when there are none. Stopped by PID at teardown."""

    @pytest.fixture(scope=scope)
    def nsd(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nsd]:
        server = Nsd(tmp_path_factory.mktemp("nsd"))
        try:
            if zones is not None:
                server.start(zones(request) if callable(zones) else zones)
            yield server
        finally:
            server.stop()

    return nsd


def dns_settings(port: int, timeout: float = 2.0) -> DnsSettings:
    """The gateway's DNS settings that ask 127.0.0.1:`port` (an `Nsd`, a `SilentDns`)."""
    return DnsSettings.model_validate({"nameservers": [LOCALHOST], "port": port, "timeout": timeout})


def resolver_for(port: int, timeout: float = 2.0) -> Resolver:
    """The serving resolver (engine/dns/resolver.py) asking 127.0.0.1:`port`."""
    return Resolver(dns_settings(port, timeout))
