"""The storage interface of the gateway: spool, delivery queue, quarantine and archive.

The SMTP layer hands every message it is about to acknowledge with 250 to `Store.accept`; the
relay claims due deliveries from the same store and records each attempt; the `quarantine` CLI
reviews held copies, possibly from another process while the gateway runs.

Guarantees every implementation gives (the embedded one is `engine.store.sqlite`):

- `accept` returns only once the message and all its index rows are durable (RFC 5321 §6.1:
  a server that has replied 250 is responsible for the message). A crash before that leaves
  nothing behind that a restart would deliver; a crash after it loses nothing.
- The raw message is stored once, shared by archive, deliveries and quarantine entries, and
  deleted (in the same transaction) when none of them references it any more.
- A delivery's attempt state (attempts, per-recipient results, next attempt time) is recorded
  durably; a delivery that was in flight when the process died is due again at the next `open`.
- Failures of the store itself (disk full, I/O errors) raise `StoreError`; expected outcomes
  (an unknown quarantine id, a copy that is no longer held) are returned as values.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal, Protocol

from engine.graph.verdict import Hit
from engine.policy.models import Action, Direction

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_TIME_CHARS = 9  # milliseconds since the epoch, base 36: good until the year 5138
_RANDOM_CHARS = 7  # 36**7 ≈ 7.8e10 values per millisecond
_RANDOM_SPACE = 36**_RANDOM_CHARS

_id_lock = threading.Lock()
_id_last: tuple[int, int] = (0, 0)


def _base36(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, digit = divmod(value, 36)
        chars.append(_ALPHABET[digit])
    return "".join(reversed(chars))


def new_queue_id() -> str:
    """A unique, time-sortable queue id of 16 characters from [0-9A-Z].

    Nine characters of milliseconds since the epoch, then seven random ones; within one
    millisecond of one process the random part counts up, so ids sort in creation order.
    """
    global _id_last
    with _id_lock:
        millis = time.time_ns() // 1_000_000
        last_millis, last_random = _id_last
        if millis <= last_millis:  # same millisecond (or the clock stepped back): count up
            millis, rand = last_millis, last_random + 1
        else:  # a fresh start in the lower half leaves 3.9e10 ids of room to count up
            rand = int.from_bytes(os.urandom(5)) % (_RANDOM_SPACE // 2)
        _id_last = (millis, rand)
    return _base36(millis, _TIME_CHARS) + _base36(rand, _RANDOM_CHARS)


# ---------------------------------------------------------------- what the SMTP layer stores


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """The SMTP envelope of an accepted transaction."""

    mail_from: str  # "" = null sender
    rcpts: tuple[str, ...]
    client_ip: str
    helo: str
    received_at: float  # unix time
    direction: Direction = Direction.inbound  # outbound: tenants' mail to the world, and DSNs


RouteBy = Literal["tenant", "address"]


@dataclass(frozen=True, slots=True)
class CopyPlan:
    """One tenant's copy of an accepted message, as the transaction decided it (rejected and
    tempfailed copies are never stored). `deliver`/`tag` copies become deliveries, grouped by
    route: one over the tenant's routes, or one per recipient domain to its MX (`route_by`);
    `quarantine` copies are held; `discard` copies are archived only."""

    tenant: str
    recipients: tuple[str, ...]
    action: Action
    headers: bytes  # CRLF-terminated header lines prepended to this copy, already sanitised; may be b""
    subject_prefix: str | None = None  # tag: prefix of the top-level Subject (a Subject is added when missing)
    route_by: RouteBy = "tenant"
    reason: str = ""  # reason token (engine.graph.verdict REASON_*)
    score: float = 0.0
    hits: tuple[Hit, ...] = ()

    def verdict_json(self) -> dict[str, Any]:
        """What the quarantine keeps of the verdict (shown by `quarantine show`)."""
        return {"action": self.action.value, "score": self.score, "reason": self.reason,
                "hits": [hit.to_json() for hit in self.hits], "recipients": list(self.recipients)}


@dataclass(frozen=True, slots=True)
class Accepted:
    """A message the SMTP layer stores: about to be acknowledged with 250, or refused at the end of
    DATA and kept in the archive only (no copies)."""

    queue_id: str
    raw: bytes  # exactly as received, CRLF line ends
    envelope: StoredEnvelope
    subject: str  # decoded top-level Subject (from the MIME view), for listings; "" when absent
    policy_version: str
    verdict: Mapping[str, Any]  # whole-transaction verdict (`Decision.to_json`), kept as is in the archive
    copies: tuple[CopyPlan, ...]
    archive: bool  # keep in the archive (gateway archive.enabled)
    body: Path | None = None  # a large message: this spool file holds it (`raw` is then b""); see `Store.accept`
    body_size: int = 0  # bytes in `body`

    @property
    def size(self) -> int:
        """Bytes of the message, in `raw` or in `body`."""
        return self.body_size if self.body is not None else len(self.raw)


# ---------------------------------------------------------------- delivery queue

RcptStatus = Literal["pending", "delivered", "failed"]


@dataclass(frozen=True, slots=True)
class RcptState:
    """One recipient of a delivery and the result of its latest attempt."""

    rcpt: str
    status: RcptStatus = "pending"
    reply: str = ""  # the last SMTP reply ("550 5.1.1 no such user") or a local diagnostic
    remote: str = ""  # host:port that gave `reply`; "" when it is local (no connection, expired)


@dataclass(frozen=True, slots=True)
class Delivery:
    """A claimed delivery: one copy of a message to some recipients over one kind of route."""

    id: int
    queue_id: str
    tenant: str
    route_by: RouteBy  # tenant: the tenant's routes; address: MX of the recipients' domain
    mail_from: str
    rcpts: tuple[RcptState, ...]
    headers: bytes
    subject_prefix: str | None
    received_at: float  # arrival of the message (DSN Arrival-Date)
    created_at: float  # when this delivery was queued (arrival, or quarantine release): give_up_after counts from here
    attempts: int  # attempts so far, the one just claimed included
    last_error: str
    raw: bytes | None = None  # the message, claimed with the row when small; else `Store.read_message`
    generated: bool = False  # the gateway wrote this message itself (a DSN), no client sent it

    @property
    def pending(self) -> tuple[str, ...]:
        """Recipients still to be delivered."""
        return tuple(state.rcpt for state in self.rcpts if state.status == "pending")


@dataclass(frozen=True, slots=True)
class Claimed:
    """What `Store.claim_due` handed out, and when the next queued delivery falls due."""

    deliveries: tuple[Delivery, ...]
    next_due: float | None  # earliest next attempt among the deliveries still queued


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """The outcome of one attempt, recorded by `Store.record_attempt`."""

    delivery_id: int
    rcpts: tuple[RcptState, ...]  # the new state of every recipient; none pending = the delivery is finished
    last_error: str
    next_attempt_at: float  # when recipients are still pending
    dsn: Accepted | None  # a delivery status notification, queued in the same transaction
    attempted: bool = True  # False: handed back untried (the worker is stopping); the claim is not counted


@dataclass(frozen=True, slots=True)
class QueueSummary:
    """Deliveries waiting (`queued`) and being attempted (`inflight`)."""

    queued: int
    inflight: int
    next_due: float | None


@dataclass(frozen=True, slots=True)
class QueueEntry:
    """One delivery in the queue, as `liveprism queue list` shows it."""

    delivery_id: int
    queue_id: str
    tenant: str
    mail_from: str
    rcpts: tuple[RcptState, ...]  # every recipient of the copy, with its status so far
    subject: str
    size: int
    state: Literal["queued", "inflight"]
    attempts: int
    last_error: str
    created_at: float
    next_attempt_at: float


# ---------------------------------------------------------------- quarantine and archive

QuarantineStatus = Literal["held", "released", "deleted"]


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    """One tenant's held copy of a message."""

    id: str  # "<queue id>-<tenant>"
    queue_id: str
    tenant: str
    recipients: tuple[str, ...]
    mail_from: str
    subject: str
    reason: str
    score: float | None
    hits: tuple[Mapping[str, Any], ...]
    created_at: float
    status: QuarantineStatus
    status_at: float  # when `status` was last set


@dataclass(frozen=True, slots=True)
class QuarantineRefusal:
    """Why a quarantine change was not made: `not-found` or `not-held` (already released/deleted)."""

    entry_id: str
    reason: Literal["not-found", "not-held"]


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """What is known about a stored message (archive metadata)."""

    queue_id: str
    envelope: StoredEnvelope
    subject: str
    size: int
    policy_version: str
    verdict: Mapping[str, Any]
    archived_at: float | None  # None: not in the archive (kept only for deliveries or quarantine)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What `Store.purge_expired` removed."""

    archived: int  # archive rows past archive retention
    quarantined: int  # quarantine entries past quarantine retention
    messages: int  # messages deleted because nothing references them any more


class StoreError(Exception):
    """The store could not do its job (I/O error, disk full, database locked too long)."""


class Store(Protocol):
    """Spool, delivery queue, quarantine and archive behind one small interface."""

    async def open(self) -> None:
        """Create the schema; as the owner, recover from a crash (see the implementation)."""

    async def close(self) -> None:
        """Finish queued writes and release the store."""

    async def check_writable(self) -> None:
        """Readiness probe: return if the store can take a write now, else raise StoreError (closed,
        its database unusable or read-only, its state unwritable). Cheap: no write is made."""

    async def accept(self, msg: Accepted) -> None:
        """Persist a message durably; returns only when it survives a crash. Raises StoreError.

        A message in a spool file (`msg.body`, a file in `spool_dir`) is taken over by the store
        (moved, not copied): the caller removes the path afterwards if it is still there."""

    @property
    def spool_dir(self) -> Path:
        """Where the SMTP layer writes large messages while they arrive (same file system as the
        store's bodies, so `accept` can take a file over by moving it)."""

    async def claim_due(self, now: float, limit: int) -> Claimed:
        """Mark up to `limit` due deliveries in flight (attempts + 1) and return them."""

    async def record_attempt(self, record: AttemptRecord) -> None:
        """Store an attempt's per-recipient outcome: reschedule, or finish the delivery."""

    async def dsn_sent(self, queue_id: str) -> bool:
        """Whether a DSN was already queued for message `queue_id` (at most one per message)."""

    async def mta_sts_policy(self, domain: str, now: float) -> str | None:
        """The MTA-STS policy (JSON) the relay stored for `domain`, unless expired by `now`."""

    async def save_mta_sts_policy(self, domain: str, policy: str, expires_at: float) -> None:
        """Store `domain`'s MTA-STS policy (JSON) until `expires_at` (survives a relay restart)."""

    async def read_message(self, queue_id: str) -> bytes | None:
        """The raw message as received; None when it is not stored."""

    async def open_message(self, queue_id: str) -> BinaryIO | None:
        """The raw message as a readable binary file positioned at its start, for streaming a large
        one in chunks (the caller closes it); None when it is not stored."""

    async def message_info(self, queue_id: str) -> StoredMessage | None:
        """Envelope, verdict and archive state of a stored message."""

    async def queue_summary(self) -> QueueSummary:
        """How many deliveries are waiting and in flight."""

    async def list_queue(self, *, tenant: str | None = None) -> list[QueueEntry]:
        """Deliveries waiting or in flight, the next due first."""

    async def flush_queue(self, now: float, *, tenant: str | None = None) -> int:
        """Make every waiting delivery (of `tenant`) due at `now`; returns how many were waiting."""

    async def list_quarantine(
        self, *, tenant: str | None = None, since: float | None = None, status: QuarantineStatus | None = "held"
    ) -> list[QuarantineEntry]:
        """Quarantine entries, oldest first; `status=None` lists every status."""

    async def get_quarantine(self, entry_id: str) -> QuarantineEntry | None:
        """One quarantine entry."""

    async def list_archive(self, *, since: float) -> list[str]:
        """Queue ids of the messages archived at or after `since`, oldest first."""

    async def release_quarantine(self, entry_id: str, now: float) -> QuarantineEntry | QuarantineRefusal:
        """Turn a held copy into a delivery due now (a running relay picks it up by polling)."""

    async def delete_quarantine(self, entry_id: str, now: float) -> QuarantineEntry | QuarantineRefusal:
        """Drop a held copy; the message goes when nothing else references it."""

    async def purge_expired(self, now: float, archive_days: int, quarantine_days: int) -> PurgeResult:
        """Remove archive rows and quarantine entries older than their retention."""

    async def requeue_inflight(self, now: float) -> int:
        """Make deliveries left `inflight` due at `now`; returns how many. Only the one relay
        process may call it, at its start: no attempt of its own is in flight then."""

    async def renew_leases(self, now: float) -> int:
        """The relay's heartbeat while attempts run: extend the leases of the deliveries this store
        instance claimed and has not recorded yet; returns how many were renewed. A store whose
        deliveries are claimed by one process only holds no leases and returns 0."""

    async def rate_exceeded(self, limits: tuple[tuple[str, int], ...], now: float, window: float) -> str | None:
        """The first key with its limit of sends within `window` seconds before `now`; counts nothing."""

    async def rate_take(self, limits: tuple[tuple[str, int], ...], now: float, window: float) -> str | None:
        """Atomically: the first key over its limit (nothing counted), or None after counting one send per key."""

    @property
    def lock_fd(self) -> int | None:
        """The owner's lock on the state directory (inherited by the relay child, so a new owner
        waits until the old relay is gone); None when not the owner."""

    @property
    def node_id(self) -> str:
        """This gateway node's id in a cluster store (the owner of its leases); "" for a store of a
        single box."""

    def cluster_counters(self) -> dict[str, int]:
        """Counters of the cluster's lease protocol kept by this store instance, always these keys:
        `stale_records` (attempt records not applied: the lease was gone), `leases_taken_over`
        (expired leases of other nodes claimed), `leases_lost` (leases found gone at a renewal).
        All 0 for a store without leases."""
