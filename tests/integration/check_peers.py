"""Real peers for the check tests: Debian's nsd (authoritative DNS), clamd, and a DNS server that
never answers. Each listens on 127.0.0.1 on a free port, is started by the test and stopped by PID.
"""

from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.integration.conftest import LOCALHOST, free_port, stop, wait_port
from tests.integration.nsd import Nsd as NsdServer
from tests.integration.nsd import zone_file

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
    """nsd (tests/integration/nsd.py) serving `zones`: zone name -> records, relative to the origin."""

    workdir: Path
    zones: dict[str, str]
    server: NsdServer | None = None

    @property
    def port(self) -> int:
        assert self.server is not None, "start() first"
        return self.server.port

    def start(self) -> Nsd:
        self.server = NsdServer(self.workdir)
        self.server.start({zone: zone_file(zone, records) for zone, records in self.zones.items()})
        return self

    def gateway_settings(self, timeout: float = 2.0) -> str:
        return f"dns: {{nameservers: [{LOCALHOST}], port: {self.port}, timeout: {timeout}}}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()


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
