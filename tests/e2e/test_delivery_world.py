"""Delivery to the world with real peers: nsd on 127.0.0.1 serving MX, A, TXT (_mta-sts, DKIM
keys) records; SMTP sinks (aiosmtpd, STARTTLS with certificates from a test CA); an HTTPS server
publishing MTA-STS policies; OpenDKIM's `opendkim-testmsg` verifying signatures against the same
nsd. The relay runs in-process (tests/support/relay_lab.py) for outbound copies (no outbound
listener yet), and as part of a real `liveprism serve` for DSNs, which take the same path.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import dkim
import pytest

from engine.dkim.keys import generate_key, public_record, write_new_key
from engine.dns.resolver import Resolver
from engine.relay import worker as worker_module
from engine.relay.mta_sts import MtaSts
from engine.relay.signing import Signer
from tests.support.gateway import Gateway
from tests.support.nsd import Nsd, dns_settings, txt, zone_file
from tests.support.peers import LabCa, SmtpSink, StsServer, opendkim_verify, resolver_shim
from tests.support.policies import acme_to, route, write_policy
from tests.support.processes import free_port, swaks, wait_for, wait_port
from tests.support.relay_lab import RelayLab, wait_until, wait_until_async

pytestmark = pytest.mark.integration

OUT = (
    b"From: Alice <alice@acme.example>\r\n"
    b"To: bob@world.example\r\n"
    b"Subject: outbound numbers\r\n"
    b"Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
    b"Message-ID: <o1@acme.example>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=us-ascii\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b"the numbers are fine.\r\n"
)
ENFORCE_OK = "version: STSv1\r\nmode: enforce\r\nmx: mx.world.example\r\nmax_age: 86400\r\n"


def world_zone(sts_id: str | None = "1", mx: str = "10 mx") -> str:
    body = f"@ IN MX {mx}\nmx IN A 127.0.0.1\nmta-sts IN A 127.0.0.1\n"
    if sts_id is not None:
        body += f'_mta-sts IN TXT "v=STSv1; id={sts_id};"\n'
    return zone_file("world.example", body)


def assert_opendkim_verifies(data: bytes, nsd_port: int, tmp_path: Path, text: bytes, changed: bytes) -> None:
    """OpenDKIM verifies `data` against the nsd, and really checks: with `text` in the body
    replaced by `changed` (one byte), it reports a bad signature."""
    shim = resolver_shim(tmp_path)
    verified = opendkim_verify(data, nsd_port, shim)
    assert verified.returncode == 0, verified.stderr
    tampered = opendkim_verify(data.replace(text, changed), nsd_port, shim)
    assert tampered.returncode != 0 and b"Bad signature" in tampered.stderr


async def deliver_outbound(relay_lab: RelayLab, nsd_port: int, mx_port: int, **gateway: Any) -> Any:
    """Queue OUT as alice@acme.example's outbound copy to bob@world.example and run the relay
    until the copy is delivered or attempted; the harness Gateway."""
    gw = await relay_lab.gateway({}, dns=dns_settings(nsd_port), mx_port=mx_port, **gateway)
    gw.start()
    await gw.accept(mail_from="alice@acme.example", rcpts=("bob@world.example",), raw=OUT, outbound=True)
    return gw


async def attempted(gw: Any) -> bool:
    entries = await gw.store.list_queue()
    return not entries or (entries[0].attempts >= 1 and entries[0].state == "queued" and bool(entries[0].last_error))


# ---------------------------------------------------------------- DKIM, verified by OpenDKIM


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])


def test_signed_copy_verifies_with_opendkim(relay_lab: RelayLab, nsd: Nsd, procs: list[object], tmp_path: Path,
                                            algorithm: str) -> None:
    key = generate_key("ed25519" if algorithm == "ed25519" else "rsa")
    selector = f"lp-{algorithm}"
    acme = zone_file("acme.example", f"{selector}._domainkey IN TXT {txt(public_record(key))}\n")
    nsd_port = nsd.start({"world.example": world_zone(sts_id=None), "acme.example": acme})
    sink = SmtpSink(free_port()).start()
    procs.append(sink)
    alg = b"ed25519-sha256" if algorithm == "ed25519" else b"rsa-sha256"
    signer = Signer("acme", selector, ("acme.example",), key, alg)

    async def scenario() -> None:
        gw = await deliver_outbound(relay_lab, nsd_port, sink.port, worker_options={"signing": {"acme": signer}.get})
        await wait_until(lambda: len(sink.messages) == 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()

    relay_lab.run(scenario())
    data = sink.messages[0].data
    assert data.startswith(b"DKIM-Signature: v=1; a=" + alg)
    assert_opendkim_verifies(data, nsd_port, tmp_path, b"numbers are fine", b"numbers are FINE")


def test_a_large_streamed_signed_copy_verifies_with_opendkim_and_dkimpy(
    relay_lab: RelayLab, nsd: Nsd, procs: list[object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 2.8 MB outbound copy (over STREAM_AT: streamed from the spool) is signed by `sign_streamed`
    as it is read, never joined in memory; OpenDKIM and dkimpy verify what the sink received. The
    body has what the signer must hash as transmitted: a bare LF, a bare CR, lines over 998 octets
    (folded on the way), white space runs and trailing empty lines."""
    key = generate_key("rsa")
    acme = zone_file("acme.example", f"big._domainkey IN TXT {txt(public_record(key))}\n")
    nsd_port = nsd.start({"world.example": world_zone(sts_id=None), "acme.example": acme})
    sink = SmtpSink(free_port()).start()
    procs.append(sink)
    signer = Signer("acme", "big", ("acme.example",), key, b"rsa-sha256")
    body = (b"Hello Bob,\r\nthe numbers are fine.\r\n" + b"a row  of the\tlong report \r\n" * 100_000
            + b"bare LF\nbare CR\rend\r\n" + b"x" * 3000 + b"\r\n" + b"last line\r\n\r\n \r\n\r\n")
    raw = OUT.split(b"\r\n\r\n")[0] + b"\r\n\r\n" + body
    used: list[str] = []
    real = worker_module.sign_streamed

    def spy(*args: Any, **kwargs: Any) -> Any:
        used.append("streamed")
        return real(*args, **kwargs)

    monkeypatch.setattr(worker_module, "sign_streamed", spy)

    async def scenario() -> None:
        gw = await relay_lab.gateway({}, dns=dns_settings(nsd_port), mx_port=sink.port,
                               worker_options={"signing": {"acme": signer}.get})
        gw.start()
        await gw.accept(mail_from="alice@acme.example", rcpts=("bob@world.example",), raw=raw, outbound=True,
                        spooled=True)
        await wait_until(lambda: len(sink.messages) == 1, timeout=60)
        await wait_until_async(gw.queue_empty)
        await gw.stop()

    relay_lab.run(scenario())
    data = sink.messages[0].data
    assert used == ["streamed"] and len(data) > 2_500_000 and data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256")
    record = public_record(key).encode()
    key_name = b"big._domainkey.acme.example."
    assert dkim.verify(data, dnsfunc=lambda name, timeout=5: record if name == key_name else None)
    assert_opendkim_verifies(data, nsd_port, tmp_path, b"bare CR", b"bare cr")


# ---------------------------------------------------------------- MTA-STS, in-process relay


def test_mta_sts_enforce_matching_mx_is_delivered_over_verified_tls(relay_lab: RelayLab, nsd: Nsd, procs: list[object],
                                                                   tmp_path: Path) -> None:
    ca = LabCa(tmp_path / "ca")
    nsd_port = nsd.start({"world.example": world_zone()})
    sink = SmtpSink(free_port(), ca.issue("mx.world.example")).start()
    sts = StsServer(free_port(), ca.issue("mta-sts.world.example"), ENFORCE_OK).start()
    procs += [sink, sts]

    async def scenario() -> None:
        gw = await deliver_outbound(relay_lab, nsd_port, sink.port, mta_sts_port=sts.port, tls_ca_file=str(ca.ca_file))
        await wait_until(lambda: len(sink.messages) == 1)
        await gw.stop()

    relay_lab.run(scenario())
    assert sink.messages[0].tls and sink.messages[0].rcpts == ["bob@world.example"]
    assert sts.requests == 1


def test_mta_sts_enforce_foreign_mx_is_not_delivered(relay_lab: RelayLab, nsd: Nsd, procs: list[object],
                                                     tmp_path: Path) -> None:
    ca = LabCa(tmp_path / "ca")
    nsd_port = nsd.start({"world.example": world_zone()})
    sink = SmtpSink(free_port(), ca.issue("mx.world.example")).start()
    policy = ENFORCE_OK.replace("mx: mx.world.example", "mx: *.elsewhere.example")
    sts = StsServer(free_port(), ca.issue("mta-sts.world.example"), policy).start()
    procs += [sink, sts]

    async def scenario() -> str:
        gw = await deliver_outbound(relay_lab, nsd_port, sink.port, mta_sts_port=sts.port, tls_ca_file=str(ca.ca_file))
        await wait_until_async(lambda: attempted(gw))
        await gw.stop()
        entries = await gw.store.list_queue()
        assert len(entries) == 1  # still queued: retried, finally bounced after give_up_after
        return entries[0].last_error

    last_error = relay_lab.run(scenario())
    assert last_error.startswith("4.7.5 no mail exchanger of world.example matches its MTA-STS policy")
    assert sink.messages == []


def test_mta_sts_enforce_untrusted_certificate_is_not_delivered(relay_lab: RelayLab, nsd: Nsd, procs: list[object],
                                                                tmp_path: Path) -> None:
    ca, stranger = LabCa(tmp_path / "ca"), LabCa(tmp_path / "stranger")
    nsd_port = nsd.start({"world.example": world_zone()})
    sink = SmtpSink(free_port(), stranger.issue("mx.world.example")).start()  # not signed by a trusted CA
    sts = StsServer(free_port(), ca.issue("mta-sts.world.example"), ENFORCE_OK).start()
    procs += [sink, sts]

    async def scenario() -> str:
        gw = await deliver_outbound(relay_lab, nsd_port, sink.port, mta_sts_port=sts.port, tls_ca_file=str(ca.ca_file))
        await wait_until_async(lambda: attempted(gw))
        await gw.stop()
        return (await gw.store.list_queue())[0].last_error

    last_error = relay_lab.run(scenario())
    assert last_error.startswith("4.7.5 TLS with 127.0.0.1:") and "mx.world.example is required" in last_error
    assert sink.messages == []


def test_mta_sts_testing_mode_delivers_to_a_foreign_mx(relay_lab: RelayLab, nsd: Nsd, procs: list[object],
                                                        tmp_path: Path) -> None:
    ca = LabCa(tmp_path / "ca")
    nsd_port = nsd.start({"world.example": world_zone()})
    sink = SmtpSink(free_port()).start()  # no TLS at all
    policy = ENFORCE_OK.replace("enforce", "testing").replace("mx: mx.world.example", "mx: *.elsewhere.example")
    sts = StsServer(free_port(), ca.issue("mta-sts.world.example"), policy).start()
    procs += [sink, sts]

    async def scenario() -> None:
        gw = await deliver_outbound(relay_lab, nsd_port, sink.port, mta_sts_port=sts.port, tls_ca_file=str(ca.ca_file))
        await wait_until(lambda: len(sink.messages) == 1)
        await gw.stop()

    relay_lab.run(scenario())
    assert sts.requests == 1 and not sink.messages[0].tls


def test_mta_sts_fetch_is_strict_cached_and_kept_when_refetch_fails(relay_lab: RelayLab, nsd: Nsd, procs: list[object],
                                                                     tmp_path: Path) -> None:
    ca = LabCa(tmp_path / "ca")
    nsd_port = nsd.start({"world.example": world_zone(sts_id="1")})
    sts = StsServer(free_port(), ca.issue("mta-sts.world.example"), ENFORCE_OK).start()
    procs.append(sts)

    async def lookups() -> None:
        resolver = Resolver(dns_settings(nsd_port))
        mta_sts = MtaSts(resolver, port=sts.port, ca_file=str(ca.ca_file))
        first = await mta_sts.lookup("world.example")
        assert first.policy is not None and first.policy.mode == "enforce" and first.note == "fetched"
        again = await mta_sts.lookup("world.example")
        assert again.note == "cached" and sts.requests == 1  # same id: no second fetch
        # the id changes and the new policy is unusable: the cached one stays in force (RFC 8461 §5)
        await asyncio.to_thread(nsd.reload, {"world.example": world_zone(sts_id="2")})
        resolver.clear_cache()
        sts.content_type = "text/html"
        kept = await mta_sts.lookup("world.example")
        assert kept.policy == first.policy and kept.note.startswith("fetch failed") and "not text/plain" in kept.note
        # a fresh cache (a relay restart) with a broken server: no policy at all
        for status, content_type in ((301, "text/plain"), (200, "text/html")):
            sts.status, sts.content_type = status, content_type
            fresh = MtaSts(resolver, port=sts.port, ca_file=str(ca.ca_file))
            none = await fresh.lookup("world.example")
            assert none.policy is None and none.note.startswith("fetch failed")
        # a certificate the gateway does not trust: no policy
        sts.status, sts.content_type = 200, "text/plain"
        untrusting = MtaSts(resolver, port=sts.port, ca_file=None)
        assert (await untrusting.lookup("world.example")).policy is None
        assert (await MtaSts(resolver, port=sts.port, ca_file=str(ca.ca_file)).lookup("world.example")).policy

    relay_lab.run(lookups(), timeout=60)


# ---------------------------------------------------------------- end to end through `liveprism serve`


def _dsn_policy(tmp_path: Path, nsd_port: int, tenant_port: int, mx_port: int, **kwargs: Any) -> tuple[Path, int]:
    port = free_port()
    policy = write_policy(
        tmp_path / "policy", port=port, mx_port=mx_port,
        tenants=acme_to(tenant_port),
        extra_gateway=f"dns: {{nameservers: [127.0.0.1], port: {nsd_port}, timeout: 2.0}}\n", **kwargs,
    )
    return policy, port


def test_serve_sends_dsn_to_sender_mx_under_mta_sts_over_verified_tls(nsd: Nsd, procs: list[object],
                                                                      tmp_path: Path) -> None:
    ca = LabCa(tmp_path / "ca")
    nsd_port = nsd.start({"world.example": world_zone()})
    tenant = SmtpSink(free_port(), refuse_rcpt="550 5.1.1 no such user").start()
    world_mx = SmtpSink(free_port(), ca.issue("mx.world.example")).start()
    sts = StsServer(free_port(), ca.issue("mta-sts.world.example"), ENFORCE_OK).start()
    procs += [tenant, world_mx, sts]
    policy, port = _dsn_policy(tmp_path, nsd_port, tenant.port, world_mx.port,
                               delivery_extra=f"mta_sts_port: {sts.port}, tls_ca_file: {ca.ca_file}")
    gateway = Gateway(policy, tmp_path / "state", port).start()
    procs.append(gateway)
    sent = swaks(port, "--from", "someone@world.example", "--to", "bob@acme.example")
    assert "250 2.0.0" in sent.stdout, sent.stdout
    assert wait_for(lambda: len(world_mx.messages) == 1, timeout=30)
    dsn = world_mx.messages[0]
    assert dsn.mail_from == "<>" and dsn.rcpts == ["someone@world.example"] and dsn.tls
    assert b"Status: 5.1.1" in dsn.data
    assert b"X-LivePrism-Verdict" not in dsn.data and b"Authentication-Results" not in dsn.data  # not for strangers
    assert b"Received: from client.test.example" in dsn.data  # the returned headers keep the trace
    assert sts.requests == 1


def test_serve_drops_dsn_to_internal_mx_by_default(nsd: Nsd, procs: list[object], tmp_path: Path) -> None:
    nsd_port = nsd.start({"world.example": world_zone(sts_id=None)})
    tenant = SmtpSink(free_port(), refuse_rcpt="550 5.1.1 no such user").start()
    world_mx = SmtpSink(free_port()).start()
    procs += [tenant, world_mx]
    policy, port = _dsn_policy(tmp_path, nsd_port, tenant.port, world_mx.port, private_next_hops="refuse")
    gateway = Gateway(policy, tmp_path / "state", port).start()
    procs.append(gateway)
    assert "250 2.0.0" in swaks(port, "--from", "someone@world.example", "--to", "bob@acme.example").stdout
    assert wait_for(lambda: "DSN dropped: every mail exchanger of someone@world.example is an internal address"
             in gateway.log(), timeout=30)
    time.sleep(1.0)  # nothing else may follow: the DSN is gone for good
    assert world_mx.messages == []
    listing = gateway.cli("queue", "list", "--state", str(tmp_path / "state"))
    assert "world.example" not in listing.stdout


def test_serve_null_mx_sender_gets_no_dsn_and_no_retry(nsd: Nsd, procs: list[object], tmp_path: Path) -> None:
    nsd_port = nsd.start({"world.example": world_zone(sts_id=None, mx='0 .')})
    tenant = SmtpSink(free_port(), refuse_rcpt="550 5.1.1 no such user").start()
    procs.append(tenant)
    policy, port = _dsn_policy(tmp_path, nsd_port, tenant.port, free_port())
    gateway = Gateway(policy, tmp_path / "state", port).start()
    procs.append(gateway)
    assert "250 2.0.0" in swaks(port, "--from", "someone@world.example", "--to", "bob@acme.example").stdout
    assert wait_for(lambda: "5.1.10 world.example accepts no mail (null MX, RFC 7505)" in gateway.log(), timeout=30)
    time.sleep(2.5)  # retry_initial is 1 s in the relay_lab: a retry would show in the log by now
    log = gateway.log()
    assert log.count("null MX") == 1, log
    assert "status=bounced" in log
    listing = gateway.cli("queue", "list", "--state", str(tmp_path / "state"))
    assert "world.example" not in listing.stdout


def test_mta_sts_policy_survives_a_relay_restart_in_the_store(relay_lab: RelayLab, nsd: Nsd, procs: list[object],
                                                              tmp_path: Path) -> None:
    ca = LabCa(tmp_path / "ca")
    nsd_port = nsd.start({"world.example": world_zone(sts_id="1")})
    sts = StsServer(free_port(), ca.issue("mta-sts.world.example"), ENFORCE_OK).start()
    procs.append(sts)

    async def lookups() -> None:
        store = await relay_lab.store()
        resolver = Resolver(dns_settings(nsd_port))
        first = await MtaSts(resolver, port=sts.port, ca_file=str(ca.ca_file), store=store).lookup("world.example")
        assert first.policy is not None and first.note == "fetched"
        sts.status = 500  # the policy server breaks; the relay restarts (a new cache)
        restarted = MtaSts(resolver, port=sts.port, ca_file=str(ca.ca_file), store=store)
        again = await restarted.lookup("world.example")
        assert again.policy == first.policy and again.note == "cached" and sts.requests == 1
        memory_only = MtaSts(resolver, port=sts.port, ca_file=str(ca.ca_file))
        assert (await memory_only.lookup("world.example")).policy is None  # what the store protects against

    relay_lab.run(lookups(), timeout=60)


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_serve_outbound_listener_to_signed_delivery_verified_by_opendkim(nsd: Nsd, procs: list[object],
                                                                         tmp_path: Path, algorithm: str) -> None:
    key = generate_key("ed25519" if algorithm == "ed25519" else "rsa")
    key_path = tmp_path / "secrets" / "acme.pem"
    assert write_new_key(key_path, key) is None
    acme_zone = zone_file("acme.example", f"lp1._domainkey IN TXT {txt(public_record(key))}\n")
    nsd_port = nsd.start({"world.example": world_zone(sts_id=None), "acme.example": acme_zone})
    world_mx = SmtpSink(free_port()).start()
    procs.append(world_mx)
    port, out_port = free_port(), free_port()
    policy = write_policy(
        tmp_path / "policy", port=port, mx_port=world_mx.port,
        tenants={"acme": {"domains": ["acme.example"], "routes": [route(free_port())],
                          "outbound": {"networks": ["127.0.0.1/32"],
                                       "dkim": {"selector": "lp1", "private_key": str(key_path)}}}},
        extra_gateway=f"dns: {{nameservers: [127.0.0.1], port: {nsd_port}, timeout: 2.0}}\n",
    )
    gateway_yaml = policy / "gateway.yaml"
    gateway_yaml.write_text(gateway_yaml.read_text().replace(
        f"  inbound: {{address: 127.0.0.1, port: {port}}}\n",
        f"  inbound: {{address: 127.0.0.1, port: {port}}}\n  outbound: {{address: 127.0.0.1, port: {out_port}}}\n"))
    gateway = Gateway(policy, tmp_path / "state", port).start()
    procs.append(gateway)
    wait_port(out_port, proc=gateway.proc)
    sent = swaks(out_port, "--from", "bob@acme.example", "--to", "friend@world.example",
                 "--header", "Subject: signed numbers", "--body", "The numbers are fine.")
    assert "<-  250 2.0.0 queued as" in sent.stdout, sent.stdout
    assert wait_for(lambda: len(world_mx.messages) == 1, timeout=30), gateway.log()[-3000:]
    data = world_mx.messages[0].data
    assert data.startswith(b"DKIM-Signature: v=1; a=" + (b"ed25519" if algorithm == "ed25519" else b"rsa"))
    assert b"X-LivePrism" not in data and b"Received: from client.test.example" in data
    shim = resolver_shim(tmp_path)
    verified = opendkim_verify(data, nsd_port, shim)
    assert verified.returncode == 0, verified.stderr
    tampered = opendkim_verify(data.replace(b"The numbers are fine.", b"The numbers are bad."), nsd_port, shim)
    assert tampered.returncode != 0
