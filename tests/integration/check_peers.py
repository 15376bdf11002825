"""Real peers for the check tests: Debian's nsd (authoritative DNS), clamd, and a DNS server that
never answers. Each listens on 127.0.0.1 on a free port, is started by the test and stopped by PID.
"""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.conftest import LOCALHOST, free_port, stop, wait_port

# The EICAR test file (https://www.eicar.org/download-anti-malware-testfile/), split so that this
# source file itself is not a detection.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


@dataclass(frozen=True)
class Key:
    pem: bytes
    record: str  # the TXT record text, split in 255-byte strings for the zone file


def make_key() -> Key:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    text = "v=DKIM1; k=rsa; p=" + base64.b64encode(public).decode()
    return Key(pem, " ".join(f'"{text[i:i + 250]}"' for i in range(0, len(text), 250)))


def eicar_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("readme.com", EICAR)
    return buffer.getvalue()


@dataclass
class Nsd:
    """nsd serving `zones` (zone name -> records in zone-file syntax, relative to the origin)."""

    workdir: Path
    zones: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Nsd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = [
            "server:",
            f"  ip-address: {LOCALHOST}",
            f"  port: {self.port}",
            f'  zonesdir: "{self.workdir}"',
            f'  pidfile: "{self.workdir / "nsd.pid"}"',
            '  username: ""',
            f'  zonelistfile: "{self.workdir / "zone.list"}"',
            f'  xfrdfile: "{self.workdir / "xfrd.state"}"',
            f'  logfile: "{self.workdir / "nsd.log"}"',
            '  database: ""',
            "  server-count: 1",
            "remote-control:",
            "  control-enable: no",
        ]
        for zone, records in self.zones.items():
            (self.workdir / f"{zone}.zone").write_text(
                f"$ORIGIN {zone}.\n$TTL 60\n"
                f"@ IN SOA ns.{zone}. hostmaster.{zone}. 1 3600 600 86400 60\n"
                f"@ IN NS ns.{zone}.\nns IN A 127.0.0.1\n{records}\n"
            )
            conf += ["zone:", f"  name: {zone}", f"  zonefile: {zone}.zone"]
        (self.workdir / "nsd.conf").write_text("\n".join(conf) + "\n")
        check = subprocess.run(["nsd-checkconf", str(self.workdir / "nsd.conf")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.proc = subprocess.Popen(["nsd", "-c", str(self.workdir / "nsd.conf"), "-d"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self._wait_answering(next(iter(self.zones)))
        return self

    def _wait_answering(self, zone: str) -> None:
        import dns.exception
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers, resolver.port, resolver.lifetime = [LOCALHOST], self.port, 0.5
        deadline = time.monotonic() + 20
        while True:
            assert self.proc is not None and self.proc.poll() is None, (self.workdir / "nsd.log").read_text()
            try:
                resolver.resolve(zone, "SOA")
                return
            except dns.exception.DNSException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def gateway_settings(self, timeout: float = 2.0) -> str:
        return f"dns: {{nameservers: [{LOCALHOST}], port: {self.port}, timeout: {timeout}}}"

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@dataclass
class SilentDns:
    """A UDP+TCP port that reads DNS questions and never answers (a dead resolver)."""

    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SilentDns:
        code = (
            "import socket, threading, time\n"
            f"u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(('{LOCALHOST}', {self.port}))\n"
            f"t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"t.bind(('{LOCALHOST}', {self.port})); t.listen(64)\n"
            "held = []\n"
            "threading.Thread(target=lambda: [held.append(t.accept()) for _ in iter(int, 1)], daemon=True).start()\n"
            "while True: u.recv(4096)\n"
        )
        self.proc = subprocess.Popen([sys.executable, "-c", code])
        wait_port(self.port, proc=self.proc)
        return self

    def gateway_settings(self, timeout: float = 1.0) -> str:
        return f"dns: {{nameservers: [{LOCALHOST}], port: {self.port}, timeout: {timeout}}}"

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


@dataclass
class Clamd:
    """Debian's clamd with a one-signature database built here from the EICAR string (no download)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    stream_max: str = "1M"
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"tcp://{LOCALHOST}:{self.port}"

    def start(self) -> Clamd:
        database = self.workdir / "db"
        database.mkdir(parents=True, exist_ok=True)
        sample = self.workdir / "eicar.com"
        sample.write_bytes(EICAR)
        signature = subprocess.run(["sigtool", "--md5", str(sample)], capture_output=True, check=True)
        (database / "test.hdb").write_bytes(signature.stdout)
        config = self.workdir / "clamd.conf"
        config.write_text(
            f"Foreground yes\nDatabaseDirectory {database}\nTCPSocket {self.port}\nTCPAddr {LOCALHOST}\n"
            f"LogFile {self.workdir / 'clamd.log'}\nPidFile {self.workdir / 'clamd.pid'}\n"
            f"StreamMaxLength {self.stream_max}\nSelfCheck 3600\n"
        )
        self.proc = subprocess.Popen(["clamd", "--foreground", f"--config-file={config}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_port(self.port, timeout=60, proc=self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


def port_closed(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex((LOCALHOST, port)) != 0
