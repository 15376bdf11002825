"""`serve`'s store side of mail-loop detection (issue 7 item 2): which of our own traces mean that
the message came back to where it was delivered. The decision itself is tested in tests/graph/test_graph.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from engine.graph.build.compiler import load_graph
from engine.graph.transaction import Evaluation
from engine.mime.view import parse_message
from engine.policy.models import Direction
from engine.smtp.inbound import InboundHandler
from engine.store import open_store
from engine.store.base import Accepted
from tests.graph.test_graph import POLICY
from tests.support.corpus import CLEAN
from tests.support.messages import accepted, copy_plan
from tests.support.policies import write_policy

TRACE = ("Received: from mail1.acme.example ([192.0.2.7])\r\n\tby mx.test.example (LivePrism) with ESMTP id {qid};\r\n"
         "\tTue, 1 Dec 2026 10:00:00 +0000\r\n")


def _stored(queue_id: str, rcpt: str, direction: Direction) -> Accepted:
    return accepted(copy_plan("acme", "deliver", rcpt, headers=b"", reason="clean", hits=()), queue_id=queue_id,
                    raw=CLEAN, mail_from="alice@sender.example", direction=direction, subject="",
                    policy_version="v", verdict={"action": "deliver"})


def test_only_a_copy_back_to_its_own_recipients_in_the_same_direction_is_returned(tmp_path: Path) -> None:
    loaded = load_graph(write_policy(tmp_path / "policy", POLICY, base=False, dedent=True))
    assert loaded.graph is not None
    graph = loaded.graph

    async def run() -> dict[str, tuple[str, ...]]:
        store = open_store(tmp_path / "state")
        await store.open()
        try:
            await store.accept(_stored("QINBOUND1", "bob@acme.example", Direction.inbound))
            await store.accept(_stored("QOUTBOUND1", "bob@acme.example", Direction.outbound))
            handler = InboundHandler(current_graph=lambda: graph, store=store, relay=None, log_format=lambda: "text")
            found = {}
            for name, qid, rcpt in [("inbound back", "QINBOUND1", "Bob@Acme.example"),
                                    ("forwarded elsewhere", "QINBOUND1", "carol@acme.example"),
                                    ("outbound to a tenant", "QOUTBOUND1", "bob@acme.example"),
                                    ("unknown id", "QNOTSTORED", "bob@acme.example")]:
                evaluation = Evaluation.begin(graph, "192.0.2.7", "client.example", Direction.inbound)
                evaluation.recipients = {"acme": [rcpt]}
                view = parse_message(TRACE.format(qid=qid).encode() + CLEAN)
                found[name] = await handler._returned_copies(view, evaluation)
            return found
        finally:
            await store.close()

    assert asyncio.run(run()) == {
        "inbound back": ("QINBOUND1",),  # a route pointing back at the gateway: a loop at its first return
        "forwarded elsewhere": (),  # a tenant's server forwarding to another address: not a loop
        "outbound to a tenant": (),  # a tenant's outbound mail to another tenant passes twice
        "unknown id": (),
    }
