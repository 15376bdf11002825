"""Row conversion: the column values the store writes, and the values it builds from rows read.

Contract: as `engine.store.sqlite.rows`, so that both backends hold the same values.
`DELIVERY_COLUMNS` and `QUARANTINE_COLUMNS` name the columns in the order `delivery_from` and
`quarantine_from` read them (a claim adds the raw body, or NULL, as the last column of a
delivery); JSON is written compact, with sorted keys, into text columns; bytea comes back as
bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, cast

from engine.store.base import Delivery, QuarantineEntry, QuarantineStatus, RcptState, RouteBy

DELIVERY_COLUMNS = (
    "d.id, d.queue_id, d.tenant, d.route_by, d.mail_from, d.rcpts, d.headers, d.subject_prefix,"
    " m.received_at, d.created_at, d.attempts, d.last_error, m.client_ip"
)
QUARANTINE_COLUMNS = (
    "id, queue_id, tenant, recipients, mail_from, subject, reason, score, hits, created_at, status, status_at"
)


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def rcpts_json(rcpts: Iterable[RcptState]) -> str:
    return to_json([{"rcpt": r.rcpt, "status": r.status, "reply": r.reply, "remote": r.remote} for r in rcpts])


def rcpts_from(text: str) -> tuple[RcptState, ...]:
    return tuple(RcptState(r["rcpt"], r["status"], r["reply"], r["remote"]) for r in json.loads(text))


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


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower()


def quarantine_id(queue_id: str, tenant: str) -> str:
    """The id of a tenant's quarantined copy of a message (the same as the embedded store's)."""
    return f"{queue_id}-{tenant}"
