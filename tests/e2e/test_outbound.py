"""The outbound listener end to end: real `liveprism serve`, real nsd serving the MX records of a
stranger's domain, a real SMTP sink behind that MX, swaks and smtplib as tenants' servers.

acme's server is 127.0.0.1 (`outbound.networks`); a stranger connects from 127.0.0.3; globex
sends only as an SMTP AUTH user (argon2 users file, STARTTLS with a self-signed certificate made
here by openssl). Nothing is mocked: what the sink behind the MX receives is what the world gets.
"""

from __future__ import annotations

import base64
import json
import smtplib
import sqlite3
import ssl
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.policy.users import hash_password
from tests.support.gateway import Gateway
from tests.support.nsd import Nsd, zone_file
from tests.support.peers import Sink, self_signed, start_sink
from tests.support.policies import write_policy
from tests.support.processes import LOCALHOST, free_port, swaks, wait_for, wait_port

STRANGER_IP = "127.0.0.3"
PASSWORD = "globex-s3cret"
RULES = """\
name: outbound-test
rules:
  - id: confidential-outbound
    direction: outbound
    when: {body: {contains: ["project-x-confidential"]}}
    then: {action: quarantine}
"""


@dataclass
class Lab:
    gateway: Gateway
    out_port: int
    sink: Sink
    state: Path
    admin_port: int

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://{LOCALHOST}:{self.admin_port}/metrics", timeout=30) as response:
            return str(response.read().decode())

    def send(self, *args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
        return swaks(port or self.out_port, *args)

    def archived(self) -> list[tuple[str, str]]:
        with sqlite3.connect(self.state / "index.sqlite3") as db:
            return list(db.execute("SELECT mail_from, direction FROM messages ORDER BY received_at"))


def _lab(tmp_path: Path, nsd: Nsd, procs: list[object], *, auth: bool = True) -> Lab:
    sink = start_sink(tmp_path, procs, "world-maildir")  # the stranger's MX
    nsd.start({"stranger.example": zone_file(
        "stranger.example", f"@ IN MX 10 mx.stranger.example.\nmx IN A {LOCALHOST}\n")})
    port, out_port, admin_port = free_port(), free_port(), free_port()
    acme_route, globex_route = Sink(free_port(), tmp_path / "acme-box"), Sink(free_port(), tmp_path / "globex-box")
    tenants: dict[str, dict[str, object]] = {
        "acme": {"domains": ["acme.example"], "routes": [{"host": LOCALHOST, "port": acme_route.port}],
                 "rules": ["outbound-test"],
                 "outbound": {"networks": [f"{LOCALHOST}/32"], "sender_domains": ["acme-news.example"],
                              "limits": {"per_sender_per_hour": 3}}},
        "globex": {"domains": ["globex.example"], "routes": [{"host": LOCALHOST, "port": globex_route.port}],
                   "outbound": {"auth": {"users": "../secrets/globex-users"}} if auth else {}},
    }
    cert, key = self_signed(tmp_path, "mxpath.test.example")
    policy = write_policy(tmp_path / "policy", port=port, tenants=tenants, mx_port=sink.port,
                          extra_gateway=f"{nsd.gateway_settings(timeout=2)}\n"
                                        f"tls: {{cert: {cert}, key: {key}}}\n"
                                        f"admin: {{address: {LOCALHOST}, port: {admin_port}, token: ./admin-token}}\n")
    (policy / "admin-token").write_text("test-token\n")
    (policy / "rules" / "outbound-test.yaml").write_text(RULES)
    gateway_yaml = policy / "gateway.yaml"  # at most 3 errors per session (AUTH failures count)
    gateway_yaml.write_text(gateway_yaml.read_text().replace(
        "command_timeout: 60}", "command_timeout: 60, max_errors: 3}").replace(
        f"  inbound: {{address: 127.0.0.1, port: {port}}}\n",
        f"  inbound: {{address: 127.0.0.1, port: {port}}}\n  outbound: {{address: 127.0.0.1, port: {out_port}}}\n"))
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "globex-users").write_text(f"# globex's senders\nalice:{hash_password(PASSWORD)}\n")
    state = tmp_path / "state"
    gateway = Gateway(policy, state, port).start()
    procs.append(gateway)
    wait_port(out_port, proc=gateway.proc)
    return Lab(gateway, out_port, sink, state, admin_port)


@pytest.fixture
def lab(tmp_path: Path, nsd: Nsd, procs: list[object]) -> Lab:
    return _lab(tmp_path, nsd, procs)


def _smtp_from(ip: str, port: int) -> smtplib.SMTP:
    client = smtplib.SMTP(LOCALHOST, port, source_address=(ip, 0), timeout=30)
    client.ehlo("client.test.example")
    return client


# ---------------------------------------------------------------- a tenant's server sends to the world


def test_tenant_server_on_its_network_sends_to_a_stranger_found_by_mx(lab: Lab) -> None:
    sent = lab.send("--from", "bob@acme.example", "--to", "friend@stranger.example",
                    "--header", "Subject: quarterly numbers")
    assert "<-  250 2.0.0 queued as" in sent.stdout, sent.stdout
    assert wait_for(lambda: len(lab.sink.messages()) == 1, timeout=30), lab.gateway.log()[-3000:]
    delivered = lab.sink.messages()[0]
    assert b"Subject: quarterly numbers" in delivered
    assert b"X-LivePrism-Verdict" not in delivered  # the verdict is not the world's business
    assert ("bob@acme.example", "outbound") in lab.archived()  # archived like inbound, as outbound
    assert 'liveprism_messages_total{action="deliver",direction="outbound",reason="clean",tenant="acme"} 1.0' \
        in lab.metrics()
    # an alias sending domain (outbound.sender_domains) and the null sender (a bounce) are acme's too
    alias = lab.send("--from", "news@acme-news.example", "--to", "friend@stranger.example")
    assert "<-  250 2.0.0 queued as" in alias.stdout, alias.stdout
    bounce = lab.send("--from", "<>", "--to", "friend@stranger.example", "--header", "From: mailer-daemon@acme.example")
    assert "<-  250 2.0.0 queued as" in bounce.stdout, bounce.stdout
    assert wait_for(lambda: len(lab.sink.messages()) == 3, timeout=30)


def test_a_stranger_is_refused(lab: Lab) -> None:
    client = _smtp_from(STRANGER_IP, lab.out_port)  # AUTH is possible here: MAIL needs it first
    assert client.mail("bob@acme.example") == (530, b"5.7.0 Authentication required")
    client.quit()
    assert lab.sink.messages() == []


def test_a_stranger_is_refused_at_connect_when_no_tenant_can_authenticate(
    tmp_path: Path, nsd: Nsd, procs: list[object]
) -> None:
    lab = _lab(tmp_path, nsd, procs, auth=False)
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP(LOCALHOST, lab.out_port, source_address=(STRANGER_IP, 0), timeout=30)
    assert refused.value.smtp_code == 554 and b"5.7.1" in refused.value.smtp_error
    # the same stranger on the inbound listener is just an MX client: relaying is still denied there
    inbound = swaks(lab.gateway.port, "--from", "bob@acme.example", "--to", "friend@stranger.example")
    assert "550 5.7.1 relaying denied" in inbound.stdout


def test_cross_tenant_spoofing_is_refused_in_the_envelope_and_in_the_header_from(lab: Lab) -> None:
    envelope = lab.send("--from", "ceo@globex.example", "--to", "friend@stranger.example")
    assert "<** 550 5.7.1 sender address not allowed: globex.example" in envelope.stdout, envelope.stdout
    header = lab.send("--from", "bob@acme.example", "--to", "friend@stranger.example",
                      "--header", "From: CEO <ceo@globex.example>")
    assert "<** 550 5.7.1 header From not allowed: globex.example" in header.stdout, header.stdout
    stranger = lab.send("--from", "bob@acme.example", "--to", "friend@stranger.example",
                        "--header", "From: bob@acme.example, boss@stranger.example")
    assert "<** 550 5.7.1 header From not allowed: stranger.example" in stranger.stdout, stranger.stdout
    assert lab.sink.messages() == []


# ---------------------------------------------------------------- SMTP AUTH


def test_auth_is_refused_without_tls_and_binds_the_user_to_its_tenant_with_tls(lab: Lab) -> None:
    client = _smtp_from(STRANGER_IP, lab.out_port)
    assert not client.has_extn("auth") and client.has_extn("starttls")  # AUTH is offered only after STARTTLS
    token = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    assert client.docmd("AUTH", f"PLAIN {token}")[0] == 538  # RFC 4954 §4: encryption required
    client.quit()
    with_tls = lab.send("--from", "alice@globex.example", "--to", "friend@stranger.example", "-tls",
                        "-a", "PLAIN", "-au", "alice", "-ap", PASSWORD, "--local-interface", STRANGER_IP)
    assert "<~  235 2.7.0 Authentication successful" in with_tls.stdout, with_tls.stdout
    assert "<~  250 2.0.0 queued as" in with_tls.stdout, with_tls.stdout
    assert wait_for(lambda: len(lab.sink.messages()) == 1, timeout=30), lab.gateway.log()[-3000:]
    assert b"with ESMTPSA" in lab.sink.messages()[0]  # RFC 3848: TLS and AUTH
    login = lab.send("--from", "alice@globex.example", "--to", "friend@stranger.example", "-tls",
                     "-a", "LOGIN", "-au", "alice", "-ap", "wrong password", "--local-interface", STRANGER_IP)
    assert "<~* 535 5.7.8 Authentication credentials invalid" in login.stdout, login.stdout
    # the authenticated globex user cannot send as acme, even from acme's own network
    as_acme = lab.send("--from", "bob@acme.example", "--to", "friend@stranger.example", "-tls",
                       "-a", "PLAIN", "-au", "alice", "-ap", PASSWORD)
    assert "<~* 550 5.7.1 sender address not allowed: acme.example" in as_acme.stdout, as_acme.stdout


def test_failed_auth_counts_towards_max_errors(lab: Lab) -> None:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    client = _smtp_from(STRANGER_IP, lab.out_port)
    client.starttls(context=context)
    client.ehlo("client.test.example")
    assert client.has_extn("auth") and "PLAIN" in client.esmtp_features["auth"]
    token = base64.b64encode(b"\0alice\0nope").decode()
    inbound = _smtp_from(STRANGER_IP, lab.gateway.port)  # the inbound listener has nothing to log in to
    inbound.starttls(context=context)
    inbound.ehlo("client.test.example")
    assert inbound.has_extn("size") and not inbound.has_extn("auth"), inbound.esmtp_features
    inbound.quit()
    assert [client.docmd("AUTH", f"PLAIN {token}")[0] for _ in range(3)] == [535, 535, 535]
    assert client.docmd("NOOP")[0] == 421  # limits.max_errors: 3 reached, the session is closed
    log = lab.gateway.log()
    assert "AUTH failed" in log and "nope" not in log  # the password is never logged
    assert 'liveprism_smtp_auth_total{result="failure"} 3.0' in lab.metrics()


# ---------------------------------------------------------------- policy and limits


def test_an_outbound_content_rule_quarantines(lab: Lab) -> None:
    sent = lab.send("--from", "bob@acme.example", "--to", "friend@stranger.example",
                    "--body", "The project-x-confidential figures are attached.")
    assert "<-  250 2.0.0 queued as" in sent.stdout, sent.stdout
    held = lab.gateway.cli("quarantine", "list", "--state", str(lab.state), "--json")
    entries = json.loads(held.stdout)
    assert [(e["tenant"], e["recipients"], e["reason"]) for e in entries] == [
        ("acme", ["friend@stranger.example"], "rule-action")], held.stdout
    assert lab.sink.messages() == []


def test_the_rate_limit_trips_at_the_configured_count_and_survives_a_restart(lab: Lab) -> None:
    """Counted in the store: after a restart with two SMTP processes (`--workers 2`), whichever
    process takes the connection, the sender is still over its limit."""
    for n in range(3):  # per_sender_per_hour: 3
        sent = lab.send("--from", "limited@acme.example", "--to", f"friend{n}@stranger.example")
        assert "<-  250 2.0.0 queued as" in sent.stdout, (n, sent.stdout)
    fourth = lab.send("--from", "limited@acme.example", "--to", "friend@stranger.example")
    assert "<** 451 4.7.1 outbound rate limit reached (per_sender_per_hour)" in fourth.stdout, fourth.stdout
    assert 'liveprism_outbound_rate_limited_total{limit="per_sender_per_hour",stage="mail",tenant="acme"} 1.0' \
        in lab.metrics()
    other = lab.send("--from", "other@acme.example", "--to", "friend@stranger.example")  # another sender: fine
    assert "<-  250 2.0.0 queued as" in other.stdout, other.stdout
    lab.gateway.stop()
    lab.gateway.args = ("--workers", "2")
    lab.gateway.start()
    wait_port(lab.out_port, proc=lab.gateway.proc)
    assert wait_for(lambda: "worker 1" in lab.gateway.log() and "serving policy" in lab.gateway.log())
    for _ in range(4):
        after = lab.send("--from", "limited@acme.example", "--to", "friend@stranger.example")
        assert "<** 451 4.7.1 outbound rate limit reached (per_sender_per_hour)" in after.stdout, after.stdout
