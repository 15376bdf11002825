"""Messages for the tests of this folder (the same shapes as the contract suite's helpers, kept here so
that this folder does not depend on where tests/unit/test_store.py lives)."""

from __future__ import annotations

import time

from engine.graph.verdict import Hit
from engine.mime.raw_headers import header_value
from engine.policy.models import Action, Direction
from engine.store.base import Accepted, CopyPlan, RouteBy, StoredEnvelope, new_queue_id

DAY = 86_400.0
RAW = b"From: a@sender.example\r\nTo: b@acme.example\r\nSubject: Hello\r\n\r\nbody\r\n"


def copy(tenant: str, action: str, *rcpts: str, score: float = 0.0, route_by: RouteBy = "tenant") -> CopyPlan:
    return CopyPlan(
        tenant, rcpts or (f"u@{tenant}.example",), Action(action), f"X-Tenant: {tenant}\r\n".encode(),
        route_by=route_by, reason="score", score=score, hits=(Hit("r1", "rule"),),
    )


def message(
    *copies: CopyPlan,
    archive: bool = True,
    received_at: float | None = None,
    raw: bytes = RAW,
    direction: Direction = Direction.inbound,
    mail_from: str = "a@sender.example",
) -> Accepted:
    rcpts = tuple(r for c in copies for r in c.recipients)
    when = time.time() if received_at is None else received_at
    return Accepted(
        queue_id=new_queue_id(),
        raw=raw,
        envelope=StoredEnvelope(mail_from, rcpts, "192.0.2.7", "client.example", when, direction),
        subject=header_value(raw, "subject") or "",
        policy_version="v1",
        verdict={"action": "deliver", "tenants": sorted(c.tenant for c in copies)},
        copies=copies,
        archive=archive,
    )
