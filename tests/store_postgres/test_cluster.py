"""What only the cluster backend has: two nodes (two PostgresStore instances, node A and node B) on
one database — leases, takeover, stale records, shared rate limits, quarantine across nodes —,
schema versions, outages of the database, and kill -9 of an accepting process."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from engine.store.base import AttemptRecord, Delivery, QuarantineEntry, RcptState, StoreError
from engine.store.postgres import PostgresStore, latest_version, migrate
from engine.store.postgres.local_cluster import LocalCluster, free_port
from engine.store.postgres.retention import PURGE_BATCH
from tests.store_postgres.conftest import create_database, pg_rows, run, start_cluster
from tests.support.messages import accepted as message
from tests.support.messages import copy_plan as copy

DAY = 86_400.0

LEASE = 300.0


def node(url: str, name: str, tmp: Path, **options: object) -> PostgresStore:
    return PostgresStore(url, node_id=name, spool_dir=tmp / f"spool-{name}", **options)  # type: ignore[arg-type]


def delivered(delivery: Delivery) -> tuple[RcptState, ...]:
    return tuple(RcptState(r.rcpt, "delivered", "250 ok", "mx:25") for r in delivery.rcpts)


def deferred(delivery: Delivery, reply: str) -> tuple[RcptState, ...]:
    return tuple(RcptState(r.rcpt, "pending", reply, "mx:25") for r in delivery.rcpts)


# ---------------------------------------------------------------- leases


def test_a_claimed_delivery_is_not_claimable_by_another_node_until_its_lease_expires(pg_url: str,
                                                                                     tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = node(pg_url, "node-a", tmp_path), node(pg_url, "node-b", tmp_path)
        await a.open()
        await b.open()
        await a.accept(message(copy("acme", "deliver")))
        now = time.time()
        (held,) = (await a.claim_due(now, 10)).deliveries
        assert (await b.claim_due(now, 10)).deliveries == ()
        assert (await b.claim_due(now + LEASE - 1, 10)).deliveries == ()  # still A's
        assert (await b.claim_due(now + LEASE - 1, 10)).next_due == pytest.approx(now + LEASE)  # B wakes then
        (taken,) = (await b.claim_due(now + LEASE + 1, 10)).deliveries
        assert (taken.id, taken.attempts) == (held.id, 2) and b.leases_taken_over == 1
        assert pg_rows(pg_url, "SELECT owner FROM deliveries") == [("node-b",)]
        assert (await a.claim_due(now + LEASE + 2, 10)).deliveries == ()  # B's lease now
        await a.close()
        await b.close()

    run(scenario())


def test_a_late_record_after_a_takeover_does_not_clobber_and_is_counted(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = node(pg_url, "node-a", tmp_path), node(pg_url, "node-b", tmp_path)
        await a.open()
        await b.open()
        msg = message(copy("acme", "deliver", "b@acme.example"), archive=False)
        await a.accept(msg)
        now = time.time()
        (mine,) = (await a.claim_due(now, 10)).deliveries
        (theirs,) = (await b.claim_due(now + LEASE + 1, 10)).deliveries  # A hung past its lease
        await a.record_attempt(AttemptRecord(mine.id, delivered(mine), "", now, None))  # A's late 250
        assert a.stale_records == 1
        assert pg_rows(pg_url, "SELECT state, owner FROM deliveries") == [("inflight", "node-b")]  # B's, untouched
        await b.record_attempt(AttemptRecord(theirs.id, deferred(theirs, "451 4.3.0 busy"), "451 4.3.0 busy",
                                             now + 600, None))
        assert b.stale_records == 0
        (entry,) = await b.list_queue()
        assert (entry.state, entry.last_error, entry.attempts) == ("queued", "451 4.3.0 busy", 2)
        (again,) = (await a.claim_due(now + 601, 10)).deliveries  # due again: any node, here A
        await a.record_attempt(AttemptRecord(again.id, delivered(again), "", now, None))
        assert a.stale_records == 1 and await a.read_message(msg.queue_id) is None  # finished, message gone
        await b.record_attempt(AttemptRecord(theirs.id, delivered(theirs), "", now, None))  # B late: gone
        assert b.stale_records == 1
        await a.close()
        await b.close()

    run(scenario())


def test_renewed_leases_stay_with_their_node(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = node(pg_url, "node-a", tmp_path), node(pg_url, "node-b", tmp_path)
        await a.open()
        await b.open()
        await a.accept(message(copy("acme", "deliver")))
        await a.accept(message(copy("beta", "deliver")))
        now = time.time()
        claimed = (await a.claim_due(now, 10)).deliveries
        assert len(claimed) == 2 and a.held_leases == 2
        assert await a.renew_leases(now + 200) == 2  # heartbeat: now leased until now + 500
        assert (await b.claim_due(now + LEASE + 1, 10)).deliveries == ()
        (taken,) = (await b.claim_due(now + 200 + LEASE + 1, 1)).deliveries  # A stopped renewing
        assert await a.renew_leases(now + 200 + LEASE + 2) == 1 and a.leases_lost == 1
        assert a.held_leases == 1
        await a.record_attempt(AttemptRecord(taken.id, delivered(taken), "", now, None))
        assert a.stale_records == 1
        assert await a.requeue_inflight(now) == 1  # A's remaining own lease; B's is not touched
        assert pg_rows(pg_url, "SELECT state, owner FROM deliveries ORDER BY id") in (
            [("queued", None), ("inflight", "node-b")], [("inflight", "node-b"), ("queued", None)])
        await a.close()
        await b.close()

    run(scenario())


def test_concurrent_claims_of_two_nodes_never_share_a_delivery(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = node(pg_url, "node-a", tmp_path), node(pg_url, "node-b", tmp_path)
        await a.open()
        await b.open()
        await asyncio.gather(*(a.accept(message(copy("acme", "deliver"))) for _ in range(60)))
        now = time.time()
        claims = await asyncio.gather(*(store.claim_due(now, 4) for _ in range(10) for store in (a, b)))
        ids = [d.id for claim in claims for d in claim.deliveries]
        assert len(ids) == len(set(ids)) == 60
        assert pg_rows(pg_url, "SELECT count(DISTINCT lease) FROM deliveries WHERE state = 'inflight'") == [(60,)]
        await a.close()
        await b.close()

    run(scenario())


# ---------------------------------------------------------------- shared state


def test_rate_limit_holds_across_two_nodes_under_concurrency(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = node(pg_url, "node-a", tmp_path, pool_size=5), node(pg_url, "node-b", tmp_path, pool_size=5)
        await a.open()
        await b.open()
        now = time.time()
        limits = (("tenant:acme", 3),)
        taken = await asyncio.gather(*(store.rate_take(limits, now, 3600) for _ in range(25) for store in (a, b)))
        assert taken.count(None) == 3 and taken.count("tenant:acme") == 47
        assert await a.rate_exceeded(limits, now, 3600) == "tenant:acme"
        assert await b.rate_exceeded(limits, now, 3600) == "tenant:acme"
        assert pg_rows(pg_url, "SELECT count(*) FROM outbound_sends") == [(3,)]
        await a.close()
        await b.close()

    run(scenario())


def test_quarantine_accepted_on_a_is_released_on_b_and_claimed_exactly_once(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        a, b = node(pg_url, "node-a", tmp_path), node(pg_url, "node-b", tmp_path)
        await a.open()
        await b.open()
        msg = message(copy("acme", "quarantine", "bob@acme.example", score=8.0))
        await a.accept(msg)
        (entry,) = await b.list_quarantine()
        assert entry.queue_id == msg.queue_id and entry.score == 8.0
        released = await b.release_quarantine(entry.id, time.time())
        assert isinstance(released, QuarantineEntry) and released.status == "released"
        now = time.time()
        claims = await asyncio.gather(*(store.claim_due(now, 10) for _ in range(5) for store in (a, b)))
        got = [(store, d) for store, claim in zip([a, b] * 5, claims, strict=True) for d in claim.deliveries]
        assert len(got) == 1
        store, delivery = got[0]
        assert delivery.queue_id == msg.queue_id and delivery.pending == ("bob@acme.example",)
        await store.record_attempt(AttemptRecord(delivery.id, delivered(delivery), "", now, None))
        assert (await a.queue_summary()).queued == 0 and a.stale_records == b.stale_records == 0
        assert await a.read_message(msg.queue_id) is not None  # still archived
        await a.close()
        await b.close()

    run(scenario())


def test_purge_goes_in_batches(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        store = node(pg_url, "node-a", tmp_path)
        await store.open()
        old = time.time() - 400 * DAY
        count = PURGE_BATCH * 2 + 5
        await asyncio.gather(*(store.accept(message(copy("acme", "discard"), received_at=old)) for _ in range(count)))
        kept = message(copy("acme", "discard"))
        await store.accept(kept)
        result = await store.purge_expired(time.time(), archive_days=365, quarantine_days=30)
        assert (result.archived, result.messages) == (count, count)
        assert await store.list_archive(since=0) == [kept.queue_id]
        await store.close()

    run(scenario())


# ---------------------------------------------------------------- schema versions


def test_a_newer_schema_is_refused(pg_url: str, tmp_path: Path) -> None:
    async def scenario() -> None:
        store = node(pg_url, "node-a", tmp_path)
        await store.open()
        await store.close()
        pg_rows(pg_url, "INSERT INTO schema_version (version, name) VALUES (99, 'from_the_future')")
        with pytest.raises(StoreError, match=f"database schema is version 99, this node knows up to"
                                             f" {latest_version()}: upgrade the node"):
            await node(pg_url, "node-old", tmp_path).open()
        with pytest.raises(StoreError, match="database schema is version 99"):
            await migrate(pg_url)

    run(scenario())


def test_migrate_and_concurrent_first_opens(pg_cluster: LocalCluster, tmp_path: Path) -> None:
    async def scenario() -> None:
        url = create_database(pg_cluster)
        with pytest.raises(StoreError, match="no schema version"):
            await migrate(url, latest_version() + 1)
        result = await migrate(url, 1)
        assert (result.before, result.after) == (0, 1)
        assert (await migrate(url, None)).after == latest_version()
        fresh = create_database(pg_cluster)
        stores = [node(fresh, f"node-{n}", tmp_path) for n in range(6)]
        await asyncio.gather(*(store.open() for store in stores))  # six nodes starting at once
        assert pg_rows(fresh, "SELECT version FROM schema_version") == [(v,) for v in range(1, latest_version() + 1)]
        assert sorted(store.schema.before for store in stores if store.schema) == [0] + [latest_version()] * 5
        await asyncio.gather(*(store.close() for store in stores))

    run(scenario())


# ---------------------------------------------------------------- outages


@pytest.fixture(scope="module")
def own_cluster() -> Iterator[LocalCluster]:
    """A cluster of its own for the tests that stop it."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


def test_stopped_database_makes_accept_fail_fast_and_the_store_resumes_by_itself(own_cluster: LocalCluster,
                                                                                  tmp_path: Path) -> None:
    url = create_database(own_cluster)
    timeout_ms = 3000

    async def scenario() -> None:
        store = node(url, "node-a", tmp_path, statement_timeout_ms=timeout_ms)
        await store.open()
        before = message(copy("acme", "deliver"))
        await store.accept(before)
        await asyncio.to_thread(own_cluster.pg_ctl_stop)
        try:
            for attempt in (store.accept(message(copy("acme", "deliver"))), store.claim_due(time.time(), 10),
                            store.read_message(before.queue_id)):
                started = time.monotonic()
                with pytest.raises(StoreError):
                    await attempt
                assert time.monotonic() - started < timeout_ms / 1000 * 1.5 + 1  # not hanging
        finally:
            await asyncio.to_thread(own_cluster.start)
        after = message(copy("acme", "deliver"))
        await store.accept(after)  # the same store, not reopened
        assert await store.read_message(after.queue_id) is not None
        assert {d.queue_id for d in (await store.claim_due(time.time(), 10)).deliveries} == {
            before.queue_id, after.queue_id}
        await store.close()

    run(scenario())


def test_a_read_only_database_fails_accepts_until_it_is_writable(own_cluster: LocalCluster, tmp_path: Path) -> None:
    url = create_database(own_cluster)

    def read_only(on: bool) -> None:
        with psycopg.connect(own_cluster.url(), autocommit=True) as conn:
            conn.execute(f"ALTER SYSTEM SET default_transaction_read_only = {'on' if on else 'off'}".encode())
            conn.execute("SELECT pg_reload_conf()")
        time.sleep(0.3)  # every backend rereads the configuration

    async def scenario() -> None:
        store = node(url, "node-a", tmp_path)
        await store.open()
        read_only(True)
        try:
            with pytest.raises(StoreError, match="read-only"):
                await store.accept(message(copy("acme", "deliver")))
            with pytest.raises(StoreError, match="read-only"):
                await store.check_writable()
            assert await store.queue_summary() is not None  # reads still work
        finally:
            read_only(False)
        await store.check_writable()
        msg = message(copy("acme", "deliver"))
        await store.accept(msg)
        assert await store.read_message(msg.queue_id) is not None
        await store.close()

    run(scenario())


def test_open_fails_within_the_timeout_when_nothing_listens(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = node(f"postgresql://postgres@127.0.0.1:{free_port()}/postgres", "node-a", tmp_path,
                     statement_timeout_ms=1000)
        started = time.monotonic()
        with pytest.raises(StoreError, match="cannot connect to the store database"):
            await store.open()
        assert time.monotonic() - started < 5
        with pytest.raises(StoreError, match="not open"):
            await store.accept(message(copy("acme", "deliver")))

    run(scenario())


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from engine.policy.models import Action
    from engine.store.base import Accepted, CopyPlan, StoredEnvelope, new_queue_id
    from engine.store.postgres import PostgresStore

    async def acceptor(store, n):
        while True:
            qid = new_queue_id()
            raw = (f"Subject: {qid}\\r\\n\\r\\n" + "x" * 2000 + "\\r\\n").encode()
            env = StoredEnvelope("a@sender.example", ("b@acme.example",), "192.0.2.1", "h", time.time())
            plan = CopyPlan("acme", ("b@acme.example",), Action.deliver, b"")
            await store.accept(Accepted(qid, raw, env, "", "v", {}, (plan,), archive=n % 2 == 0))
            print(qid, flush=True)  # acknowledged: the SMTP layer would say 250 now

    async def main():
        store = PostgresStore(sys.argv[1], node_id="victim", spool_dir=Path(sys.argv[2]))
        await store.open()
        await asyncio.gather(*(acceptor(store, n) for n in range(20)))

    asyncio.run(main())
    """
)


def test_kill_9_loses_nothing_acknowledged(pg_url: str, tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, pg_url, str(tmp_path / "spool")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        while len(acked) < 300:
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode() if proc.stderr else "acceptor died"
            acked.append(line.decode().strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()
    acked += rest.decode().split()
    stored = dict(pg_rows(pg_url, "SELECT m.queue_id, b.raw FROM messages m JOIN bodies b USING (queue_id)"))
    assert set(acked) <= set(stored)
    assert all(bytes(stored[qid]).startswith(f"Subject: {qid}\r\n".encode()) for qid in acked)
    indexed = pg_rows(pg_url, "SELECT count(*) FROM messages")[0][0]
    assert pg_rows(pg_url, "SELECT count(*) FROM deliveries")[0][0] == indexed == len(stored)  # all or nothing
