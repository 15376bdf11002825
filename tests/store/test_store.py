"""The embedded store (SQLite + files): durability, recovery, group commit, quarantine, purge."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from engine.graph.verdict import Hit
from engine.store import open_store
from engine.store.base import (
    Accepted,
    AttemptRecord,
    QuarantineEntry,
    QuarantineRefusal,
    RcptState,
    StoreError,
    new_queue_id,
)
from engine.store.sqlite import DB_NAME, SqliteStore, quarantine_id
from tests.support.messages import STORED_RAW, accepted, copy_plan

T = TypeVar("T")
DAY = 86_400.0


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def opened(state: Path, *, owner: bool = True) -> SqliteStore:
    store = open_store(state, owner=owner)
    assert isinstance(store, SqliteStore)
    await store.open()
    return store


def db_rows(state: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows seen by an independent connection: what is committed, not what a cache holds."""
    conn = sqlite3.connect(state / DB_NAME)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def stored_bodies(state: Path) -> dict[str, bytes]:
    """queue id -> raw message, as committed."""
    return {qid: bytes(raw) for qid, raw in db_rows(state, "SELECT queue_id, raw FROM bodies")}


# ---------------------------------------------------------------- queue ids


def test_queue_ids_are_unique_time_sortable_and_alphanumeric() -> None:
    ids = [new_queue_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(re.fullmatch(r"[0-9A-Z]{16}", i) for i in ids)
    time.sleep(0.002)
    assert new_queue_id()[:9] > ids[0][:9]  # the leading part is the time


# ---------------------------------------------------------------- accept


def test_accept_commits_message_and_every_row_before_returning(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> Accepted:
        store = await opened(state)
        msg = accepted(
            copy_plan("acme", "deliver", "b@acme.example", "c@acme.example"),
            copy_plan("beta", "tag", "d@beta.example"),
            copy_plan("gamma", "quarantine", "e@gamma.example", score=7.5),
            copy_plan("delta", "discard", "f@delta.example"),
        )
        await store.accept(msg)
        # checked before close, through other connections: durable already
        assert stored_bodies(state) == {msg.queue_id: STORED_RAW}
        assert db_rows(state, "SELECT queue_id, size, subject FROM messages") == [
            (msg.queue_id, len(STORED_RAW), "Hello")]
        assert db_rows(state, "SELECT tenant, route_by, state FROM deliveries ORDER BY tenant") == [
            ("acme", "tenant", "queued"),
            ("beta", "tenant", "queued"),
        ]
        assert db_rows(state, "SELECT id, status, score FROM quarantine") == [
            (quarantine_id(msg.queue_id, "gamma"), "held", 7.5)
        ]
        assert db_rows(state, "SELECT queue_id FROM archive") == [(msg.queue_id,)]
        assert db_rows(state, "PRAGMA journal_mode") == [("wal",)]
        await store.close()
        return msg

    msg = run(scenario())

    async def reopen() -> None:
        store = await opened(state)
        assert store.recovery is not None and store.recovery.requeued == 0
        info = await store.message_info(msg.queue_id)
        assert info is not None
        assert info.envelope == msg.envelope
        assert info.verdict == msg.verdict and info.policy_version == "v1" and info.archived_at is not None
        assert await store.read_message(msg.queue_id) == STORED_RAW
        claimed = await store.claim_due(time.time(), 10)
        by_tenant = {d.tenant: d for d in claimed.deliveries}
        assert set(by_tenant) == {"acme", "beta"}
        assert by_tenant["acme"].pending == ("b@acme.example", "c@acme.example")
        assert by_tenant["acme"].headers == b"X-Tenant: acme\r\n"
        assert by_tenant["acme"].attempts == 1
        await store.close()

    run(reopen())


def test_message_nothing_references_is_not_stored(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "state")
        msg = accepted(copy_plan("acme", "discard"), archive=False)
        await store.accept(msg)
        assert await store.read_message(msg.queue_id) is None
        assert stored_bodies(tmp_path / "state") == {}
        await store.close()

    run(scenario())


def test_outbound_copies_are_routed_by_recipient_domain(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "state")
        plan = copy_plan("acme", "deliver", "x@one.example", "y@two.example", "z@ONE.example", route_by="address")
        await store.accept(accepted(plan, direction="outbound"))
        claimed = await store.claim_due(time.time(), 10)
        assert sorted((d.route_by, d.pending) for d in claimed.deliveries) == [
            ("address", ("x@one.example", "z@ONE.example")),
            ("address", ("y@two.example",)),
        ]
        await store.close()

    run(scenario())


def test_a_released_outbound_copy_goes_to_the_mx_of_each_recipient_domain(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "state")
        plan = copy_plan("acme", "quarantine", "x@one.example", "y@two.example", route_by="address")
        msg = accepted(plan, direction="outbound", mail_from="bob@acme.example")
        await store.accept(msg)
        await store.release_quarantine(quarantine_id(msg.queue_id, "acme"), time.time())
        claimed = await store.claim_due(time.time(), 10)
        assert sorted((d.route_by, d.pending) for d in claimed.deliveries) == [
            ("address", ("x@one.example",)),
            ("address", ("y@two.example",)),
        ]
        await store.close()

    run(scenario())


def test_concurrent_accepts_are_group_committed(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        before = store.stats
        msgs = [accepted(copy_plan("acme", "deliver"), raw=STORED_RAW + f"{n}\r\n".encode()) for n in range(100)]
        await asyncio.gather(*(store.accept(m) for m in msgs))
        stats = store.stats
        assert stats.messages_written - before.messages_written == 100
        assert stats.batches - before.batches < 100  # one WAL fsync per batch, not per message
        assert len(db_rows(state, "SELECT 1 FROM messages")) == 100
        assert len(db_rows(state, "SELECT 1 FROM deliveries")) == 100
        assert stored_bodies(state) == {m.queue_id: m.raw for m in msgs}
        await store.close()

    run(scenario())


def test_a_batch_of_accepts_stores_exactly_the_rows_of_one_by_one_accepts(tmp_path: Path) -> None:
    """Batched accepts use multi-row INSERTs; the rows must be those of the one-at-a-time path."""
    msgs = [
        accepted(copy_plan("acme", "deliver"), copy_plan("globex", "quarantine", "x@globex.example", score=7.0)),
        accepted(copy_plan("acme", "tag", "a@acme.example", "b@acme.example"), archive=False),
        accepted(copy_plan("globex", "quarantine")),
        accepted(copy_plan("out", "deliver", "p@one.example", "q@two.example", "r@one.example", route_by="address"),
                direction="outbound"),
        *(accepted(copy_plan("acme", "deliver"), raw=STORED_RAW + f"{n}\r\n".encode())
          for n in range(150)),  # > one chunk
    ]

    def tables(state: Path) -> dict[str, list[tuple[Any, ...]]]:
        return {
            "bodies": sorted(db_rows(state, "SELECT * FROM bodies")),
            "messages": sorted(db_rows(state, "SELECT * FROM messages")),
            "archive": sorted(db_rows(state, "SELECT * FROM archive")),
            "deliveries": sorted(db_rows(state, "SELECT queue_id, tenant, route_by, mail_from, rcpts, headers,"
                                                " subject_prefix, created_at, state, next_attempt_at FROM deliveries")),
            "quarantine": sorted(db_rows(state, "SELECT * FROM quarantine")),
        }

    async def one_by_one() -> None:
        store = await opened(tmp_path / "single")
        for msg in msgs:
            await store.accept(msg)
        await store.close()

    async def batched() -> None:
        store = await opened(tmp_path / "batched")
        before = store.stats.batches
        await asyncio.gather(*(store.accept(msg) for msg in msgs))
        assert store.stats.batches - before < len(msgs)
        await store.close()

    run(one_by_one())
    run(batched())
    single, batch = tables(tmp_path / "single"), tables(tmp_path / "batched")
    assert len(single["bodies"]) == len(msgs) and len(single["archive"]) == len(msgs) - 1
    assert len(single["quarantine"]) == 2
    assert len(single["deliveries"]) == 1 + 1 + 0 + 2 + 150  # the outbound copy: one row per recipient domain
    assert batch == single


def test_a_failing_operation_does_not_undo_its_batch(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "state")
        good = accepted(copy_plan("acme", "deliver"))
        duplicate = accepted(copy_plan("acme", "deliver"))
        await store.accept(duplicate)
        bogus = AttemptRecord(12345, (), "", time.time(), None)  # fails inside the transaction (savepoint)
        results = await asyncio.gather(
            store.accept(good), store.accept(duplicate), store.record_attempt(bogus), return_exceptions=True
        )
        assert results[0] is None
        assert isinstance(results[1], StoreError) and "UNIQUE constraint failed" in str(results[1])
        assert isinstance(results[2], StoreError) and "delivery 12345 does not exist" in str(results[2])
        assert await store.read_message(good.queue_id) == STORED_RAW
        assert await store.read_message(duplicate.queue_id) == STORED_RAW  # the first copy is untouched
        await store.close()

    run(scenario())


def test_every_submitted_operation_is_settled(tmp_path: Path) -> None:
    """No caller hangs: not after an operation raising something odd (StopIteration cannot be set
    on a future; SystemExit is no Exception), and not when submitting while the store closes."""
    def stop_iteration(txn: Any) -> None:
        raise StopIteration

    def system_exit(txn: Any) -> None:
        raise SystemExit(3)

    async def scenario() -> None:
        store = await opened(tmp_path / "state")
        good = accepted(copy_plan("acme", "deliver"))
        results = await asyncio.wait_for(
            asyncio.gather(store._submit(stop_iteration), store.accept(good), return_exceptions=True), 10
        )
        assert isinstance(results[0], StoreError) and results[1] is None
        odd = await asyncio.wait_for(asyncio.gather(store._submit(system_exit), return_exceptions=True), 10)
        assert isinstance(odd[0], StoreError | SystemExit)
        later = accepted(copy_plan("acme", "deliver"))
        await asyncio.wait_for(store.accept(later), 10)  # the writer survived
        closing = asyncio.ensure_future(store.close())
        await asyncio.sleep(0)
        with pytest.raises(StoreError):
            await asyncio.wait_for(store.accept(accepted(copy_plan("acme", "deliver"))), 10)
        await closing
        assert set(stored_bodies(tmp_path / "state")) == {good.queue_id, later.queue_id}

    run(scenario())


def test_write_failure_raises_store_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "state")
        msg = accepted(copy_plan("acme", "deliver"))
        db_rows(tmp_path / "state", "DROP TABLE deliveries")  # the database refuses the write
        with pytest.raises(StoreError, match="store write failed"):
            await store.accept(msg)
        assert await store.message_info(msg.queue_id) is None
        assert await store.read_message(msg.queue_id) is None  # no half-stored message
        await store.close()

    run(scenario())


def test_one_owner_at_a_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("engine.store.sqlite.store.LOCK_WAIT", 0.3)  # a second owner waits, then gives up

    async def scenario() -> None:
        first = await opened(tmp_path / "state")
        with pytest.raises(StoreError, match="in use"):
            await opened(tmp_path / "state")
        reviewer = await opened(tmp_path / "state", owner=False)  # the CLI may open it meanwhile
        await reviewer.close()
        await first.close()

    run(scenario())


# ---------------------------------------------------------------- crash recovery


def test_non_owners_never_run_recovery(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        kept = accepted(copy_plan("acme", "deliver"))
        await store.accept(kept)
        await store.close()
        reviewer = await opened(state, owner=False)
        assert reviewer.recovery is None
        assert await reviewer.read_message(kept.queue_id) == STORED_RAW
        await reviewer.close()

    run(scenario())


def test_in_flight_deliveries_are_due_again_after_a_crash(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        await store.accept(accepted(copy_plan("acme", "deliver")))
        first = await store.claim_due(time.time(), 10)
        assert len(first.deliveries) == 1
        assert (await store.claim_due(time.time(), 10)).deliveries == ()  # in flight: not handed out twice
        await store.close()  # no record_attempt: as if the process had died mid-attempt
        store = await opened(state)
        assert store.recovery is not None and store.recovery.requeued == 1
        again = await store.claim_due(time.time(), 10)
        assert [d.id for d in again.deliveries] == [first.deliveries[0].id]
        assert again.deliveries[0].attempts == 2
        await store.close()

    run(scenario())


KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys, time
    from pathlib import Path
    from engine.policy.models import Action
    from engine.store.base import Accepted, CopyPlan, StoredEnvelope, new_queue_id
    from engine.store import open_store

    async def acceptor(store, n):
        while True:
            qid = new_queue_id()
            raw = (f"Subject: {qid}\\r\\n\\r\\n" + "x" * 2000 + "\\r\\n").encode()
            env = StoredEnvelope("a@sender.example", ("b@acme.example",), "192.0.2.1", "h", time.time())
            plan = CopyPlan("acme", ("b@acme.example",), Action.deliver, b"")
            await store.accept(Accepted(qid, raw, env, "", "v", {}, (plan,), archive=n % 2 == 0))
            print(qid, flush=True)  # acknowledged: the SMTP layer would say 250 now

    async def main():
        store = open_store(Path(sys.argv[1]))
        await store.open()
        await asyncio.gather(*(acceptor(store, n) for n in range(20)))

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("acknowledged_before_kill", [1, 150, 600])
def test_kill_9_loses_nothing_acknowledged(tmp_path: Path, acknowledged_before_kill: int) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None
    acked: list[str] = []
    while len(acked) < acknowledged_before_kill:
        line = proc.stdout.readline()
        assert line, proc.stderr.read().decode() if proc.stderr else "acceptor died"
        acked.append(line.decode().strip())
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()
    acked += rest.decode().split()  # printed before the kill landed: acknowledged too

    async def check() -> None:
        store = await opened(state)
        for qid in acked:
            raw = await store.read_message(qid)
            assert raw is not None and raw.startswith(f"Subject: {qid}\r\n".encode()), qid
            assert await store.message_info(qid) is not None, qid
        summary = await store.queue_summary()
        indexed = {row[0] for row in db_rows(state, "SELECT queue_id FROM messages")}
        assert set(acked) <= indexed
        assert summary.queued == len(indexed) and summary.inflight == 0
        assert set(stored_bodies(state)) == indexed  # every message whole: body and rows, or nothing
        await store.close()

    run(check())


# ---------------------------------------------------------------- delivery records


def test_record_attempt_reschedules_then_finishes_and_deletes_the_file(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        msg = accepted(copy_plan("acme", "deliver", "b@acme.example", "c@acme.example"), archive=False)
        await store.accept(msg)
        (delivery,) = (await store.claim_due(time.time(), 10)).deliveries
        later = time.time() + 60
        partial = (
            RcptState("b@acme.example", "delivered", "250 2.0.0 ok", "mx:25"),
            RcptState("c@acme.example", "pending", "451 4.3.0 busy", "mx:25"),
        )
        await store.record_attempt(AttemptRecord(delivery.id, partial, "451 4.3.0 busy", later, None))
        summary = await store.queue_summary()
        assert (summary.queued, summary.inflight, summary.next_due) == (1, 0, later)
        assert (await store.claim_due(time.time(), 10)).deliveries == ()  # not due yet
        (again,) = (await store.claim_due(later, 10)).deliveries
        assert again.pending == ("c@acme.example",) and again.attempts == 2 and again.last_error == "451 4.3.0 busy"
        done = (partial[0], RcptState("c@acme.example", "delivered", "250 ok", "mx:25"))
        await store.record_attempt(AttemptRecord(again.id, done, "", later, None))
        assert await store.queue_summary() == type(summary)(0, 0, None)
        assert await store.read_message(msg.queue_id) is None
        assert msg.queue_id not in stored_bodies(state)
        assert db_rows(state, "SELECT count(*) FROM messages") == [(0,)]
        await store.close()

    run(scenario())


def test_dsn_is_stored_in_the_same_transaction_as_the_bounce(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "state")
        await store.accept(accepted(copy_plan("acme", "deliver"), archive=False))
        (delivery,) = (await store.claim_due(time.time(), 10)).deliveries
        dsn = accepted(copy_plan("acme", "deliver", "a@sender.example", route_by="address"), archive=False,
                       direction="dsn", mail_from="")
        failed = (RcptState(delivery.rcpts[0].rcpt, "failed", "550 5.1.1 unknown", "mx:25"),)
        await store.record_attempt(AttemptRecord(delivery.id, failed, "", time.time(), dsn))
        (queued,) = (await store.claim_due(time.time(), 10)).deliveries
        assert (queued.queue_id, queued.route_by, queued.mail_from) == (dsn.queue_id, "address", "")
        assert await store.read_message(delivery.queue_id) is None
        assert await store.read_message(dsn.queue_id) == dsn.raw
        await store.close()

    run(scenario())


# ---------------------------------------------------------------- quarantine


def test_quarantine_list_release_delete(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        old = accepted(copy_plan("acme", "quarantine", score=6.5), received_at=time.time() - 3 * DAY, archive=False)
        new = accepted(copy_plan("acme", "quarantine", score=9.0), copy_plan("beta", "quarantine"), archive=False)
        await store.accept(old)
        await store.accept(new)
        held = await store.list_quarantine()
        assert [e.id for e in held] == [
            quarantine_id(old.queue_id, "acme"),
            quarantine_id(new.queue_id, "acme"),
            quarantine_id(new.queue_id, "beta"),
        ]
        first = held[0]
        assert (first.tenant, first.recipients, first.score, first.reason, first.subject) == (
            "acme",
            ("u@acme.example",),
            6.5,
            "score",
            "Hello",
        )
        assert first.hits == (Hit("r1", "rule").to_json(),) and first.mail_from == "a@sender.example"
        assert [e.id for e in await store.list_quarantine(tenant="beta")] == [held[2].id]
        assert [e.id for e in await store.list_quarantine(since=time.time() - DAY)] == [held[1].id, held[2].id]
        assert (await store.claim_due(time.time(), 10)).deliveries == ()  # held mail is not delivered

        released = await store.release_quarantine(held[1].id, time.time())
        assert isinstance(released, QuarantineEntry) and released.status == "released"
        (delivery,) = (await store.claim_due(time.time(), 10)).deliveries
        assert (delivery.queue_id, delivery.tenant, delivery.pending) == (new.queue_id, "acme", ("u@acme.example",))
        assert delivery.headers == b"X-Tenant: acme\r\n" and delivery.subject_prefix is None
        assert await store.release_quarantine(held[1].id, time.time()) == QuarantineRefusal(held[1].id, "not-held")
        assert await store.delete_quarantine("NOPE-acme", time.time()) == QuarantineRefusal("NOPE-acme", "not-found")

        deleted = await store.delete_quarantine(held[0].id, time.time())
        assert isinstance(deleted, QuarantineEntry) and deleted.status == "deleted"
        assert old.queue_id not in stored_bodies(state)  # nothing else referenced it
        assert [e.id for e in await store.list_quarantine()] == [held[2].id]
        every = await store.list_quarantine(status=None)
        assert [(e.id, e.status) for e in every] == [
            (held[0].id, "deleted"),
            (held[1].id, "released"),
            (held[2].id, "held"),
        ]
        await store.delete_quarantine(held[2].id, time.time())
        assert new.queue_id in stored_bodies(state)  # the released copy still needs it
        delivered = tuple(RcptState(r.rcpt, "delivered", "250 ok", "mx:25") for r in delivery.rcpts)
        await store.record_attempt(AttemptRecord(delivery.id, delivered, "", time.time(), None))
        assert new.queue_id not in stored_bodies(state)
        await store.close()

    run(scenario())


def test_release_by_another_connection_is_claimed_by_the_owner(tmp_path: Path) -> None:
    async def scenario() -> None:
        owner = await opened(tmp_path / "state")
        msg = accepted(copy_plan("acme", "quarantine"))
        await owner.accept(msg)
        reviewer = await opened(tmp_path / "state", owner=False)
        assert isinstance(
            await reviewer.release_quarantine(quarantine_id(msg.queue_id, "acme"), time.time()), QuarantineEntry
        )
        await reviewer.close()
        (delivery,) = (await owner.claim_due(time.time(), 10)).deliveries
        assert delivery.queue_id == msg.queue_id
        await owner.close()

    run(scenario())


# ---------------------------------------------------------------- retention


def test_purge_expired_archive_and_quarantine(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        now = time.time()
        archived_old = accepted(copy_plan("acme", "discard"), received_at=now - 400 * DAY)
        archived_new = accepted(copy_plan("acme", "discard"), received_at=now - 10 * DAY)
        pending_old = accepted(copy_plan("acme", "deliver"), received_at=now - 400 * DAY)
        held_old = accepted(copy_plan("acme", "quarantine"), received_at=now - 40 * DAY, archive=False)
        held_new = accepted(copy_plan("acme", "quarantine"), received_at=now - 1 * DAY, archive=False)
        for msg in (archived_old, archived_new, pending_old, held_old, held_new):
            await store.accept(msg)
        result = await store.purge_expired(now, archive_days=365, quarantine_days=30)
        assert (result.archived, result.quarantined, result.messages) == (2, 1, 2)
        remaining = set(stored_bodies(state))
        assert remaining == {archived_new.queue_id, pending_old.queue_id, held_new.queue_id}
        info = await store.message_info(pending_old.queue_id)
        assert info is not None and info.archived_at is None  # out of the archive, still queued
        assert [e.queue_id for e in await store.list_quarantine(status=None)] == [held_new.queue_id]
        await store.close()

    run(scenario())


def test_store_refuses_a_newer_schema(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "state")
        await store.close()
        conn = sqlite3.connect(tmp_path / "state" / DB_NAME)
        conn.execute("PRAGMA user_version = 99")
        conn.close()
        with pytest.raises(StoreError, match="schema 99"):
            await opened(tmp_path / "state")

    run(scenario())


def test_verdicts_round_trip_as_json(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await opened(tmp_path / "state")
        msg = accepted(copy_plan("acme", "quarantine", score=3.25))
        await store.accept(msg)
        stored = db_rows(tmp_path / "state", "SELECT verdict FROM quarantine")[0][0]
        assert json.loads(stored)["score"] == 3.25
        await store.close()

    run(scenario())
