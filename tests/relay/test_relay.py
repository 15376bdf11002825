"""Relay worker against real aiosmtpd servers on 127.0.0.1 (random free ports) and a real store.

Every test runs its own event loop: the tenant servers, the fake DNS server and the relay all
live in it. Retry settings are the smallest the policy model allows (1 s).
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, TypeVar

import pytest

from engine.policy.models import DeliverySettings, DnsSettings, RouteTls
from engine.relay.nexthop import NextHops, NoRoute
from engine.store.sqlite import DB_NAME, SqliteStore, quarantine_id
from tests.support.peers import Recorder
from tests.support.policies import route
from tests.support.processes import free_port
from tests.support.relay_lab import FAST, HEADERS, RAW, LabGateway, RelayLab, wait_until, wait_until_async

T = TypeVar("T")

def db_count(state: Path, sql: str, *args: Any) -> int:
    """One count, read by an independent connection (what is committed)."""
    conn = sqlite3.connect(state / DB_NAME)
    try:
        return int(conn.execute(sql, args).fetchone()[0])
    finally:
        conn.close()


# ---------------------------------------------------------------- gateway side


def parse(data: bytes) -> email.message.EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, email.message.EmailMessage)
    return message


def status_groups(report: email.message.Message) -> list[dict[str, str]]:
    """The field groups of a message/delivery-status part, as parsed by the email package."""
    groups = []
    for block in report.get_payload():
        assert isinstance(block, email.message.Message)
        groups.append({key.lower(): str(value) for key, value in block.items()})
    return groups


# ---------------------------------------------------------------- delivery


@pytest.mark.parametrize("body_with_claim", [True, False], ids=["small", "large"])
def test_delivers_copy_byte_exact_with_prepended_headers(
    relay_lab: RelayLab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body_with_claim: bool
) -> None:
    if not body_with_claim:  # as for a message too big to come with its claim: read separately
        monkeypatch.setattr("engine.store.sqlite.deliveries.CLAIM_WITH_BODY_MAX", 0)

    async def scenario() -> None:
        tenant = Recorder()
        port = await relay_lab.serve(tenant)
        gw = await relay_lab.gateway({"acme": [route(port)]})
        gw.start()
        msg = await gw.accept(rcpts=("bob@acme.example", "carol@acme.example"), archive=True)
        await wait_until(lambda: len(tenant.messages) == 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        got = tenant.messages[0]
        assert got.data == HEADERS + RAW
        assert got.mail_from == "alice@sender.example"
        assert got.rcpts == ["bob@acme.example", "carol@acme.example"]
        assert await gw.store.read_message(msg.queue_id) == RAW  # archived: the message stays
        await gw.store.close()

    relay_lab.run(scenario())


def test_tag_copy_gets_subject_prefix_and_unreferenced_message_is_deleted(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder()
        port = await relay_lab.serve(tenant)
        gw = await relay_lab.gateway({"acme": [route(port)]})
        gw.start()
        msg = await gw.accept(action="tag", subject_prefix="[SPAM]")
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        expected = HEADERS + RAW.replace(b"Subject: quarterly", b"Subject: [SPAM] quarterly")
        assert [m.data for m in tenant.messages] == [expected]
        assert await gw.store.read_message(msg.queue_id) is None  # delivered, not archived: gone
        assert db_count(tmp_path / "state", "SELECT count(*) FROM bodies WHERE queue_id = ?", msg.queue_id) == 0
        await gw.store.close()

    relay_lab.run(scenario())


def test_first_route_down_second_route_used(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        backup = Recorder()
        port = await relay_lab.serve(backup)
        gw = await relay_lab.gateway({"acme": [route(port, priority=20), route(free_port(), priority=10)]})
        gw.start()
        await gw.accept()
        await wait_until(lambda: len(backup.messages) == 1)
        await gw.stop()
        assert backup.messages[0].data == HEADERS + RAW
        await gw.store.close()

    relay_lab.run(scenario())


@pytest.mark.parametrize("where", ["rcpt", "data"])
def test_4xx_on_first_route_fails_over_to_second(relay_lab: RelayLab, tmp_path: Path, where: str) -> None:
    async def scenario() -> None:
        busy = Recorder()
        if where == "rcpt":
            busy.rcpt_replies["bob@acme.example"] = "451 4.3.0 mailbox busy"
        else:
            busy.data_reply = "451 4.3.0 try later"
        second = Recorder()
        port1 = await relay_lab.serve(busy)
        port2 = await relay_lab.serve(second)
        gw = await relay_lab.gateway({"acme": [route(port1, priority=10), route(port2, priority=20)]})
        gw.start()
        await gw.accept()
        await wait_until(lambda: len(second.messages) == 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        assert busy.messages == [] and busy.connections == 1
        assert second.messages[0].rcpts == ["bob@acme.example"]
        await gw.store.close()

    relay_lab.run(scenario())


def test_all_routes_down_deferred_with_backoff_then_delivered(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        port = free_port()
        gw = await relay_lab.gateway({"acme": [route(port)]})
        gw.start()
        msg = await gw.accept()
        store = gw.store
        assert isinstance(store, SqliteStore)

        async def deferred() -> bool:
            summary = await store.queue_summary()
            return summary.queued == 1 and summary.next_due is not None and summary.next_due > time.time()

        await wait_until_async(deferred)
        summary = await store.queue_summary()
        assert summary.next_due is not None and 0 < summary.next_due - time.time() <= FAST.retry_initial
        tenant = Recorder()
        await relay_lab.serve(tenant, port)
        await wait_until(lambda: len(tenant.messages) == 1, timeout=10)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        assert tenant.messages[0].data == HEADERS + RAW
        assert await store.read_message(msg.queue_id) is None
        await store.close()

    relay_lab.run(scenario())


def test_backoff_doubles_up_to_retry_max() -> None:
    from engine.relay.worker import backoff

    settings = DeliverySettings(retry_initial=60, retry_max=3600)
    assert [backoff(settings, n) for n in (1, 2, 3, 4, 5, 6, 7, 100)] == [60, 120, 240, 480, 960, 1920, 3600, 3600]


# ---------------------------------------------------------------- DSN


def test_5xx_for_one_recipient_bounces_it_with_dsn_others_delivered(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder(rcpt_replies={"gone@acme.example": "550 5.1.1 <gone@acme.example>: no such user"})
        sender_server = Recorder()
        port1 = await relay_lab.serve(tenant)
        port2 = await relay_lab.serve(sender_server)
        gw = await relay_lab.gateway({"acme": [route(port1)], "senders": [route(port2)]})
        gw.start()
        msg = await gw.accept(rcpts=("bob@acme.example", "gone@acme.example"))
        await wait_until(lambda: len(sender_server.messages) == 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        assert [m.rcpts for m in tenant.messages] == [["bob@acme.example"]]

        dsn = sender_server.messages[0]
        assert dsn.mail_from == "<>"
        assert dsn.rcpts == ["alice@sender.example"]
        report = parse(dsn.data)
        assert report.get_content_type() == "multipart/report"
        assert report.get_param("report-type") == "delivery-status"
        assert report["Auto-Submitted"] == "auto-replied"
        assert "MAILER-DAEMON@mxpath.test" in str(report["From"])
        parts = list(report.iter_parts())
        assert [p.get_content_type() for p in parts] == ["text/plain", "message/delivery-status", "text/rfc822-headers"]
        per_message, per_rcpt = status_groups(parts[1])
        assert per_message["reporting-mta"] == "dns; mxpath.test"
        assert per_message["x-liveprism-queue-id"] == msg.queue_id
        assert "arrival-date" in per_message
        assert per_rcpt["final-recipient"] == "rfc822; gone@acme.example"
        assert per_rcpt["action"] == "failed"
        assert per_rcpt["status"] == "5.1.1"
        assert per_rcpt["remote-mta"] == "dns; 127.0.0.1"
        assert per_rcpt["diagnostic-code"] == "smtp; 550 5.1.1 <gone@acme.example>: no such user"
        original_headers = parts[2].get_payload()
        assert isinstance(original_headers, str)
        assert "Subject: quarterly numbers" in original_headers and "Received: from client.example" in original_headers
        assert "X-LivePrism-Action" not in original_headers  # the gateway's verdict fields are not returned
        assert "Hello Bob" not in original_headers
        await gw.store.close()

    relay_lab.run(scenario())


def test_5xx_at_data_bounces_all_recipients(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder(data_reply="554 5.6.0 content refused")
        sender_server = Recorder()
        port1 = await relay_lab.serve(tenant)
        port2 = await relay_lab.serve(sender_server)
        gw = await relay_lab.gateway({"acme": [route(port1)], "senders": [route(port2)]})
        gw.start()
        await gw.accept(rcpts=("bob@acme.example", "carol@acme.example"))
        await wait_until(lambda: len(sender_server.messages) == 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        parts = list(parse(sender_server.messages[0].data).iter_parts())
        _, *recipients = status_groups(parts[1])
        assert [(r["final-recipient"], r["status"]) for r in recipients] == [
            ("rfc822; bob@acme.example", "5.6.0"),
            ("rfc822; carol@acme.example", "5.6.0"),
        ]
        await gw.store.close()

    relay_lab.run(scenario())


def test_no_dsn_for_null_sender(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder(rcpt_replies={"bob@acme.example": "550 5.1.1 no such user"})
        port = await relay_lab.serve(tenant)
        gw = await relay_lab.gateway({"acme": [route(port)]})
        gw.start()
        msg = await gw.accept(mail_from="")
        await wait_until_async(gw.queue_empty)
        # a DSN would have been queued in the transaction that recorded the failure: none was
        await gw.stop()
        assert await gw.queue_empty()
        assert tenant.messages == []
        assert await gw.store.read_message(msg.queue_id) is None
        assert db_count(tmp_path / "state", "SELECT count(*) FROM bodies") == 0
        await gw.store.close()

    relay_lab.run(scenario())


def test_gives_up_after_give_up_after_with_dsn_4_4_7(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        sender_server = Recorder()
        port = await relay_lab.serve(sender_server)
        settings = DeliverySettings(retry_initial=1, retry_max=1, give_up_after=1, connect_timeout=1)
        gw = await relay_lab.gateway({"acme": [route(free_port())], "senders": [route(port)]}, settings=settings)
        gw.start()
        await gw.accept()
        await wait_until(lambda: len(sender_server.messages) == 1, timeout=10)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        parts = list(parse(sender_server.messages[0].data).iter_parts())
        _, per_rcpt = status_groups(parts[1])
        assert per_rcpt["status"] == "4.4.7"
        assert per_rcpt["action"] == "failed"
        assert per_rcpt["diagnostic-code"].startswith("X-LivePrism; 4.4.1 cannot talk to 127.0.0.1:")
        await gw.store.close()

    relay_lab.run(scenario())


# ---------------------------------------------------------------- DNS (DSN to a domain no tenant owns)


def test_for_address_resolves_mx_implicit_mx_null_mx_and_nxdomain(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        settings = await relay_lab.dns(
            {
                ("example.org.", "MX"): ["20 mx2.example.org.", "10 mx1.example.org."],
                ("mx1.example.org.", "A"): ["192.0.2.1"],
                ("mx2.example.org.", "A"): ["192.0.2.2"],
                ("mx2.example.org.", "AAAA"): ["2001:db8::2"],
                ("implicit.example.", "A"): ["192.0.2.9"],
                ("nullmx.example.", "MX"): ["0 ."],
            }
        )
        hops = NextHops(lambda t: [route(2525)] if t == "acme" else [], {"acme.example": "acme"}.get, settings)
        found = await hops.for_address("someone@example.org")
        assert not isinstance(found, NoRoute)
        assert [(h.host, h.port, h.priority) for h in found] == [
            ("192.0.2.1", 25, 10),
            ("192.0.2.2", 25, 20),
            ("2001:db8::2", 25, 20),
        ]
        implicit = await hops.for_address("x@implicit.example")
        assert not isinstance(implicit, NoRoute) and [h.host for h in implicit] == ["192.0.2.9"]
        null_mx = await hops.for_address("x@nullmx.example")
        assert isinstance(null_mx, NoRoute) and null_mx.permanent and null_mx.reason.startswith("5.1.10")
        missing = await hops.for_address("x@nowhere.example")
        assert isinstance(missing, NoRoute) and missing.permanent
        tenant = await hops.for_address("Bob@ACME.example")
        assert not isinstance(tenant, NoRoute) and [h.port for h in tenant] == [2525]

    relay_lab.run(scenario())


def test_configure_switches_resolver_and_mx_port_for_the_next_lookup(relay_lab: RelayLab) -> None:
    """A policy reload that changes `dns` or `delivery.mx_port` takes effect without a restart."""
    async def scenario() -> None:
        old_settings = await relay_lab.dns({("example.org.", "MX"): ["10 mx.example.org."],
                                            ("mx.example.org.", "A"): ["192.0.2.1"]})
        new_settings = await relay_lab.dns({("example.org.", "MX"): ["10 mx.example.org."],
                                            ("mx.example.org.", "A"): ["192.0.2.99"]})
        hops = NextHops(lambda t: [], lambda d: None, old_settings)
        before = await hops.for_address("x@example.org")
        assert not isinstance(before, NoRoute) and [(h.host, h.port) for h in before] == [("192.0.2.1", 25)]
        hops.configure(new_settings, 2626)
        after = await hops.for_address("x@example.org")
        assert not isinstance(after, NoRoute) and [(h.host, h.port) for h in after] == [("192.0.2.99", 2626)]

    relay_lab.run(scenario())


def test_for_address_dns_timeout_is_temporary(relay_lab: RelayLab) -> None:
    async def scenario() -> None:
        silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
        silent.bind(("127.0.0.1", 0))
        settings = DnsSettings.model_validate(
            {"nameservers": ["127.0.0.1"], "port": silent.getsockname()[1], "timeout": 0.2}
        )
        result = await NextHops(lambda t: [], lambda d: None, settings).for_address("x@example.org")
        assert isinstance(result, NoRoute) and not result.permanent and result.reason.startswith("4.4.3")
        silent.close()

    relay_lab.run(scenario())


def test_dsn_to_foreign_domain_goes_to_its_mx(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder(rcpt_replies={"bob@acme.example": "550 5.1.1 no such user"})
        remote = Recorder()
        port1 = await relay_lab.serve(tenant)
        port2 = await relay_lab.serve(remote)
        dns_settings = await relay_lab.dns(
            {("faraway.example.", "MX"): ["10 mx.faraway.example."], ("mx.faraway.example.", "A"): ["127.0.0.1"]}
        )
        gw = await relay_lab.gateway({"acme": [route(port1)]}, dns=dns_settings, mx_port=port2)
        gw.start()
        await gw.accept(mail_from="someone@faraway.example")
        await wait_until(lambda: len(remote.messages) == 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        assert remote.messages[0].mail_from == "<>"
        assert remote.messages[0].rcpts == ["someone@faraway.example"]
        await gw.store.close()

    relay_lab.run(scenario())


# ---------------------------------------------------------------- connections and TLS


def test_connection_reused_for_several_messages(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder()
        port = await relay_lab.serve(tenant)
        gw = await relay_lab.gateway({"acme": [route(port)]}, worker_options={"per_destination": 1})
        for n in range(10):
            await gw.accept(rcpts=(f"user{n}@acme.example",))
        worker = gw.start()
        await wait_until(lambda: len(tenant.messages) == 10)
        # and later messages, after the first burst, still use the idle session
        await gw.accept(rcpts=("late@acme.example",))
        await wait_until(lambda: len(tenant.messages) == 11)
        await gw.stop()
        assert tenant.connections == 1
        assert worker.pool.connections_opened == 1
        assert sorted(r for m in tenant.messages for r in m.rcpts) == sorted(
            [f"user{n}@acme.example" for n in range(10)] + ["late@acme.example"]
        )
        await gw.store.close()

    relay_lab.run(scenario())


def test_idle_connection_closed_after_idle_timeout_and_reopened(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder()
        port = await relay_lab.serve(tenant)
        gw = await relay_lab.gateway({"acme": [route(port)]}, worker_options={"idle_timeout": 0.2})
        worker = gw.start()
        await gw.accept()
        await wait_until(lambda: len(tenant.messages) == 1)
        await wait_until(lambda: tenant.disconnections == 1)  # the reaper (every second) closed it
        await gw.accept()
        await wait_until(lambda: len(tenant.messages) == 2)
        await gw.stop()
        assert worker.pool.connections_opened == 2
        await gw.store.close()

    relay_lab.run(scenario())


def test_session_closed_by_the_server_while_idle_is_replaced(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder()
        port = await relay_lab.serve(tenant, timeout=0.3)  # the tenant server drops idle sessions fast
        gw = await relay_lab.gateway({"acme": [route(port)]})
        worker = gw.start()
        await gw.accept()
        await wait_until(lambda: len(tenant.messages) == 1)
        await wait_until(lambda: tenant.disconnections == 1)  # the server dropped the idle session
        await gw.accept()
        await wait_until(lambda: len(tenant.messages) == 2)
        await gw.stop()
        assert worker.pool.connections_opened == 2
        await gw.store.close()

    relay_lab.run(scenario())


@pytest.fixture(scope="module")
def tls_context(tmp_path_factory: pytest.TempPathFactory) -> ssl.SSLContext:
    """A server context with a fresh self-signed certificate (made by the openssl CLI)."""
    directory = tmp_path_factory.mktemp("tls")
    key, cert = directory / "key.pem", directory / "cert.pem"
    try:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=tenant.test",
             "-keyout", str(key), "-out", str(cert)],
            check=True,
            capture_output=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make a test certificate: {exc}")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


def test_tls_required_uses_starttls_with_self_signed_certificate(
    relay_lab: RelayLab, tmp_path: Path, tls_context: ssl.SSLContext
) -> None:
    async def scenario() -> None:
        tenant = Recorder()
        port = await relay_lab.serve(tenant, tls_context=tls_context)
        gw = await relay_lab.gateway({"acme": [route(port, tls=RouteTls.required)]})
        gw.start()
        await gw.accept()
        await wait_until(lambda: len(tenant.messages) == 1)
        await gw.stop()
        assert tenant.messages[0].tls
        assert tenant.messages[0].data == HEADERS + RAW
        await gw.store.close()

    relay_lab.run(scenario())


def test_tls_opportunistic_uses_starttls_when_offered(
    relay_lab: RelayLab, tmp_path: Path, tls_context: ssl.SSLContext
) -> None:
    async def scenario() -> None:
        tenant = Recorder()
        port = await relay_lab.serve(tenant, tls_context=tls_context)
        gw = await relay_lab.gateway({"acme": [route(port, tls=RouteTls.opportunistic)]})
        gw.start()
        await gw.accept()
        await wait_until(lambda: len(tenant.messages) == 1)
        await gw.stop()
        assert tenant.messages[0].tls
        await gw.store.close()

    relay_lab.run(scenario())


def test_tls_required_without_starttls_fails_over(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        plain = Recorder()
        second = Recorder()
        port1 = await relay_lab.serve(plain)
        port2 = await relay_lab.serve(second)
        routes = [
            route(port1, priority=10, tls=RouteTls.required),
            route(port2, priority=20, tls=RouteTls.opportunistic),
        ]
        gw = await relay_lab.gateway({"acme": routes})
        gw.start()
        await gw.accept()
        await wait_until(lambda: len(second.messages) == 1)
        await gw.stop()
        assert plain.messages == [] and plain.connections == 1
        assert not second.messages[0].tls  # opportunistic, and nothing offered
        await gw.store.close()

    relay_lab.run(scenario())


# ---------------------------------------------------------------- restart and release


def test_restart_resumes_delivery(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder(data_delay=0.1)
        port = await relay_lab.serve(tenant)
        gw = await relay_lab.gateway({"acme": [route(port)]}, worker_options={"per_destination": 1})
        expected = []
        for n in range(12):
            expected.append(f"user{n}@acme.example")
            await gw.accept(rcpts=(expected[-1],))
        gw.start()
        await wait_until(lambda: len(tenant.messages) >= 3)
        await gw.stop()  # the attempt in progress finishes; the others are handed back untried
        first_run = len(tenant.messages)
        assert first_run < 12
        await gw.store.close()

        store = await relay_lab.store()
        summary = await store.queue_summary()
        assert (summary.queued, summary.inflight) == (12 - first_run, 0)
        claimed = await store.claim_due(time.time(), 100)  # untried claims were not counted as attempts
        assert {d.attempts for d in claimed.deliveries} == {1}
        await store.close()

        store = await relay_lab.store()  # the claim above is "in flight": reopening recovers it
        gw2 = relay_lab.attach(LabGateway(store, gw.routes, gw.domains, worker_options={"per_destination": 1}))
        gw2.start()
        await wait_until(lambda: len(tenant.messages) == 12)
        await wait_until_async(gw2.queue_empty)
        await gw2.stop()
        assert sorted(r for m in tenant.messages for r in m.rcpts) == sorted(expected)  # each exactly once
        await store.close()

    relay_lab.run(scenario(), timeout=60)


def test_release_by_cli_in_another_process_is_delivered_by_running_worker(relay_lab: RelayLab, tmp_path: Path) -> None:
    async def scenario() -> None:
        tenant = Recorder()
        port = await relay_lab.serve(tenant)
        gw = await relay_lab.gateway({"acme": [route(port)]}, worker_options={"poll_interval": 1.0})
        gw.start()
        msg = await gw.accept(action="quarantine")
        assert (await gw.store.queue_summary()).queued == 0  # a held copy is never queued for delivery
        assert tenant.messages == []
        entry = quarantine_id(msg.queue_id, "acme")
        cli = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            "from engine.cli.quarantine_cmd import quarantine_app; quarantine_app()",
            "release",
            entry,
            "--state",
            str(tmp_path / "state"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await cli.communicate()
        assert cli.returncode == 0, err.decode()
        assert entry in out.decode()
        released_at = time.monotonic()
        await wait_until(lambda: len(tenant.messages) == 1, timeout=5)
        assert time.monotonic() - released_at < 5  # polled every second (generous for a busy machine)
        await gw.stop()
        assert tenant.messages[0].data == HEADERS + RAW
        await gw.store.close()

    relay_lab.run(scenario())


def test_recipient_with_control_characters_fails_alone_and_the_others_are_delivered(
    relay_lab: RelayLab, tmp_path: Path
) -> None:
    """Issue 7 item 6: a recipient queued with a control character (by a version that accepted
    it) fails for good at once, with a DSN; the valid recipient of the same copy is delivered."""

    async def scenario() -> None:
        tenant = Recorder()
        sender_server = Recorder()
        port1 = await relay_lab.serve(tenant)
        port2 = await relay_lab.serve(sender_server)
        gw = await relay_lab.gateway({"acme": [route(port1)], "senders": [route(port2)]})
        gw.start()
        await gw.accept(rcpts=("bo\x01b@acme.example", "carol@acme.example"))
        await wait_until(lambda: len(sender_server.messages) == 1)
        await wait_until_async(gw.queue_empty)
        await gw.stop()
        assert [m.rcpts for m in tenant.messages] == [["carol@acme.example"]]
        _, per_rcpt = status_groups(list(parse(sender_server.messages[0].data).iter_parts())[1])
        assert per_rcpt["status"] == "5.1.3"
        await gw.store.close()

    relay_lab.run(scenario())
