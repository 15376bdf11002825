"""Messages kept as files next to the index (issue 7 item 10): a spooled message is taken over by
`accept` (moved, never copied through memory), read and streamed back, unlinked with its last
reference, and a crash at any moment leaves no message half there and no stray file after the
next owner start."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from engine.store.base import Accepted, AttemptRecord, RcptState, StoreError
from engine.store.sqlite import SqliteStore
from tests.store.test_store import db_rows, opened, run
from tests.support.messages import accepted, copy_plan

BIG = b"From: a@sender.example\r\nSubject: big\r\n\r\n" + b"0123456789abcdef" * 100_000 + b"\r\n"


def spooled(store: SqliteStore, msg: Accepted, raw: bytes = BIG) -> Accepted:
    """`msg` as the SMTP layer hands over a large message: its bytes in a file in the spool."""
    path = store.spool_dir / f"incoming-{msg.queue_id}"
    path.write_bytes(raw)
    return replace(msg, raw=b"", body=path, body_size=len(raw))


def bodies(state: Path) -> list[str]:
    return sorted(os.listdir(state / "bodies"))


def test_a_spooled_message_is_moved_into_the_store_read_streamed_and_unlinked_with_its_last_reference(
    tmp_path: Path,
) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        msg = spooled(store, accepted(copy_plan("acme", "deliver", "b@acme.example"), archive=False))
        await store.accept(msg)
        assert msg.body is not None and not msg.body.exists()  # moved, not copied
        assert bodies(state) == [msg.queue_id]
        assert oct((state / "bodies" / msg.queue_id).stat().st_mode & 0o777) == "0o600"
        assert db_rows(state, "SELECT size FROM body_files") == [(len(BIG),)]
        assert db_rows(state, "SELECT count(*) FROM bodies") == [(0,)]
        assert await store.read_message(msg.queue_id) == BIG
        info = await store.message_info(msg.queue_id)
        assert info is not None and info.size == len(BIG)
        source = await store.open_message(msg.queue_id)
        assert source is not None
        with source:
            pieces = iter(lambda: source.read(65536), b"")
            assert b"".join(pieces) == BIG
        (delivery,) = (await store.claim_due(time.time(), 10)).deliveries
        assert delivery.raw is None  # large: never loaded with the claim
        done = (RcptState("b@acme.example", "delivered", "250 ok", "mx:25"),)
        await store.record_attempt(AttemptRecord(delivery.id, done, "", time.time(), None))
        assert bodies(state) == []  # the transaction that dropped the message took its file along
        assert await store.read_message(msg.queue_id) is None
        assert await store.open_message(msg.queue_id) is None
        await store.close()

    run(scenario())


def test_small_messages_stay_in_the_index(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        msg = accepted(copy_plan("acme", "deliver", "b@acme.example"))
        await store.accept(msg)
        assert bodies(state) == []
        source = await store.open_message(msg.queue_id)
        assert source is not None and source.read() == msg.raw
        await store.close()

    run(scenario())


def test_a_refused_commit_leaves_no_file_and_never_touches_another_body(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        first = spooled(store, accepted(copy_plan("acme", "deliver", "b@acme.example")))
        await store.accept(first)
        again = spooled(store, replace(first, body=None), raw=b"Subject: other\r\n\r\nx\r\n")  # same queue id
        try:
            await store.accept(again)
        except StoreError:
            pass
        else:
            raise AssertionError("a duplicate queue id must be refused")
        assert await store.read_message(first.queue_id) == BIG  # the first body is untouched
        assert bodies(state) == [first.queue_id]
        discarded = spooled(store, accepted(copy_plan("acme", "discard", "b@acme.example"), archive=False))
        await store.accept(discarded)  # nothing references it: not stored, the caller removes its file
        assert bodies(state) == [first.queue_id]
        await store.close()

    run(scenario())


def test_owner_start_removes_files_a_crash_left_and_keeps_stored_bodies(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        kept = spooled(store, accepted(copy_plan("acme", "deliver", "b@acme.example")))
        await store.accept(kept)
        await store.close()
        (state / "spool" / "incoming-cut-short").write_bytes(b"half a message")  # never acknowledged
        (state / "bodies" / "0ORPHAN000000000").write_bytes(BIG)  # moved in, rows never committed
        store = await opened(state)
        assert store.recovery is not None and store.recovery.files_removed == 2
        assert os.listdir(state / "spool") == []
        assert bodies(state) == [kept.queue_id]
        assert await store.read_message(kept.queue_id) == BIG
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
            raw = (f"Subject: {qid}\\r\\n\\r\\n" + "x" * 300_000 + "\\r\\n").encode()
            path = store.spool_dir / f"incoming-{qid}"
            path.write_bytes(raw)
            env = StoredEnvelope("a@sender.example", ("b@acme.example",), "192.0.2.1", "h", time.time())
            plan = CopyPlan("acme", ("b@acme.example",), Action.deliver, b"")
            await store.accept(Accepted(qid, b"", env, "", "v", {}, (plan,), archive=n % 2 == 0,
                                        body=path, body_size=len(raw)))
            print(qid, flush=True)  # acknowledged: the SMTP layer would say 250 now

    async def main():
        store = open_store(Path(sys.argv[1]))
        await store.open()
        await asyncio.gather(*(acceptor(store, n) for n in range(8)))

    asyncio.run(main())
    """
)


def test_kill_9_while_accepting_spooled_messages_loses_nothing_acknowledged(tmp_path: Path) -> None:
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(state)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None
    acked: list[str] = []
    try:
        while len(acked) < 40:
            line = proc.stdout.readline()
            assert line, proc.stderr.read().decode() if proc.stderr else "acceptor died"
            acked.append(line.decode().strip())
    finally:
        os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()
    acked += rest.decode().split()

    async def check() -> None:
        store = await opened(state)
        for qid in acked:
            raw = await store.read_message(qid)
            assert raw is not None and raw.startswith(f"Subject: {qid}\r\n".encode()) and len(raw) == 300_031, qid
        indexed = {row[0] for row in db_rows(state, "SELECT queue_id FROM messages")}
        assert set(acked) <= indexed
        assert set(bodies(state)) == indexed == {row[0] for row in db_rows(state, "SELECT queue_id FROM body_files")}
        assert os.listdir(state / "spool") == []  # what was being spooled at the kill is gone
        await store.close()

    run(check())


def test_bodies_survive_concurrent_accepts_and_deliveries(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        msgs = [spooled(store, accepted(copy_plan("acme", "deliver", "b@acme.example"), archive=i % 2 == 0))
                for i in range(10)]
        await asyncio.gather(*(store.accept(m) for m in msgs))
        claimed = (await store.claim_due(time.time(), 20)).deliveries
        assert len(claimed) == 10
        done = (RcptState("b@acme.example", "delivered", "250 ok", "mx:25"),)
        await asyncio.gather(*(store.record_attempt(AttemptRecord(d.id, done, "", time.time(), None))
                               for d in claimed))
        assert bodies(state) == sorted(m.queue_id for i, m in enumerate(msgs) if i % 2 == 0)  # archived ones stay
        await store.close()

    run(scenario())


def test_check_writable_fails_while_a_directory_of_the_state_is_missing(tmp_path: Path) -> None:
    state = tmp_path / "state"

    async def scenario() -> None:
        store = await opened(state)
        await store.check_writable()
        (state / "spool").rmdir()  # removed by hand: no large message could be received
        with pytest.raises(StoreError, match="spool"):
            await store.check_writable()
        (state / "spool").mkdir(mode=0o700)
        await store.check_writable()
        await store.close()

    run(scenario())
