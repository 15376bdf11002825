"""The rows both store backends write and read: column lists, row building and row conversion.

The embedded store (`engine.store.sqlite`) and the cluster store (`engine.store.postgres`) have the
same tables and columns and hold the same values in them; everything here is independent of the
database and its driver, and both backends import it (each keeps its own SQL, placeholders and
transactions).

Contract:

- `DELIVERY_COLUMNS`, `QUARANTINE_COLUMNS`, `MESSAGE_INFO_COLUMNS` and `QUEUE_ENTRY_COLUMNS` name
  the columns in the order `delivery_from`, `quarantine_from`, `stored_message_from` and
  `queue_entry_from` read them (a claim adds the raw body, or NULL, as the last column of a
  delivery). A row is any indexable sequence (a sqlite3 tuple, a psycopg tuple); a binary column
  may come back as bytes or a buffer (it is copied into bytes).
- JSON is written compact, with sorted keys, into text columns (`to_json`).
- `AcceptRows` holds the rows of accepted messages per table, in the column order of each table's
  INSERT: `messages`, `bodies` (a message held in memory), `spooled` (queue id and size of a
  message in a spool file, `Accepted.body`: SQLite's `body_files` rows; PostgreSQL stores those
  bytes as chunk rows instead), `archive`, `deliveries` (one per copy to deliver over the tenant's
  routes, or one per recipient domain when routed by address), `quarantine`. `check_copies`
  refuses an accept with two copies for one tenant (ValueError); `keeps` tells whether an accept
  would be referenced at all (else nothing of it is stored).
- `release_rows` are the `deliveries` rows of a released quarantine entry (inbound: one over the
  tenant's routes; outbound: one per recipient domain, its MX).
- `quarantine_id` is the id of a tenant's quarantined copy, the same on both backends.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from engine.policy.models import Action, Direction
from engine.store.base import (
    Accepted,
    CopyPlan,
    Delivery,
    QuarantineEntry,
    QuarantineStatus,
    QueueEntry,
    RcptState,
    RouteBy,
    StoredEnvelope,
    StoredMessage,
)

CLAIM_WITH_BODY_MAX = 256 * 1024  # messages up to this size come with their claim (one read fewer)
DAY = 86_400.0
DSN_MEMORY_DAYS = 30  # a dsn_sent row outlives every delivery of its message (give_up_after is days)

DELIVERY_COLUMNS = (
    "d.id, d.queue_id, d.tenant, d.route_by, d.mail_from, d.rcpts, d.headers, d.subject_prefix,"
    " m.received_at, d.created_at, d.attempts, d.last_error, m.client_ip"
)
QUARANTINE_COLUMNS = (
    "id, queue_id, tenant, recipients, mail_from, subject, reason, score, hits, created_at, status, status_at"
)
MESSAGE_INFO_COLUMNS = (
    "m.queue_id, m.mail_from, m.rcpts, m.client_ip, m.helo, m.received_at, m.direction,"
    " m.subject, m.size, m.policy_version, m.verdict, a.archived_at"
)
QUEUE_ENTRY_COLUMNS = (
    "d.id, d.queue_id, d.tenant, d.mail_from, d.rcpts, m.subject, m.size, d.state, d.attempts,"
    " d.last_error, d.created_at, d.next_attempt_at"
)

_STORED_BODY_ACTIONS = frozenset({Action.deliver, Action.tag, Action.quarantine})  # copies that need the body

Row = tuple[Any, ...]


def to_json(value: Any) -> str:
    """`value` as the store writes JSON: compact, sorted keys, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def rcpts_json(rcpts: Iterable[RcptState]) -> str:
    return to_json([{"rcpt": r.rcpt, "status": r.status, "reply": r.reply, "remote": r.remote} for r in rcpts])


def rcpts_from(text: str) -> tuple[RcptState, ...]:
    return tuple(RcptState(r["rcpt"], r["status"], r["reply"], r["remote"]) for r in json.loads(text))


def domain_of(address: str) -> str:
    """The domain of `address`, lower case (how deliveries routed by address are grouped)."""
    return address.rpartition("@")[2].lower()


def quarantine_id(queue_id: str, tenant: str) -> str:
    """The id of a tenant's quarantined copy of a message."""
    return f"{queue_id}-{tenant}"


# ---------------------------------------------------------------- rows read


def delivery_from(row: Sequence[Any]) -> Delivery:
    return Delivery(
        id=row[0],
        queue_id=row[1],
        tenant=row[2],
        route_by=cast(RouteBy, row[3]),
        mail_from=row[4],
        rcpts=rcpts_from(row[5]),
        headers=bytes(row[6]),
        subject_prefix=row[7],
        received_at=row[8],
        created_at=row[9],
        attempts=row[10],
        last_error=row[11],
        generated=row[12] == "",  # no client: the gateway wrote it (a DSN)
        raw=bytes(row[13]) if row[13] is not None else None,
    )


def quarantine_from(row: Sequence[Any]) -> QuarantineEntry:
    return QuarantineEntry(
        id=row[0],
        queue_id=row[1],
        tenant=row[2],
        recipients=tuple(json.loads(row[3])),
        mail_from=row[4],
        subject=row[5],
        reason=row[6],
        score=row[7],
        hits=tuple(json.loads(row[8])),
        created_at=row[9],
        status=cast(QuarantineStatus, row[10]),
        status_at=row[11],
    )


def stored_message_from(row: Sequence[Any]) -> StoredMessage:
    envelope = StoredEnvelope(row[1], tuple(json.loads(row[2])), row[3], row[4], row[5], Direction(row[6]))
    return StoredMessage(row[0], envelope, row[7], row[8], row[9], json.loads(row[10]), row[11])


def queue_entry_from(row: Sequence[Any]) -> QueueEntry:
    state: Literal["queued", "inflight"] = "queued" if row[7] == "queued" else "inflight"
    return QueueEntry(row[0], row[1], row[2], row[3], rcpts_from(row[4]), row[5], row[6], state, row[8], row[9],
                      row[10], row[11])


# ---------------------------------------------------------------- rows written


def check_copies(msg: Accepted) -> None:
    """Raise ValueError unless `msg` has at most one copy per tenant (a tenant's quarantined copy
    has the id `quarantine_id(queue id, tenant)`)."""
    tenants = [copy.tenant for copy in msg.copies]
    if len(set(tenants)) != len(tenants):
        raise ValueError(f"{msg.queue_id}: more than one copy for a tenant: {tenants}")


def keeps(msg: Accepted) -> bool:
    """Whether anything would reference the message (else there is nothing to store)."""
    return msg.archive or any(copy.action in _STORED_BODY_ACTIONS for copy in msg.copies)


@dataclass(slots=True)
class AcceptRows:
    """The rows of accepted messages, per table, in column order (module docstring)."""

    messages: list[Row] = field(default_factory=list)
    bodies: list[Row] = field(default_factory=list)
    spooled: list[Row] = field(default_factory=list)
    archive: list[Row] = field(default_factory=list)
    deliveries: list[Row] = field(default_factory=list)
    quarantine: list[Row] = field(default_factory=list)

    def add(self, msg: Accepted) -> None:
        env = msg.envelope
        if msg.body is not None:  # a spool file: the backend stores its bytes by itself
            self.spooled.append((msg.queue_id, msg.size))
        else:
            self.bodies.append((msg.queue_id, msg.raw))
        self.messages.append((
            msg.queue_id, env.received_at, env.mail_from, to_json(list(env.rcpts)), env.client_ip, env.helo,
            str(env.direction), msg.subject, msg.size, msg.policy_version, to_json(dict(msg.verdict)),
        ))
        if msg.archive:
            self.archive.append((msg.queue_id, env.received_at))
        for copy in msg.copies:
            if copy.action in (Action.deliver, Action.tag):
                self.deliveries.extend(_delivery_rows(msg, copy))
            elif copy.action is Action.quarantine:
                verdict = copy.verdict_json()
                self.quarantine.append((
                    quarantine_id(msg.queue_id, copy.tenant), msg.queue_id, copy.tenant, to_json(list(copy.recipients)),
                    copy.headers, env.mail_from, msg.subject, copy.reason, copy.score, to_json(verdict["hits"]),
                    to_json(verdict), env.received_at, env.received_at,
                ))


def _delivery_rows(msg: Accepted, copy: CopyPlan) -> list[Row]:
    # A copy for the tenant's routes is one delivery; a copy for the MX of each recipient
    # domain (outbound mail, DSNs) is one delivery row per domain (RFC 5321 §5.1).
    env = msg.envelope
    groups: list[tuple[RouteBy, tuple[str, ...]]]
    if copy.route_by == "tenant":
        groups = [("tenant", copy.recipients)]
    else:
        by_domain: dict[str, list[str]] = {}
        for rcpt in copy.recipients:
            by_domain.setdefault(domain_of(rcpt), []).append(rcpt)
        groups = [("address", tuple(rcpts)) for rcpts in by_domain.values()]
    return [
        (msg.queue_id, copy.tenant, route_by, env.mail_from, rcpts_json(RcptState(r) for r in rcpts),
         copy.headers, copy.subject_prefix, env.received_at, env.received_at)
        for route_by, rcpts in groups
    ]


def release_rows(queue_id: str, tenant: str, recipients: str, headers: bytes, mail_from: str, direction: str,
                 now: float) -> list[Row]:
    """The `deliveries` rows (queue_id, tenant, route_by, mail_from, rcpts, headers, created_at,
    next_attempt_at) of a released quarantine entry whose `recipients` column is `recipients`:
    inbound, one over the tenant's routes; outbound, one per recipient domain (its MX)."""
    rcpts: list[str] = json.loads(recipients)
    groups: dict[str, list[str]] = {}
    for rcpt in rcpts:
        groups.setdefault("" if direction == "inbound" else domain_of(rcpt), []).append(rcpt)
    route_by: RouteBy = "tenant" if direction == "inbound" else "address"
    return [(queue_id, tenant, route_by, mail_from, rcpts_json(RcptState(r) for r in group), headers, now, now)
            for group in groups.values()]
