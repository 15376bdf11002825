"""`liveprism queue list|flush` against a real store, with a claim and a failed attempt recorded."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from engine.cli.queue_cmd import queue_app
from engine.store import open_store
from engine.store.base import Accepted, AttemptRecord, RcptState
from tests.support.messages import accepted, copy_plan
from tests.support.processes import invoke

RAW = b"From: alice@example.com\r\nSubject: Quarterly report\r\n\r\nFigures attached.\r\n"
HOUR = 3600.0


def queued(tenant: str, *rcpts: str) -> Accepted:
    return accepted(copy_plan(tenant, "deliver", *rcpts, headers=b"", reason="", hits=()), raw=RAW,
                    mail_from="alice@example.com", client_ip="203.0.113.9", helo="mail.example.com",
                    verdict={"action": "deliver"}, archive=False)


def fill(directory: Path) -> tuple[Accepted, Accepted]:
    """Two queued messages; the acme one was tried once and deferred for an hour."""
    deferred = queued("acme", "bob@acme.example", "eve@acme.example")
    fresh = queued("beta", "carol@beta.example")

    async def run() -> None:
        store = open_store(directory)
        await store.open()
        await store.accept(deferred)
        claimed = await store.claim_due(time.time(), 10)
        (delivery,) = claimed.deliveries
        await store.record_attempt(AttemptRecord(
            delivery.id,
            (RcptState("bob@acme.example", "delivered", "250 ok", "10.0.0.1:25"),
             RcptState("eve@acme.example", "pending", "451 4.3.0 try later", "10.0.0.1:25")),
            "451 4.3.0 try later", time.time() + HOUR, None,
        ))
        await store.accept(fresh)
        await store.close()

    asyncio.run(run())
    return deferred, fresh


def test_list_shows_state_attempts_pending_recipients_and_last_error(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    deferred, fresh = fill(directory)
    code, out = invoke(queue_app, "list", "--state", str(directory))
    assert code == 0, out
    header, first, second, total = out.splitlines()
    assert header.startswith("QUEUE ID") and "LAST ERROR" in header
    assert first.startswith(fresh.queue_id) and "carol@beta.example" in first  # due now, before the deferred one
    assert second.startswith(deferred.queue_id) and "451 4.3.0 try later" in second
    assert "eve@acme.example" in second and "bob@acme.example" not in second  # only the pending recipient
    assert total.startswith("-- 2 deliveries")

    code, out = invoke(queue_app, "list", "--state", str(directory), "--json", "--tenant", "acme")
    (entry,) = json.loads(out)
    assert entry["queue_id"] == deferred.queue_id and entry["attempts"] == 1 and entry["state"] == "queued"
    assert [(r["rcpt"], r["status"]) for r in entry["recipients"]] == [
        ("bob@acme.example", "delivered"), ("eve@acme.example", "pending")]
    assert entry["subject"] == "Quarterly report" and entry["last_error"] == "451 4.3.0 try later"


def test_flush_makes_waiting_deliveries_due_now(tmp_path: Path) -> None:
    directory = tmp_path / "state"
    deferred, _ = fill(directory)
    code, out = invoke(queue_app, "flush", "--state", str(directory), "--tenant", "beta")
    assert code == 0 and out.strip() == "0 waiting deliveries due now"  # beta's copy was due already
    code, out = invoke(queue_app, "flush", "--state", str(directory))
    assert code == 0 and out.strip() == "1 waiting deliveries due now"

    async def due() -> list[str]:
        store = open_store(directory, owner=False)
        await store.open()
        claimed = await store.claim_due(time.time(), 10)
        await store.close()
        return sorted(d.queue_id for d in claimed.deliveries)

    assert deferred.queue_id in asyncio.run(due())


def test_empty_queue_and_missing_store(tmp_path: Path) -> None:
    directory = tmp_path / "state"

    async def create() -> None:
        store = open_store(directory)
        await store.open()
        await store.close()

    asyncio.run(create())
    assert invoke(queue_app, "list", "--state", str(directory)) == (0, "the queue is empty\n")
    code, out = invoke(queue_app, "list", "--state", str(tmp_path / "nowhere"))
    assert code == 1 and "no LivePrism store" in out
