"""The relay's side of outbound mail: DKIM signing of the bytes sent, world headers, delivery by
MX (null MX, implicit MX, DNS failures), DSNs never to internal next hops, the DSN memory across
a relay restart, the relay's refusal of a policy version whose key cannot be loaded, and the
MTA-STS policy parser and matcher. Real aiosmtpd servers and a real (tiny) DNS server
(tests/support/relay_lab.py); the end-to-end versions with nsd, OpenDKIM and TLS are in
tests/e2e/test_delivery_world.py."""

from __future__ import annotations

import io
import random
import ssl
import time
from pathlib import Path
from typing import Any

import dkim
import pytest

from engine import metrics
from engine.dkim.keys import KeyProblem, generate_key, public_record, write_new_key
from engine.policy.models import Action, DeliverySettings, DnsSettings, RouteTls
from engine.relay import compose, worker
from engine.relay.compose import compose_streamed, world_headers
from engine.relay.mta_sts import StsPolicy, parse_policy, record_id
from engine.relay.nexthop import internal_address
from engine.relay.process import RelayPolicy, _Routing
from engine.relay.signing import (
    Signer,
    TenantKey,
    as_sent,
    header_from_domain,
    sign,
    sign_streamed,
    signed_field_list,
    signing_domain,
)
from engine.store.base import CopyPlan
from tests.support.peers import Recorder
from tests.support.policies import route
from tests.support.relay_lab import FAST, HEADERS, RelayLab, wait_until, wait_until_async

OUT = (
    b"From: Alice <alice@acme.example>\r\n"
    b"To: bob@faraway.example\r\n"
    b"Subject: outbound numbers\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <o1@acme.example>\r\n"
    b"X-LivePrism-Verdict: action=deliver; forged by the client\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
)
MX_RECORDS = {("faraway.example.", "MX"): ["10 mx.faraway.example."], ("mx.faraway.example.", "A"): ["127.0.0.1"]}


def signer(algorithm: str = "rsa") -> tuple[Signer, bytes]:
    key = generate_key("ed25519" if algorithm == "ed25519" else "rsa")
    alg = b"ed25519-sha256" if algorithm == "ed25519" else b"rsa-sha256"
    return Signer("acme", "lp1", ("acme.example", "acme-corp.example"), key, alg), \
        public_record(key).encode()


def verifies(data: bytes, record: bytes) -> bool:
    return bool(dkim.verify(data, dnsfunc=lambda name, timeout=5: record if name == b"lp1._domainkey.acme.example."
                            else None))


def counter(event: str) -> float:
    return float(metrics.RELAY_EVENTS.labels(event)._value.get())


async def first_deferral(gw: Any) -> Any:
    """The queue entry of the gateway's one message once a delivery attempt left it queued (the
    gateway stopped)."""

    async def deferred() -> bool:
        entries = await gw.store.list_queue()
        return bool(entries) and entries[0].attempts >= 1 and entries[0].state == "queued"

    await wait_until_async(deferred)
    await gw.stop()
    return (await gw.store.list_queue())[0]


# ---------------------------------------------------------------- signing, pure


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_sign_relaxed_relaxed_over_signs_from_and_verifies(algorithm: str) -> None:
    key, record = signer(algorithm)
    signed = sign(key, OUT)
    assert signed.endswith(OUT)  # the bytes given, unchanged, after the one field added
    field = signed.split(b"DKIM-Signature:", 1)[1].split(b"\r\nFrom")[0]
    fields = dkim.util.parse_tag_value(field)
    assert fields[b"c"] == b"relaxed/relaxed"
    assert fields[b"a"] == (b"ed25519-sha256" if algorithm == "ed25519" else b"rsa-sha256")
    assert fields[b"d"] == b"acme.example"
    names = [name.strip() for name in fields[b"h"].split(b":")]
    assert names.count(b"from") == 2 and b"subject" in names and b"message-id" in names
    assert verifies(signed, record)
    # an added From (a second one, as a forger would prepend) breaks the signature: From is over-signed
    assert not verifies(signed.replace(b"From: Alice", b"From: Mallory <m@evil.example>\r\nFrom: Alice", 1), record)
    assert not verifies(signed.replace(b"Hello Bob", b"Hello Eve"), record)


@pytest.mark.parametrize("message", [
    b"From: a@acme.example\r\nSubject: empty body\r\n\r\n",
    b"From: a@acme.example\r\nSubject: no body at all\r\n",
    b"From:   a@acme.example  \r\nSubject:\tfolded\r\n   over\r\n\tthree lines \r\nTo: x@y\r\nTo: z@w\r\n\r\n"
    b"  white \t space  \r\n\r\nend\t \r\n\r\n\r\n",
    b"From: a@acme.example\nSubject: bare LF line ends\n\nbody\nmore\n",
    b"From: a@acme.example\r\nSubject: no final CRLF\r\n\r\nlast line",
    b"FROM: a@acme.example\r\nsubject: case\r\nCc: c@d\r\nReply-To: r@acme.example\r\n\r\n\xc3\xa9t\xc3\xa9\r\n",
])
def test_canonicalization_edge_cases_verify_with_dkimpy(message: bytes) -> None:
    for algorithm in ("rsa", "ed25519"):
        key, record = signer(algorithm)
        signed = sign(key, message)
        assert verifies(signed, record), (algorithm, signed)
        assert signed.endswith(b"\r\n") and b"\n" not in signed.replace(b"\r\n", b"")  # as the client sends it


STREAM_BODIES = [
    b"",
    b"plain\r\nlines\r\n",
    b"bare LF\nbare CR\rmixed\r\n  white \t space  \r\n \r\n\r\n\r\n",
    b"x" * 2500 + b"\r\n" + b"y" * 1200 + b"\r\nlong lines folded\r\n\r\n",
    b"no final CRLF \t",
    b"ends with a CR\r",
    b".dot first\r\n..two\r\n\r\n\t\r\n",
]


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
@pytest.mark.parametrize("chunk", [1, 2, 7, 64, 256 * 1024])
def test_streamed_signing_gives_the_bytes_of_signing_in_memory(monkeypatch: pytest.MonkeyPatch, algorithm: str,
                                                              chunk: int) -> None:
    """`sign_streamed` of a StreamedCopy (body read in `chunk`-byte pieces: cut between CR and LF,
    inside white space and trailing empty lines) transmits exactly the bytes `sign` makes of the
    joined copy: the same field (both signature schemes are deterministic) over the same bytes."""
    monkeypatch.setattr(compose, "STREAM_CHUNK", chunk)
    key, record = signer(algorithm)
    rng = random.Random(chunk)
    now = time.time() - 60  # one t= for both: the same field
    bodies = [*STREAM_BODIES, *(b"".join(rng.choice([b"a", b" ", b"\t", b"\r", b"\n", b"\r\n", b"\r\n\r\n", b"."])
                                       for _ in range(rng.randrange(0, 60))) for _ in range(20))]
    for body in bodies:
        copy = compose_streamed(io.BytesIO(OUT + body), HEADERS, "[ext]")
        assert copy is not None
        whole = copy.head + b"".join(copy.body())
        signed = sign_streamed(key, copy, now=now)
        assert signed.source is copy.source and signed.head.endswith(copy.head)
        sent = as_sent(b"".join(signed.chunks()))  # what the client transmits (before dot-stuffing)
        assert sent == sign(key, whole, now=now), body
        assert verifies(sent, record), body


def test_signing_domain_follows_header_from() -> None:
    key, _ = signer()
    assert signing_domain(key, header_from_domain(b"From: x <a@acme-corp.example>\r\n\r\n")) == "acme-corp.example"
    assert signing_domain(key, header_from_domain(b"From: a@mail.acme.example\r\n\r\n")) == "acme.example"
    assert signing_domain(key, header_from_domain(b"From: a@stranger.example\r\n\r\n")) == "acme.example"
    assert signing_domain(key, header_from_domain(b"Subject: none\r\n\r\n")) == "acme.example"
    assert signed_field_list(b"To: a@b\r\nCc: c@d\r\nTo: e@f\r\nX-Other: 1\r\n\r\n") == [b"to", b"cc", b"to", b"from",
                                                                                      b"from"]


def test_world_headers_keep_received_drop_verdict_fields() -> None:
    headers = (HEADERS + b"X-LivePrism-Policy: v1\r\nX-Spam-Flag: YES\r\nX-Spam-Score: 4\r\n"
               b"Authentication-Results: mxpath.test; spf=pass\r\n")
    assert world_headers(headers) == HEADERS.split(b"\r\n")[0] + b"\r\n"  # Received only


# ---------------------------------------------------------------- signing in the relay


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_outbound_copy_is_signed_over_the_bytes_sent(relay_lab: RelayLab, algorithm: str) -> None:
    key, record = signer(algorithm)

    async def scenario() -> None:
        remote = Recorder()
        port = await relay_lab.serve(remote)
        dns_settings = await relay_lab.dns(MX_RECORDS)
        gw = await relay_lab.gateway({}, dns=dns_settings, mx_port=port,
                                     worker_options={"signing": {"acme": key}.get})
        gw.start()
        await gw.accept(mail_from="alice@acme.example", rcpts=("bob@faraway.example",), raw=OUT, outbound=True)
        await wait_until(lambda: len(remote.messages) == 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()

        data = remote.messages[0].data
        assert data.startswith(b"DKIM-Signature: ")
        assert verifies(data, record)
        assert b"Received: from client.example by mxpath.test" in data  # the trace stays
        assert b"X-LivePrism" not in data  # neither ours nor the client's forged one

    relay_lab.run(scenario())


def test_a_large_streamed_outbound_copy_is_signed_too(relay_lab: RelayLab, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signed by `sign_streamed` (the body never joined in memory), not by `sign`."""
    key, record = signer()
    large = OUT + b"a line of the long report body\r\n" * 60_000  # > STREAM_AT: composed from the stored file
    calls: list[str] = []

    def streamed_spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("streamed")
        return sign_streamed(*args, **kwargs)

    def whole_spy(*args: Any, **kwargs: Any) -> Any:
        calls.append("whole")
        return sign(*args, **kwargs)

    monkeypatch.setattr(worker, "sign_streamed", streamed_spy)
    monkeypatch.setattr(worker, "sign", whole_spy)

    async def scenario() -> None:
        remote = Recorder()
        port = await relay_lab.serve(remote)
        dns_settings = await relay_lab.dns(MX_RECORDS)
        gw = await relay_lab.gateway({}, dns=dns_settings, mx_port=port,
                                     worker_options={"signing": {"acme": key}.get})
        gw.start()
        await gw.accept(mail_from="alice@acme.example", rcpts=("bob@faraway.example",), raw=large,
                        outbound=True, spooled=True)
        await wait_until(lambda: len(remote.messages) == 1, timeout=60)
        await wait_until_async(gw.queue_empty)
        await gw.stop()

        data = remote.messages[0].data
        assert len(data) > 1024 * 1024 and data.startswith(b"DKIM-Signature: ")
        assert calls == ["streamed"]
        assert verifies(data, record)
        assert not verifies(data.replace(b"long report body\r\na line", b"long report body\r\nA line", 1), record)
        assert b"X-LivePrism" not in data

    relay_lab.run(scenario())


def test_inbound_copies_and_dsns_are_not_signed(relay_lab: RelayLab) -> None:
    key, _ = signer()

    async def scenario() -> None:
        tenant = Recorder(rcpt_replies={"bob@acme.example": "550 5.1.1 no such user"})
        remote = Recorder()
        port1 = await relay_lab.serve(tenant)
        port2 = await relay_lab.serve(remote)
        dns_settings = await relay_lab.dns(MX_RECORDS)
        gw = await relay_lab.gateway({"acme": [route(port1)]}, dns=dns_settings, mx_port=port2,
                                     worker_options={"signing": {"acme": key}.get})
        gw.start()
        await gw.accept(mail_from="someone@faraway.example")  # inbound to acme: refused, DSN to faraway
        await wait_until(lambda: len(remote.messages) == 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        assert remote.messages[0].mail_from == "<>"
        assert b"DKIM-Signature" not in remote.messages[0].data.split(b"\r\n\r\n")[0]

    relay_lab.run(scenario())


def test_unloadable_key_defers_the_copy_never_sends_it_unsigned(relay_lab: RelayLab) -> None:
    problem = KeyProblem("missing", "keys/acme.pem", "key file keys/acme.pem does not exist")

    async def scenario() -> None:
        remote = Recorder()
        port = await relay_lab.serve(remote)
        dns_settings = await relay_lab.dns(MX_RECORDS)
        gw = await relay_lab.gateway({}, dns=dns_settings, mx_port=port,
                                     worker_options={"signing": {"acme": problem}.get})
        gw.start()
        await gw.accept(mail_from="alice@acme.example", rcpts=("bob@faraway.example",), raw=OUT, outbound=True)
        entry = await first_deferral(gw)
        assert entry.last_error.startswith("4.7.0 DKIM key of tenant acme cannot be loaded")
        assert remote.messages == [] and remote.connections == 0

    relay_lab.run(scenario())


def test_relay_refuses_a_policy_version_that_breaks_a_working_key(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    good = tmp_path / "good.pem"
    assert write_new_key(good, generate_key("ed25519")) is None

    def publish(version: str, key_path: Path) -> None:
        RelayPolicy(version=version, hostname="mxpath.test", log_level="info", delivery=DeliverySettings(),
                    dns=DnsSettings(), routes={}, domains={"acme.example": "acme"},
                    dkim={"acme": TenantKey("lp1", str(key_path), ("acme.example",))}).publish(state)

    publish("v1", tmp_path / "missing.pem")
    routing = _Routing(state)  # at start there is nothing older to keep: the tenant's mail waits
    assert isinstance(routing.signer("acme"), KeyProblem)
    publish("v1b", tmp_path / "missing.pem")
    routing.reload()  # still no key: other changes of the version are not held back by it
    assert routing.policy.version == "v1b" and isinstance(routing.signer("acme"), KeyProblem)
    publish("v2", good)
    routing.reload()
    assert routing.policy.version == "v2" and isinstance(routing.signer("acme"), Signer)
    publish("v3", tmp_path / "missing.pem")
    routing.reload()  # refused: v2 and its key stay
    assert routing.policy.version == "v2" and isinstance(routing.signer("acme"), Signer)
    assert routing.signer("other") is None


# ---------------------------------------------------------------- delivery by MX


def test_null_mx_fails_at_once_with_dsn_and_no_retry(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        acme_server = Recorder()
        port = await relay_lab.serve(acme_server)
        dns_settings = await relay_lab.dns({("nomail.example.", "MX"): ["0 ."]})
        gw = await relay_lab.gateway({"acme": [route(port)]}, dns=dns_settings)
        gw.start()
        await gw.accept(mail_from="alice@acme.example", rcpts=("bob@nomail.example",), raw=OUT, outbound=True)
        await wait_until(lambda: len(acme_server.messages) == 1)  # the DSN, to the tenant's own server
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        dsn = acme_server.messages[0].data
        assert acme_server.messages[0].rcpts == ["alice@acme.example"]
        assert b"Status: 5.1.10" in dsn and b"null MX" in dsn

    relay_lab.run(scenario())


def test_no_mx_uses_the_domain_a_record(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        remote = Recorder()
        port = await relay_lab.serve(remote)
        dns_settings = await relay_lab.dns({("bare.example.", "A"): ["127.0.0.1"]})
        gw = await relay_lab.gateway({}, dns=dns_settings, mx_port=port)
        gw.start()
        await gw.accept(mail_from="alice@acme.example", rcpts=("bob@bare.example",), raw=OUT, outbound=True)
        await wait_until(lambda: len(remote.messages) == 1)
        await gw.stop()
        assert remote.messages[0].rcpts == ["bob@bare.example"]

    relay_lab.run(scenario())


def test_dns_timeout_is_temporary(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        silent = DnsSettings.model_validate({"nameservers": ["127.0.0.1"], "port": 9, "timeout": 0.3})
        gw = await relay_lab.gateway({}, dns=silent)
        gw.start()
        await gw.accept(mail_from="alice@acme.example", rcpts=("bob@faraway.example",), raw=OUT, outbound=True)
        entry = await first_deferral(gw)
        assert entry.last_error.startswith("4.4.3 MX lookup for faraway.example failed")

    relay_lab.run(scenario())


# ---------------------------------------------------------------- DSNs: internal next hops, one per message


def test_dsn_to_an_internal_mx_is_dropped_by_default(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        tenant = Recorder(rcpt_replies={"bob@acme.example": "550 5.1.1 no such user"})
        remote = Recorder()
        port1 = await relay_lab.serve(tenant)
        port2 = await relay_lab.serve(remote)
        dns_settings = await relay_lab.dns(MX_RECORDS)  # faraway's MX is 127.0.0.1
        before = counter("dsn-dropped-private-hop")
        gw = await relay_lab.gateway({"acme": [route(port1)]}, dns=dns_settings, mx_port=port2,
                                     settings=FAST.model_copy(update={"private_next_hops": "refuse"}))
        gw.start()
        await gw.accept(mail_from="someone@faraway.example")
        await wait_until(lambda: counter("dsn-dropped-private-hop") == before + 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        assert remote.connections == 0 and remote.messages == []

    relay_lab.run(scenario())


def test_internal_addresses() -> None:
    for host in ("127.0.0.1", "10.1.2.3", "192.168.0.1", "172.16.5.5", "169.254.1.1", "0.0.0.0", "::1", "fe80::1",
                 "fd00::1", "::ffff:127.0.0.1"):
        assert internal_address(host), host
    for host in ("8.8.8.8", "2a00:1450::1", "mail.example.com"):
        assert not internal_address(host), host


def test_one_dsn_per_message_across_a_relay_restart(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        acme = Recorder(rcpt_replies={"bob@acme.example": "550 5.1.1 no such user"})
        other = Recorder(rcpt_replies={"carol@other.example": "451 4.3.0 try later"})
        remote = Recorder()
        port_acme, port_other = await relay_lab.serve(acme), await relay_lab.serve(other)
        port_remote = await relay_lab.serve(remote)
        dns_settings = await relay_lab.dns(MX_RECORDS)
        gw = await relay_lab.gateway({"acme": [route(port_acme)], "other": [route(port_other)]}, dns=dns_settings,
                                     mx_port=port_remote)
        gw.domains["other.example"] = "other"
        gw.start()
        await gw.accept(mail_from="someone@faraway.example", rcpts=("bob@acme.example", "carol@other.example"),
                        copies=(CopyPlan("acme", ("bob@acme.example",), Action.deliver, HEADERS),
                                CopyPlan("other", ("carol@other.example",), Action.deliver, HEADERS)))
        await wait_until(lambda: len(remote.messages) == 1)  # acme's copy bounced: the DSN
        await gw.stop()  # the relay restarts: a new worker remembers nothing in memory
        other.rcpt_replies["carol@other.example"] = "550 5.1.1 gone"
        gw.worker = gw.task = None
        gw.start()
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        assert other.connections >= 2  # the second copy did fail after the restart
        assert len(remote.messages) == 1  # and got no second DSN

    relay_lab.run(scenario(), timeout=60)


# ---------------------------------------------------------------- MTA-STS parsing


def test_mta_sts_policy_parsing_and_matching() -> None:
    text = "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 86400\r\n"
    policy = parse_policy(text, "abc", 1000.0)
    assert isinstance(policy, StsPolicy)
    assert policy.mode == "enforce" and policy.max_age == 86400 and not policy.expired(1000.0 + 86399)
    assert policy.matches("mail.example.com") and policy.matches("MX1.example.net.")
    assert not policy.matches("a.b.example.net") and not policy.matches("example.net")
    assert not policy.matches("evil.example.com")
    assert isinstance(parse_policy("version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n", "x", 0), str)
    assert isinstance(parse_policy("version: STSv1\nmode: enforce\nmax_age: 1\n", "x", 0), str)  # no mx
    assert isinstance(parse_policy("version: STSv1\nmode: sometimes\nmx: a\nmax_age: 1\n", "x", 0), str)
    assert record_id(("v=STSv1; id=20261201T1;",)) == "20261201T1"
    assert record_id(("v=STSv1; id=a;", "v=STSv1; id=b;")) is None  # two records: none (RFC 8461 §3.1)
    assert record_id(("v=spf1 -all",)) is None


# ---------------------------------------------------------------- opportunistic STARTTLS to the world


def test_failed_handshake_with_a_world_mx_is_not_downgraded_but_a_tenant_route_is(relay_lab: RelayLab) -> None:
    broken = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # offers STARTTLS, has no certificate: every handshake fails

    async def scenario() -> None:
        remote, tenant = Recorder(), Recorder()
        port_remote = await relay_lab.serve(remote, tls_context=broken)
        port_tenant = await relay_lab.serve(tenant, tls_context=broken)
        dns_settings = await relay_lab.dns(MX_RECORDS)
        gw = await relay_lab.gateway({"acme": [route(port_tenant, tls=RouteTls.opportunistic)]}, dns=dns_settings,
                                     mx_port=port_remote)
        gw.start()
        await gw.accept(mail_from="alice@acme.example", rcpts=("bob@faraway.example",), raw=OUT, outbound=True)
        await gw.accept(mail_from="someone@faraway.example")  # inbound, to acme's own server
        await wait_until(lambda: len(tenant.messages) == 1)  # the tenant route: plain text after the failure

        async def world_deferred() -> bool:
            entries = await gw.store.list_queue()
            return len(entries) == 1 and entries[0].attempts >= 1 and entries[0].state == "queued"

        await wait_until_async(world_deferred)
        await gw.stop()
        assert not tenant.messages[0].tls
        assert remote.messages == []  # never in plain text after STARTTLS was offered
        [entry] = await gw.store.list_queue()
        assert entry.last_error.startswith("4.7.5 TLS handshake with 127.0.0.1:")

    relay_lab.run(scenario())
