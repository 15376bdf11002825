"""The delivery worker: takes due deliveries from the store and relays them to their next hops.

Algorithm, for each claimed delivery (one copy of a message to some recipients):

1. Claim: the store marks the delivery in flight and counts the attempt *before* it is made,
   so a crash mid-attempt is visible; the owner's next `open` makes it due again.
2. Compose the copy from the spooled bytes (`compose.build_copy`; a message over `STREAM_AT`
   is streamed from the store instead: only its header section is composed in memory,
   `compose.compose_streamed`, and the body is read and sent in pieces) and find the hops: a tenant
   copy goes to the tenant's routes in the live policy (lowest priority first, equal ones
   shuffled); anything else to the MX hosts of its recipients' domain (`nexthop`, MTA-STS
   included). A copy routed by address that a client sent (outbound mail, a tenant's bounces
   with the null sender included; not the gateway's own DSNs) carries the gateway's
   Received trace but none of its verdict fields (`compose.world_headers`), and is DKIM-signed
   last, over exactly the bytes sent, when its tenant has `outbound.dkim` (`signing`); while that
   tenant's key cannot be loaded it waits (4.7.0), never leaving unsigned. A DSN whose mail
   exchangers are all loopback/private/link-local/unspecified addresses is dropped (logged and
   counted) unless `delivery.private_next_hops: allow`; such hops are skipped otherwise.
3. Try the hops in order, sharing pooled sessions (`client`). A hop that cannot be used (no
   connection, TLS required but not possible, refused session) or a 4xx reply moves the
   recipients concerned to the next hop; a 2xx delivers them, a 5xx fails them for good — per
   recipient at RCPT, for all at MAIL or DATA.
4. Record the outcome (per-recipient status and last reply, last error, next attempt) in one
   store transaction. Recipients still pending are retried after `retry_initial` seconds,
   doubling per attempt up to `retry_max` (never later than the give-up time); when
   `give_up_after` seconds have passed since the delivery was queued (receipt, or quarantine
   release) they fail with status 4.4.7 (RFC 3463).
5. Recipients that failed in this attempt are reported to the envelope sender in one DSN
   (`dsn`, RFC 3464) stored in that same transaction and delivered by this worker — unless
   the sender is null (RFC 5321 §4.5.5: no DSN for a DSN), an address literal, `delivery.dsn`
   excludes it, or the message got a DSN already (at most one per message: remembered by this
   process, and in the store's `dsn_sent` table written with the DSN, so a restart does not
   send a second one).

Durability: nothing is removed from the store until its outcome is committed, and a recorded
outcome is final, so a crash or `stop` at any point costs at most a repeated attempt (a copy
may then arrive twice, which RFC 5321 §6.1 prefers to losing it). Up to `concurrency`
deliveries are in flight at once; the store is polled at least every `poll_interval` seconds
(a release from the quarantine CLI in another process is seen that way) and at once on `wake`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from engine import metrics
from engine.dkim.keys import KeyProblem
from engine.mime.printable import escape, has_control
from engine.policy.models import DeliverySettings
from engine.relay.client import HopFailure, HopReply, SmtpPool, transaction
from engine.relay.compose import StreamedCopy, build_copy, compose_streamed, fold_long_lines, world_headers
from engine.relay.dsn import FailedRecipient, dsn_message, dsn_refusal
from engine.relay.nexthop import Hop, NextHops, NoRoute, internal_address, ordered
from engine.relay.signing import Signer, sign, sign_streamed
from engine.store.base import AttemptRecord, Delivery, RcptState, RcptStatus, Store, StoreError

log = logging.getLogger("liveprism.relay")

REAP_INTERVAL = 1.0
STREAM_AT = 1024 * 1024  # stored messages larger than this are streamed to the next hop, never held whole
SIGN_OFF_LOOP = 64 * 1024  # copies this large are DKIM-signed in a thread, off the event loop
DSN_MEMORY = 86400.0  # seconds a queue id is remembered as bounced (at most one DSN per message)
_STATUS: dict[str, RcptStatus] = {"delivered": "delivered", "failed": "failed", "retry": "pending"}


def _to_the_world(delivery: Delivery) -> bool:
    """A copy routed by address that a client sent (a tenant's outbound mail, its null-sender
    bounces included), not the gateway's own DSN: world headers, DKIM-signed."""
    return delivery.route_by == "address" and not delivery.generated


def backoff(settings: DeliverySettings, attempts: int) -> float:
    """Seconds before the next attempt after `attempts` attempts: retry_initial · 2^(attempts-1), capped."""
    return float(min(settings.retry_initial * 2 ** min(max(attempts - 1, 0), 32), settings.retry_max))


class RelayWorker:
    """Delivers what the store holds; see the module docstring."""

    def __init__(
        self,
        store: Store,
        next_hops: NextHops,
        settings: Callable[[], DeliverySettings],
        hostname: str,
        *,
        concurrency: int = 100,
        per_destination: int = 20,
        poll_interval: float = 1.0,
        idle_timeout: float = 10.0,
        signing: Callable[[str], Signer | KeyProblem | None] = lambda tenant: None,
    ) -> None:
        self._store = store
        self._next_hops = next_hops
        self._settings = settings
        self._hostname = hostname
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self.pool = SmtpPool(hostname, per_destination=per_destination, idle_timeout=idle_timeout)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._finished: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dsn_sent: dict[str, float] = {}  # queue id -> when its DSN was queued (one per message)
        self._signing = signing  # tenant -> its loaded DKIM key, why it is unusable, or None (not signing)

    # ------------------------------------------------------------ control

    async def run(self) -> None:
        """Claim due deliveries and deliver them until `stop`."""
        self._stopping.clear()
        self._finished = asyncio.Event()
        reaper = asyncio.create_task(self._reap())
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                timeout = self._poll_interval
                free = self._concurrency - len(self._tasks)
                if free > 0:
                    try:
                        claimed = await self._store.claim_due(time.time(), free)
                    except StoreError as exc:
                        log.error("relay cannot claim deliveries: %s", exc)
                    else:
                        for delivery in claimed.deliveries:
                            self._start(delivery)
                        if claimed.next_due is not None:
                            timeout = min(timeout, max(0.0, claimed.next_due - time.time()))
                if not self._stopping.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), timeout)
        finally:
            reaper.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.pool.close()
            self._finished.set()

    def wake(self) -> None:
        """Look for due deliveries now (called after each accept)."""
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; wait for the attempts in flight (bounded by the connect and command
        timeouts). Deliveries still waiting for a session, and hops not tried yet, are handed
        back to the store, due at once; whatever is unfinished stays in the store."""
        self._stopping.set()
        self._wake.set()
        if self._finished is not None:
            await self._finished.wait()

    def _start(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._attempt(delivery), name=f"relay-{delivery.queue_id}-{delivery.id}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()

    async def _reap(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL)
            await self.pool.reap()

    # ------------------------------------------------------------ one attempt

    async def _attempt(self, delivery: Delivery) -> None:
        settings = self._settings()
        try:
            record = await self._deliver(delivery, settings)
        except Exception:  # a bug must not stall the queue: retry this delivery later, until give_up_after
            log.exception(
                "queue_id=%s delivery=%d status=deferred reason=internal-error", delivery.queue_id, delivery.id
            )
            error = (HopReply(0, "4.3.0 internal error in the relay"), "")
            try:  # the usual bookkeeping: backoff, and expiry with a DSN after give_up_after
                record = self._outcome(delivery, settings, dict.fromkeys(delivery.pending, error), b"")
            except Exception:  # the bookkeeping itself failed: plain retry later
                record = AttemptRecord(
                    delivery.id,
                    delivery.rcpts,
                    "4.3.0 internal error in the relay",
                    time.time() + backoff(settings, delivery.attempts),
                    None,
                )
        if record.dsn is not None:
            try:
                if await self._store.dsn_sent(delivery.queue_id):  # sent before a restart of the relay
                    log.info("queue_id=%s delivery=%d no DSN: a DSN was already sent for this message",
                             delivery.queue_id, delivery.id)
                    record = replace(record, dsn=None)
            except StoreError as exc:
                log.error("queue_id=%s cannot read the DSN memory: %s", delivery.queue_id, exc)
        try:
            await self._store.record_attempt(record)
        except StoreError as exc:  # stays in flight; the next start makes it due again
            log.error("queue_id=%s delivery=%d cannot record attempt: %s", delivery.queue_id, delivery.id, exc)

    async def _compose(self, delivery: Delivery) -> bytes | StreamedCopy | None:
        """The copy to send, exactly as it goes on the wire before SMTP's dot-stuffing: the one place
        where its final header section is composed (a signer hooks in here: hash `body()` of a
        StreamedCopy, or the body of the bytes, and prepend its field). None: the message is gone."""
        headers = world_headers(delivery.headers) if _to_the_world(delivery) else delivery.headers
        if delivery.raw is not None:
            return fold_long_lines(build_copy(delivery.raw, headers, delivery.subject_prefix))
        source = await self._store.open_message(delivery.queue_id)
        if source is None:
            return None
        with contextlib.ExitStack() as closing:
            closing.callback(source.close)
            if source.seek(0, 2) > STREAM_AT:
                streamed = compose_streamed(source, headers, delivery.subject_prefix)
                if streamed is not None:
                    closing.pop_all()  # the copy owns the file now
                    return streamed
            source.seek(0)
            raw = source.read()
        return fold_long_lines(build_copy(raw, headers, delivery.subject_prefix))

    async def _deliver(self, delivery: Delivery, settings: DeliverySettings) -> AttemptRecord:
        copy = await self._compose(delivery)
        if copy is None:
            replies = dict.fromkeys(delivery.pending, (HopReply(0, "5.3.0 the message is missing from the spool"), ""))
            return self._outcome(delivery, settings, replies, b"")
        try:
            return await self._send(delivery, settings, copy)
        finally:
            if isinstance(copy, StreamedCopy):
                copy.close()

    async def _send(
        self, delivery: Delivery, settings: DeliverySettings, data: bytes | StreamedCopy
    ) -> AttemptRecord:
        pending = list(delivery.pending)
        replies: dict[str, tuple[HopReply, str]] = {}
        outbound = _to_the_world(delivery)
        if has_control(delivery.mail_from):  # queued before the front end refused these: fail, never loop
            replies = dict.fromkeys(pending, (HopReply(0, "5.1.7 invalid sender address (control characters)"), ""))
            return self._outcome(delivery, settings, replies, data)
        for rcpt in [rcpt for rcpt in pending if has_control(rcpt)]:  # fails alone; the others go on
            replies[rcpt] = (HopReply(0, "5.1.3 invalid recipient address (control characters)"), "")
            pending.remove(rcpt)
        if not pending:
            return self._outcome(delivery, settings, replies, data)
        if outbound:
            signed = await self._sign(delivery, data)
            if isinstance(signed, HopReply):
                replies.update(dict.fromkeys(pending, (signed, "")))
                return self._outcome(delivery, settings, replies, data)
            data = signed
        hops = await self._hops(delivery)
        if isinstance(hops, NoRoute):
            replies.update(dict.fromkeys(pending, (HopReply(0, hops.reason), "")))
            return self._outcome(delivery, settings, replies, data)
        if delivery.generated and settings.private_next_hops == "refuse":  # our DSN: never to an internal hop
            public = [hop for hop in hops if not (hop.mx_name and internal_address(hop.host))]
            if not public:
                metrics.relay_event("dsn-dropped-private-hop")
                log.warning("queue_id=%s delivery=%d DSN dropped: every mail exchanger of %s is an internal address"
                            " (%s; delivery.private_next_hops: refuse)", delivery.queue_id, delivery.id,
                            escape(pending[0]), ",".join(hop.host for hop in hops))
                drop = HopReply(0, "5.4.4 DSN not sent: the recipient's mail exchangers are internal addresses")
                replies.update(dict.fromkeys(pending, (drop, "")))
                return self._outcome(delivery, settings, replies, data)
            hops = public
        for hop in hops:
            got = await self._try_hop(hop, delivery.mail_from, pending, data, settings.connect_timeout)
            if got is None:  # stopping: the remaining hops are left for after the restart
                break
            replies.update((rcpt, (reply, hop.label)) for rcpt, reply in got.items())
            pending = [rcpt for rcpt in pending if got[rcpt].outcome == "retry"]
            if not pending:
                break
        return self._outcome(delivery, settings, replies, data)

    async def _sign(self, delivery: Delivery, data: bytes | StreamedCopy) -> bytes | StreamedCopy | HopReply:
        """`data` signed with the tenant's DKIM key (unchanged when the tenant does not sign), or
        the reply that keeps the copy from leaving: 4.7.0 while the key cannot be loaded. A
        streamed copy is signed as it is read (`sign_streamed`: its body is never whole in memory)."""
        signer = self._signing(delivery.tenant)
        if signer is None:
            return data
        if isinstance(signer, KeyProblem):
            metrics.relay_event("dkim-key-unavailable")
            return HopReply(0, f"4.7.0 DKIM key of tenant {delivery.tenant} cannot be loaded: {signer.message}")
        try:
            if isinstance(data, StreamedCopy):
                signed: bytes | StreamedCopy = await asyncio.to_thread(sign_streamed, signer, data)
            elif len(data) >= SIGN_OFF_LOOP:
                signed = await asyncio.to_thread(sign, signer, data)
            else:
                signed = sign(signer, data)
        except ValueError as exc:  # a header section it cannot sign (e.g. a non-ASCII d= domain)
            return HopReply(0, f"5.6.0 the message cannot be DKIM-signed: {exc}")
        except OSError as exc:  # the stored message could not be read: kept, tried again later
            return HopReply(0, f"4.3.0 cannot read the stored message to sign it: {exc}")
        metrics.relay_event("dkim-signed")
        return signed

    def _dsn_refusal(self, delivery: Delivery, settings: DeliverySettings) -> str | None:
        """Why this failure gets no DSN (`dsn.dsn_refusal`); remembers DSNs sent in the last day."""
        horizon = time.time() - DSN_MEMORY
        for queue_id in [q for q, at in self._dsn_sent.items() if at < horizon]:
            del self._dsn_sent[queue_id]
        domain = delivery.mail_from.rpartition("@")[2]
        return dsn_refusal(
            delivery.mail_from, settings.dsn, sender_is_tenant=self._next_hops.tenant_of_domain(domain) is not None,
            already_sent=delivery.queue_id in self._dsn_sent,
        )

    async def _hops(self, delivery: Delivery) -> Sequence[Hop] | NoRoute:
        if delivery.route_by == "address":
            return await self._next_hops.for_address(delivery.rcpts[0].rcpt)
        routes = ordered(self._next_hops.routes(delivery.tenant))
        return routes or NoRoute(f"4.4.0 tenant {delivery.tenant} has no routes", permanent=False)

    async def _try_hop(
        self, hop: Hop, mail_from: str, rcpts: list[str], data: bytes | StreamedCopy, connect_timeout: float
    ) -> dict[str, HopReply] | None:
        """Replies of `hop` for `rcpts`; None when the worker stopped before a session was free."""
        fresh = False
        while True:
            conn = await self.pool.acquire(hop, connect_timeout, self._stopping, fresh=fresh)
            if conn is None:
                return None
            if isinstance(conn, HopFailure):
                return dict.fromkeys(rcpts, conn.reply)
            try:
                result = await transaction(conn, mail_from, rcpts, data)
            except BaseException:  # never leak the pool slot: the destination would block for good
                self.pool.release(conn, reusable=False)
                raise
            self.pool.release(conn, reusable=result.reusable)
            if not result.stale or fresh:
                return result.replies
            fresh = True  # the pooled session had died: once more on a new one

    def _outcome(
        self,
        delivery: Delivery,
        settings: DeliverySettings,
        replies: dict[str, tuple[HopReply, str]],
        copy: bytes | StreamedCopy,
    ) -> AttemptRecord:
        now = time.time()
        deadline = delivery.created_at + settings.give_up_after
        expired = now >= deadline
        states: list[RcptState] = []
        failed: list[FailedRecipient] = []
        last_error = delivery.last_error
        for state in delivery.rcpts:
            if state.status != "pending" or state.rcpt not in replies:  # done before, or not tried (stopping)
                states.append(state)
                continue
            reply, remote = replies[state.rcpt]
            status = _STATUS[reply.outcome]
            word = {"delivered": "sent", "failed": "bounced", "pending": "deferred"}[status]
            if status == "pending":
                last_error = str(reply)
                if expired:
                    status, word = "failed", "expired"
                    failed.append(FailedRecipient(state.rcpt, str(reply), remote, status="4.4.7"))
            elif status == "failed":
                failed.append(FailedRecipient(state.rcpt, str(reply), remote))
            states.append(RcptState(state.rcpt, status, str(reply), remote))
            metrics.delivery_attempt(word, remote or "none")
            log.info(
                "queue_id=%s delivery=%d tenant=%s rcpt=%s status=%s relay=%s attempts=%d reply=%r",
                delivery.queue_id,
                delivery.id,
                delivery.tenant,
                escape(state.rcpt),
                word,
                remote or "none",
                delivery.attempts,
                str(reply),
            )
        dsn = None
        refusal = self._dsn_refusal(delivery, settings) if failed and delivery.mail_from else None
        if refusal is not None:
            log.info("queue_id=%s delivery=%d no DSN to %s: %s", delivery.queue_id, delivery.id,
                     escape(delivery.mail_from), refusal)
        elif failed and delivery.mail_from:
            self._dsn_sent[delivery.queue_id] = now
            dsn = dsn_message(
                reporting_mta=self._hostname,
                original_queue_id=delivery.queue_id,
                tenant=delivery.tenant,
                sender=delivery.mail_from,
                arrival=delivery.received_at,
                now=now,
                failed=failed,
                original=copy if isinstance(copy, bytes) else copy.head,  # (a DSN returns the header section only)
            )
            log.info(
                "queue_id=%s delivery=%d dsn=%s to=%s", delivery.queue_id, delivery.id, dsn.queue_id,
                escape(delivery.mail_from),
            )
        next_attempt = max(now, min(now + backoff(settings, delivery.attempts), deadline))
        if any(s.status == "pending" and s.rcpt not in replies for s in delivery.rcpts):
            next_attempt = now  # the worker is stopping with recipients untried: due as soon as it runs again
        return AttemptRecord(delivery.id, tuple(states), last_error, next_attempt, dsn, attempted=bool(replies))
