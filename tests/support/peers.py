"""Real peers of the gateway in the tests, each on 127.0.0.1 on a free port, started by the test
and stopped by `stop()` (register them in the `procs` fixture, whose teardown runs even when the
test failed):

- `Sink`: `liveprism sink`, a tenant's mail server writing Maildir (`start_sink` starts one in `procs`);
- `SmtpSink`: aiosmtpd in a thread, recording what it got (`Recorder`), STARTTLS when given a context;
- `smtp_sink`: Postfix's smtp-sink with its flags (`refusing_server`: 5xx to DATA);
- `Dnsmasq`: a DNS server answering MX and A records for the test's domains;
- `SilentDns`: a DNS server that reads every question and never answers;
- `Clamd`: Debian's clamd with a one-signature database made from the EICAR string;
- `StsServer`: HTTPS publishing an MTA-STS policy; `LabCa` a throwaway certificate authority,
  `self_signed` a certificate of its own (openssl);
- `opendkim_verify`: OpenDKIM's verifier asking the test's nsd (through `resolver_shim`).

The DNS server of the tests' zones is nsd (tests/support/nsd.py).

OpenDKIM (`opendkim-testmsg`) resolves through glibc's resolver, which takes nameservers from
/etc/resolv.conf and has no way to name a port. `resolver_shim` compiles (gcc) a 20-line
LD_PRELOAD library that wraps `__res_ninit` and points every resolver state at
127.0.0.1:$LIVEPRISM_TEST_DNS_PORT, so the unmodified Debian binary asks the test's own nsd.
"""

from __future__ import annotations

import asyncio
import datetime
import http.server
import mailbox
import os
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support.messages import EICAR
from tests.support.processes import LOCALHOST, REPO, free_port, liveprism, stop, wait_port

# ---------------------------------------------------------------- mailboxes


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


def start_sink(tmp_path: Path, procs: list[Any], name: str = "maildir", port: int | None = None) -> Sink:
    """A started `Sink` writing tmp_path/NAME, registered in `procs`."""
    box = Sink(port or free_port(), tmp_path / name)
    procs.append(box)
    return box.start()


@dataclass
class Received:
    mail_from: str
    rcpts: list[str]
    data: bytes
    tls: bool


@dataclass
class Recorder:
    """aiosmtpd handler that records every message and can refuse recipients or data: `refuse_rcpt`
    is the reply to every RCPT, `rcpt_replies` the reply to some addresses, `data_reply` to DATA."""

    rcpt_replies: dict[str, str] = field(default_factory=dict)
    data_reply: str | None = None
    data_delay: float = 0.0
    refuse_rcpt: str | None = None
    messages: list[Received] = field(default_factory=list)
    connections: int = 0
    disconnections: int = 0

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        reply = self.refuse_rcpt or self.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_delay:
            await asyncio.sleep(self.data_delay)
        if self.data_reply:
            return self.data_reply
        content = envelope.original_content
        assert isinstance(content, bytes)
        self.messages.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos), content,
                                      session.ssl is not None))
        return "250 2.0.0 queued"


class SmtpSink:
    """aiosmtpd in a thread on 127.0.0.1:`port`, offering STARTTLS when given a context."""

    def __init__(self, port: int, tls_context: ssl.SSLContext | None = None, *, refuse_rcpt: str | None = None
                 ) -> None:
        self.port = port
        self._recorder = Recorder(refuse_rcpt=refuse_rcpt)
        options = {"tls_context": tls_context} if tls_context is not None else {}
        self._controller = Controller(self._recorder, hostname=LOCALHOST, port=port, **options)

    @property
    def messages(self) -> list[Received]:
        return self._recorder.messages

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


def smtp_sink(procs: list[Any], *flags: str) -> int:
    """Postfix's smtp-sink with `flags` (`-f data`: 5xx to DATA, `-r rcpt`: 4xx to RCPT, …); its port."""
    port = free_port()
    proc = subprocess.Popen(
        ["smtp-sink", "-u", "nobody", *flags, f"{LOCALHOST}:{port}", "100"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )

    class _Proc:
        def stop(self) -> None:
            proc.terminate()
            proc.wait(10)

    procs.append(_Proc())
    wait_port(port)
    return port


def refusing_server(procs: list[Any]) -> int:
    """A tenant server refusing the message: 5xx to DATA."""
    return smtp_sink(procs, "-f", "data")


# ---------------------------------------------------------------- DNS


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
        """The gateway.yaml line that makes the gateway ask this server."""
        return f"dns: {{nameservers: [{LOCALHOST}], port: {self.port}, timeout: 2}}"

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)


class SilentDns:
    """A DNS server that never answers (a dead resolver), on one port: every UDP question is read
    and counted (`received`), every TCP connection accepted and held open."""

    def __init__(self) -> None:
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((LOCALHOST, 0))
        self.port = int(self._udp.getsockname()[1])
        self._tcp = socket.socket()
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((LOCALHOST, self.port))
        self._tcp.listen(64)
        self.received = 0
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._read, daemon=True),
                         threading.Thread(target=self._hold, daemon=True)]

    def start(self) -> SilentDns:
        for thread in self._threads:
            thread.start()
        return self

    def _read(self) -> None:
        self._udp.settimeout(0.1)
        while not self._stop.is_set():
            try:
                self._udp.recvfrom(4096)
                self.received += 1
            except TimeoutError:
                continue
            except OSError:
                return

    def _hold(self) -> None:
        self._tcp.settimeout(0.1)
        while not self._stop.is_set():
            try:
                self._held.append(self._tcp.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    def gateway_settings(self, timeout: float = 1.0) -> str:
        return f"dns: {{nameservers: [{LOCALHOST}], port: {self.port}, timeout: {timeout}}}"

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=2)
        for sock in (self._udp, self._tcp, *self._held):
            sock.close()


# ---------------------------------------------------------------- anti-virus


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


# ---------------------------------------------------------------- TLS and HTTPS


def self_signed(directory: Path, common_name: str) -> tuple[Path, Path]:
    """A self-signed certificate for `common_name` and its key (openssl, RSA 2048, 2 days): (cert, key)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", f"/CN={common_name}"], check=True, capture_output=True)
    return cert, key


class LabCa:
    """A throwaway certificate authority; `issue` makes server certificates signed by it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LivePrism test CA")])
        now = datetime.datetime.now(datetime.UTC)
        self._cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self._key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = workdir / "ca.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, *names: str) -> ssl.SSLContext:
        """A server context with a certificate for `names` (DNS subjectAltNames) signed by this CA."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(self._cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        stem = self.workdir / names[0]
        stem.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM)
                                             + self._cert.public_bytes(serialization.Encoding.PEM))
        stem.with_suffix(".key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                               serialization.PrivateFormat.PKCS8,
                                                               serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        return context


class StsServer:
    """HTTPS on 127.0.0.1:`port` answering GET /.well-known/mta-sts.txt with `body` (and
    `content_type`, `status`), with the certificate of `tls_context`; counts the requests."""

    def __init__(self, port: int, tls_context: ssl.SSLContext, body: str, *, content_type: str = "text/plain",
                 status: int = 200) -> None:
        self.port, self.body, self.content_type, self.status = port, body, content_type, status
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                found = self.path == "/.well-known/mta-sts.txt"
                payload = outer.body.encode() if found else b"not found"
                self.send_response(outer.status if found else 404)
                self.send_header("Content-Type", outer.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = http.server.ThreadingHTTPServer((LOCALHOST, port), Handler)
        self._server.socket = tls_context.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> StsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


# ---------------------------------------------------------------- OpenDKIM

_SHIM = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <resolv.h>
#include <stdlib.h>

int __res_ninit(res_state statp) {
    static int (*real)(res_state);
    if (!real) real = (int (*)(res_state))dlsym(RTLD_NEXT, "__res_ninit");
    int rc = real(statp);
    const char *port = getenv("LIVEPRISM_TEST_DNS_PORT");
    if (rc == 0 && port != NULL) {
        statp->nscount = 1;
        statp->nsaddr_list[0].sin_family = AF_INET;
        statp->nsaddr_list[0].sin_port = htons((unsigned short)atoi(port));
        inet_pton(AF_INET, "127.0.0.1", &statp->nsaddr_list[0].sin_addr);
        statp->_u._ext.nscount = 0;
    }
    return rc;
}
"""


def resolver_shim(workdir: Path) -> Path:
    """Build the LD_PRELOAD library of the module docstring; its path."""
    source, library = workdir / "resolver_shim.c", workdir / "resolver_shim.so"
    source.write_text(_SHIM)
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"], check=True,
                   capture_output=True, timeout=60)
    return library


def opendkim_verify(message: bytes, dns_port: int, shim: Path) -> subprocess.CompletedProcess[bytes]:
    """`opendkim-testmsg` in verify mode on `message`, its DNS questions going to nsd on `dns_port`.
    Exit 0 = every signature verified (it reads LF line ends)."""
    return subprocess.run(
        ["opendkim-testmsg"], input=message.replace(b"\r\n", b"\n"), capture_output=True, timeout=60,
        env={**os.environ, "LD_PRELOAD": str(shim), "LIVEPRISM_TEST_DNS_PORT": str(dns_port)},
    )
