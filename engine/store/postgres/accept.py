"""Storing accepted messages, and dropping a message once nothing references it.

Contract. `insert_accepts` stores every row of the accepts it is given inside the caller's
transaction, with one `executemany` per table, all in one pipeline (one round trip), parents
first (for the foreign keys): `messages`, then the `bodies` bytea of a message held in memory,
`archive`, `deliveries`, `quarantine`. A spooled message (`Accepted.body`, over 1 MiB) gets no
`bodies` row: `insert_large` stores its rows and then its bytes as `body_chunks` rows of
`CHUNK_SIZE`, read from the spool file one piece at a time (one piece in memory, never the whole
message), in the same transaction. `keeps` tells whether an accept would be referenced at all
(else it is not stored). `drop_unreferenced` deletes, in the caller's transaction, those of the
given messages that no delivery, held quarantine entry or archive row references any more; their
bodies and chunks go with them (ON DELETE CASCADE). It locks the message rows first (FOR UPDATE,
in queue id order), so that a concurrent release on another node (which adds a delivery) either
commits before the check, which then sees the delivery, or waits until the drop is decided.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, LiteralString

from engine.policy.models import Action
from engine.store.base import Accepted, RcptState, RouteBy
from engine.store.postgres.connection import Conn
from engine.store.postgres.rows import domain_of, quarantine_id, rcpts_json, to_json

CHUNK_SIZE = 256 * 1024  # bytes per body_chunks row
_STORED_BODY_ACTIONS = frozenset({Action.deliver, Action.tag, Action.quarantine})  # copies that need the body

_INSERTS: tuple[tuple[str, LiteralString], ...] = (
    ("messages", "INSERT INTO messages VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"),
    ("bodies", "INSERT INTO bodies VALUES (%s, %b)"),
    ("archive", "INSERT INTO archive VALUES (%s, %s)"),
    ("deliveries", "INSERT INTO deliveries (queue_id, tenant, route_by, mail_from, rcpts, headers, subject_prefix,"
     " created_at, next_attempt_at, state) VALUES (%s, %s, %s, %s, %s, %b, %s, %s, %s, 'queued')"),
    ("quarantine", "INSERT INTO quarantine VALUES (%s, %s, %s, %s, %b, %s, %s, %s, %s, %s, %s, %s, 'held', %s)"),
)


@dataclass(slots=True)
class AcceptRows:
    """The rows of accepted messages, per table, in column order."""

    messages: list[tuple[Any, ...]] = field(default_factory=list)
    bodies: list[tuple[Any, ...]] = field(default_factory=list)
    archive: list[tuple[Any, ...]] = field(default_factory=list)
    deliveries: list[tuple[Any, ...]] = field(default_factory=list)
    quarantine: list[tuple[Any, ...]] = field(default_factory=list)

    def add(self, msg: Accepted) -> None:
        env = msg.envelope
        subject = msg.subject
        if msg.body is None:  # a spooled message's bytes go to body_chunks (`insert_large`)
            self.bodies.append((msg.queue_id, msg.raw))
        self.messages.append((
            msg.queue_id, env.received_at, env.mail_from, to_json(list(env.rcpts)), env.client_ip, env.helo,
            str(env.direction), subject, msg.size, msg.policy_version, to_json(dict(msg.verdict)),
        ))
        if msg.archive:
            self.archive.append((msg.queue_id, env.received_at))
        for copy in msg.copies:
            if copy.action in (Action.deliver, Action.tag):
                # A copy for the tenant's routes is one delivery; a copy for the MX of each recipient
                # domain (outbound mail, DSNs) is one delivery row per domain (RFC 5321 §5.1).
                groups: list[tuple[RouteBy, tuple[str, ...]]]
                if copy.route_by == "tenant":
                    groups = [("tenant", copy.recipients)]
                else:
                    by_domain: dict[str, list[str]] = {}
                    for rcpt in copy.recipients:
                        by_domain.setdefault(domain_of(rcpt), []).append(rcpt)
                    groups = [("address", tuple(rcpts)) for rcpts in by_domain.values()]
                for route_by, rcpts in groups:
                    self.deliveries.append((
                        msg.queue_id, copy.tenant, route_by, env.mail_from, rcpts_json(RcptState(r) for r in rcpts),
                        copy.headers, copy.subject_prefix, env.received_at, env.received_at,
                    ))
            elif copy.action is Action.quarantine:
                verdict = copy.verdict_json()
                self.quarantine.append((
                    quarantine_id(msg.queue_id, copy.tenant), msg.queue_id, copy.tenant, to_json(list(copy.recipients)),
                    copy.headers, env.mail_from, subject, copy.reason, copy.score, to_json(verdict["hits"]),
                    to_json(verdict), env.received_at, env.received_at,
                ))


async def insert_accepts(conn: Conn, msgs: Iterable[Accepted]) -> None:
    """Insert every row of `msgs` in the caller's transaction (parents first, one pipeline)."""
    rows = AcceptRows()
    for msg in msgs:
        rows.add(msg)
    async with conn.pipeline(), conn.cursor() as cur:
        for table, sql in _INSERTS:
            values: list[tuple[Any, ...]] = getattr(rows, table)
            if values:
                await cur.executemany(sql, values)


async def insert_large(conn: Conn, msg: Accepted) -> int:
    """Store a spooled message (`msg.body`) in the caller's transaction: its rows, then its bytes in
    `CHUNK_SIZE` pieces read from the file one at a time. Returns the bytes stored."""
    assert msg.body is not None
    await insert_accepts(conn, (msg,))
    stored = 0
    with open(msg.body, "rb") as source:
        seq = 0
        while piece := await asyncio.to_thread(source.read, CHUNK_SIZE):
            await conn.execute("INSERT INTO body_chunks (queue_id, seq, data) VALUES (%s, %s, %b)",
                               (msg.queue_id, seq, piece))
            stored += len(piece)
            seq += 1
    return stored


def keeps(msg: Accepted) -> bool:
    """Whether anything would reference the message (else there is nothing to store)."""
    return msg.archive or any(copy.action in _STORED_BODY_ACTIONS for copy in msg.copies)


async def drop_unreferenced(conn: Conn, queue_ids: Sequence[str]) -> int:
    """Delete those of `queue_ids` nothing references any more (module docstring); returns how many."""
    if not queue_ids:
        return 0
    ids = sorted(set(queue_ids))
    await conn.execute("SELECT 1 FROM messages WHERE queue_id = ANY(%s) ORDER BY queue_id FOR UPDATE", (ids,))
    cur = await conn.execute(
        "DELETE FROM messages m WHERE m.queue_id = ANY(%s)"
        " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.queue_id = m.queue_id)"
        " AND NOT EXISTS (SELECT 1 FROM quarantine q WHERE q.queue_id = m.queue_id AND q.status = 'held')"
        " AND NOT EXISTS (SELECT 1 FROM archive a WHERE a.queue_id = m.queue_id)",
        (ids,),
    )
    return max(cur.rowcount, 0)
