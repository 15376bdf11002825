"""Backend-neutral contract tests: every test runs on the embedded SQLite store AND on PostgreSQL
(the `backend` fixture), for the parts of the contract the SQLite-bound tests check through
SQLite internals (see test_contract_suite.py), and for the methods they do not cover."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest

from engine.store.base import Accepted, AttemptRecord, QuarantineEntry, RcptState, Store, StoreError
from engine.store.postgres import PostgresStore
from tests.store_postgres.conftest import Backend, run
from tests.support.messages import STORED_RAW as RAW
from tests.support.messages import accepted as message
from tests.support.messages import copy_plan as copy

BIG = b"From: a@sender.example\r\nSubject: big\r\n\r\n" + bytes(range(256)) * 6000 + b"\r\n"  # 1.5 MB, every byte


def _protocol_check() -> None:
    """mypy --strict proves PostgresStore implements the Store protocol (this is never called)."""
    _: type[Store] = PostgresStore


def spooled(store: Store, msg: Accepted, raw: bytes = BIG) -> Accepted:
    """`msg` as the SMTP layer hands over a large message: its bytes in a file in the spool."""
    path = store.spool_dir / f"incoming-{msg.queue_id}"
    path.write_bytes(raw)
    return replace(msg, raw=b"", body=path, body_size=len(raw))


def test_accept_is_committed_before_it_returns(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        msg = message(copy("acme", "deliver", "b@acme.example"), copy("beta", "quarantine", score=7.5))
        await store.accept(msg)
        assert backend.committed_queue_ids() == {msg.queue_id}  # another connection sees it: committed
        other = await backend.open("node-b")
        info = await other.message_info(msg.queue_id)
        assert info is not None and info.envelope == msg.envelope and info.verdict == msg.verdict
        assert info.size == len(RAW) and info.archived_at is not None and info.subject == "Hello"
        assert await other.read_message(msg.queue_id) == RAW
        (held,) = await other.list_quarantine()
        assert (held.tenant, held.score, held.status) == ("beta", 7.5, "held")
        (delivery,) = (await other.claim_due(time.time(), 10)).deliveries
        assert (delivery.tenant, delivery.pending, delivery.attempts, delivery.raw) == (
            "acme", ("b@acme.example",), 1, RAW)
        assert await other.list_archive(since=0) == [msg.queue_id]
        await other.close()
        await store.close()

    run(scenario())


def test_a_duplicate_fails_alone_in_its_batch(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        first = message(copy("acme", "deliver"))
        await store.accept(first)
        good = [message(copy("acme", "deliver"), raw=RAW + f"{n}\r\n".encode()) for n in range(20)]
        results = await asyncio.gather(*(store.accept(m) for m in [*good[:10], first, *good[10:]]),
                                       return_exceptions=True)
        assert isinstance(results[10], StoreError)
        assert [r for i, r in enumerate(results) if i != 10] == [None] * 20
        assert backend.committed_queue_ids() == {first.queue_id, *(m.queue_id for m in good)}
        assert await store.read_message(first.queue_id) == RAW  # the first copy is untouched
        await store.close()

    run(scenario())


def test_in_flight_deliveries_are_due_again_after_a_restart(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        await store.accept(message(copy("acme", "deliver")))
        (first,) = (await store.claim_due(time.time(), 10)).deliveries
        assert (await store.claim_due(time.time(), 10)).deliveries == ()  # in flight: not handed out twice
        await store.close()  # no record_attempt: as if the relay had died mid-attempt
        backend.opened.clear()
        store = await backend.open()  # the same node starting again
        await store.requeue_inflight(time.time())  # the relay's start
        (again,) = (await store.claim_due(time.time(), 10)).deliveries
        assert (again.id, again.attempts) == (first.id, 2)
        await store.close()

    run(scenario())


def test_a_spooled_message_round_trips_byte_exact(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        msg = spooled(store, message(copy("acme", "deliver", "b@acme.example"), archive=False))
        await store.accept(msg)
        assert msg.body is not None and not msg.body.exists()  # taken over
        assert await store.read_message(msg.queue_id) == BIG
        info = await store.message_info(msg.queue_id)
        assert info is not None and info.size == len(BIG)
        large = await store.open_message(msg.queue_id)
        assert large is not None
        with large:
            pieces = []
            while piece := large.read(65536):
                pieces.append(piece)
            assert b"".join(pieces) == BIG
        small = message(copy("acme", "deliver", "c@acme.example"), archive=False)
        await store.accept(small)
        source = await store.open_message(small.queue_id)
        assert source is not None and source.read() == RAW
        source.close()
        claimed = {d.queue_id: d for d in (await store.claim_due(time.time(), 10)).deliveries}
        assert claimed[msg.queue_id].raw is None and claimed[small.queue_id].raw == RAW  # large: not with the claim
        for delivery in claimed.values():
            done = tuple(RcptState(r.rcpt, "delivered", "250 ok", "mx:25") for r in delivery.rcpts)
            await store.record_attempt(AttemptRecord(delivery.id, done, "", time.time(), None))
        assert await store.read_message(msg.queue_id) is None
        assert await store.open_message(msg.queue_id) is None
        assert backend.committed_queue_ids() == set()
        await store.close()

    run(scenario())


def test_rate_take_counts_exactly_up_to_the_limit(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        now = time.time()
        limits = (("tenant:acme", 3), ("sender:bob@acme.example", 10))
        assert await store.rate_exceeded(limits, now, 3600) is None
        taken = await asyncio.gather(*(store.rate_take(limits, now, 3600) for _ in range(10)))
        assert taken.count(None) == 3 and set(taken) == {None, "tenant:acme"}
        assert await store.rate_exceeded(limits, now, 3600) == "tenant:acme"
        assert await store.rate_take((("sender:bob@acme.example", 10),), now, 3600) is None  # 3 + 1 of 10
        assert await store.rate_take(limits, now + 3601, 3600) is None  # the window slid past them
        assert await store.rate_take((), now, 3600) is None and await store.rate_exceeded((), now, 3600) is None
        await store.close()

    run(scenario())


def test_mta_sts_and_dsn_memory(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        now = time.time()
        assert await store.mta_sts_policy("example.org", now) is None
        await store.save_mta_sts_policy("example.org", '{"mode":"testing"}', now + 60)
        await store.save_mta_sts_policy("example.org", '{"mode":"enforce"}', now + 60)  # replaces
        assert await store.mta_sts_policy("example.org", now) == '{"mode":"enforce"}'
        assert await store.mta_sts_policy("example.org", now + 61) is None  # expired
        msg = message(copy("acme", "deliver"), archive=False)
        await store.accept(msg)
        (delivery,) = (await store.claim_due(time.time(), 10)).deliveries
        assert not await store.dsn_sent(msg.queue_id)
        dsn = message(copy("acme", "deliver", "a@sender.example", route_by="address"), archive=False,
                      mail_from="")
        failed = (RcptState(delivery.rcpts[0].rcpt, "failed", "550 5.1.1 unknown", "mx:25"),)
        await store.record_attempt(AttemptRecord(delivery.id, failed, "", now, dsn))
        assert await store.dsn_sent(msg.queue_id)
        await store.close()

    run(scenario())


def test_queue_listing_flush_and_summary(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        now = time.time()
        deferred = message(copy("acme", "deliver", "b@acme.example", "e@acme.example"), archive=False)
        fresh = message(copy("beta", "deliver", "c@beta.example"), archive=False)
        await store.accept(deferred)
        (delivery,) = (await store.claim_due(time.time(), 10)).deliveries
        assert (await store.queue_summary()).inflight == 1
        [entry] = await store.list_queue()
        assert entry.state == "inflight"
        await store.record_attempt(AttemptRecord(
            delivery.id, (RcptState("b@acme.example", "delivered", "250 ok", "mx:25"),
                          RcptState("e@acme.example", "pending", "451 4.3.0 later", "mx:25")),
            "451 4.3.0 later", now + 3600, None))
        await store.accept(fresh)
        listed = await store.list_queue()
        assert [e.queue_id for e in listed] == [fresh.queue_id, deferred.queue_id]  # due first
        assert listed[1].attempts == 1 and listed[1].last_error == "451 4.3.0 later"
        assert [e.queue_id for e in await store.list_queue(tenant="acme")] == [deferred.queue_id]
        summary = await store.queue_summary()
        assert (summary.queued, summary.inflight) == (2, 0)
        assert await store.flush_queue(time.time(), tenant="beta") == 0  # due already
        assert await store.flush_queue(time.time()) == 1
        assert {d.queue_id for d in (await store.claim_due(time.time(), 10)).deliveries} == {
            deferred.queue_id, fresh.queue_id}
        await store.close()

    run(scenario())


def test_a_released_copy_is_claimed_once_by_another_store(backend: Backend) -> None:
    async def scenario() -> None:
        first = await backend.open("node-a")
        second = await backend.open("node-b")
        msg = message(copy("acme", "quarantine", "b@acme.example"))
        await first.accept(msg)
        (entry,) = await second.list_quarantine()
        outcomes = await asyncio.gather(second.release_quarantine(entry.id, time.time()),
                                        first.release_quarantine(entry.id, time.time()))
        assert sorted(type(o).__name__ for o in outcomes) == ["QuarantineEntry", "QuarantineRefusal"]
        claims = await asyncio.gather(first.claim_due(time.time(), 10), second.claim_due(time.time(), 10))
        assert [d.queue_id for c in claims for d in c.deliveries] == [msg.queue_id]
        released = await first.get_quarantine(entry.id)
        assert isinstance(released, QuarantineEntry) and released.status == "released"
        await second.close()
        await first.close()

    run(scenario())


def test_a_closed_store_refuses_accepts(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        await store.close()
        with pytest.raises(StoreError):
            await store.accept(message(copy("acme", "deliver")))

    run(scenario())


ZERO_COUNTERS = {"stale_records": 0, "leases_taken_over": 0, "leases_lost": 0}
LEASE = 300.0  # PostgresStore's default lease_seconds


def test_renew_leases_renews_the_claims_not_yet_recorded(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        for _ in range(3):
            await store.accept(message(copy("acme", "deliver"), archive=False))
        assert await store.renew_leases(time.time()) == 0  # nothing claimed yet
        claimed = (await store.claim_due(time.time(), 2)).deliveries
        assert len(claimed) == 2
        leased = len(claimed) if backend.kind == "postgres" else 0  # SQLite: one relay, no leases
        assert await store.renew_leases(time.time()) == leased
        done = tuple(RcptState(r.rcpt, "delivered", "250 ok", "mx:25") for r in claimed[0].rcpts)
        await store.record_attempt(AttemptRecord(claimed[0].id, done, "", time.time(), None))
        assert await store.renew_leases(time.time()) == (1 if backend.kind == "postgres" else 0)  # recorded: gone
        await store.close()

    run(scenario())


def test_check_writable_passes_on_an_open_store_and_raises_once_closed(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open()
        await store.check_writable()
        other = await backend.open("node-b")  # SQLite: a non-owner (the relay, the quarantine CLI)
        await other.check_writable()
        await other.close()
        with pytest.raises(StoreError):
            await other.check_writable()
        await store.check_writable()  # the other's close left this one alone
        await store.close()
        with pytest.raises(StoreError):
            await store.check_writable()

    run(scenario())


def test_node_id_is_the_cluster_node_or_empty_on_a_single_box(backend: Backend) -> None:
    async def scenario() -> None:
        store = await backend.open("node-a")
        assert store.node_id == ("node-a" if backend.kind == "postgres" else "")
        with pytest.raises(AttributeError):  # read-only
            store.node_id = "node-z"  # type: ignore[misc]
        await store.close()

    run(scenario())


def test_cluster_counters_count_takeovers_lost_leases_and_stale_records(backend: Backend) -> None:
    async def scenario() -> None:
        a = await backend.open("node-a")
        b = await backend.open("node-b")
        assert a.cluster_counters() == b.cluster_counters() == ZERO_COUNTERS
        await a.accept(message(copy("acme", "deliver"), archive=False))
        now = time.time()
        (mine,) = (await a.claim_due(now, 10)).deliveries
        late = now + LEASE + 1  # A hung past its lease
        taken = (await b.claim_due(late, 10)).deliveries
        assert await a.renew_leases(late) == 0  # PostgreSQL: taken over, so lost; SQLite: no leases
        done = tuple(RcptState(r.rcpt, "delivered", "250 ok", "mx:25") for r in mine.rcpts)
        await a.record_attempt(AttemptRecord(mine.id, done, "", late, None))
        if backend.kind == "postgres":
            assert [d.id for d in taken] == [mine.id]
            assert a.cluster_counters() == {"stale_records": 1, "leases_taken_over": 0, "leases_lost": 1}
            assert b.cluster_counters() == {"stale_records": 0, "leases_taken_over": 1, "leases_lost": 0}
        else:
            assert taken == ()  # in flight: never handed out twice, however late
            assert a.cluster_counters() == b.cluster_counters() == ZERO_COUNTERS
            assert (await b.queue_summary()).inflight == 0  # A's record applied
        await b.close()
        await a.close()

    run(scenario())
