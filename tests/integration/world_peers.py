"""Real peers for delivery to the world: a test CA, an SMTP sink offering STARTTLS with a
certificate from it, an HTTPS server publishing an MTA-STS policy, and OpenDKIM's verifier
pointed at the test's nsd.

All servers listen on 127.0.0.1 on free ports and are stopped by `stop()` (the tests register
them in the `procs` fixture, whose teardown runs even when a test fails).

OpenDKIM (`opendkim-testmsg`) resolves through glibc's resolver, which takes nameservers from
/etc/resolv.conf and has no way to name a port. `resolver_shim` compiles (gcc) a 20-line
LD_PRELOAD library that wraps `__res_ninit` and points every resolver state at
127.0.0.1:$LIVEPRISM_TEST_DNS_PORT, so the unmodified Debian binary asks the test's own nsd.
"""

from __future__ import annotations

import datetime
import http.server
import os
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LOCALHOST = "127.0.0.1"

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


@dataclass
class Got:
    mail_from: str
    rcpts: list[str]
    data: bytes
    tls: bool


@dataclass
class _Recorder:
    messages: list[Got] = field(default_factory=list)
    refuse_rcpt: str | None = None  # e.g. "550 5.1.1 no such user": every RCPT gets it

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          options: list[str]) -> str:
        if self.refuse_rcpt:
            return self.refuse_rcpt
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content
        assert isinstance(content, bytes)
        self.messages.append(Got(str(envelope.mail_from), list(envelope.rcpt_tos), content, session.ssl is not None))
        return "250 2.0.0 stored"


class SmtpSink:
    """aiosmtpd in a thread on 127.0.0.1:`port`, offering STARTTLS when given a context."""

    def __init__(self, port: int, tls_context: ssl.SSLContext | None = None, *, refuse_rcpt: str | None = None
                 ) -> None:
        self.port = port
        self._recorder = _Recorder(refuse_rcpt=refuse_rcpt)
        options = {"tls_context": tls_context} if tls_context is not None else {}
        self._controller = Controller(self._recorder, hostname=LOCALHOST, port=port, **options)

    @property
    def messages(self) -> list[Got]:
        return self._recorder.messages

    def start(self) -> SmtpSink:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()


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
