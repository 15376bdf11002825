"""The SMTP front end both listeners share: aiosmtpd hooks that drive one `Evaluation` per
transaction (`TransactionHandler`; the inbound and outbound listeners give its hooks).

Contract:
- envelope decisions are replied at the earliest stage (MAIL for gateway-wide block lists,
  RCPT for open-relay refusal, unknown users and tenant block lists);
- content is evaluated once at end of DATA, one verdict per tenant; the reply follows
  DESIGN.md (5xx only if every copy is rejected, 4xx only if none accepted and one tempfailed);
- `250` is sent only after `Store.accept` returned, i.e. after the message and its index rows
  are committed and fsynced. If the store fails the client gets `451 4.3.0` and keeps the message;
- a message refused after DATA is still archived (when the archive is on), with its verdict;
- what is decided is the `Evaluation`'s business (engine/graph/transaction.py), shared with
  `explain` and the BDD steps; this module only answers, stores and logs;
- one graph snapshot serves a whole transaction, so a hot reload never mixes two policies;
- nothing a client sends can crash the process: evaluation errors become `451 4.3.0`.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from engine.checks.runner import Checker, CheckReport
from engine.graph.addresses import normalise_address
from engine.graph.filter_graph import FilterGraph
from engine.graph.loops import own_trace_ids
from engine.graph.transaction import Evaluation
from engine.graph.verdict import (
    KIND_LIST,
    KIND_OUTBOUND,
    REASON_BLOCK_LIST,
    REASON_TEMPFAIL_HELD,
    Decision,
    Hit,
)
from engine.metrics import TransactionObserver
from engine.mime.view import MessageView, header_text, load_texts, parse_message
from engine.policy.models import Direction
from engine.smtp.data import discard, read_range
from engine.smtp.envelope import GatewayEnvelope, gateway_envelope
from engine.smtp.headers import received_header, sanitise, strip_forged_authentication_results, verdict_headers
from engine.smtp.protocol import client_ip
from engine.store.base import Accepted, CopyPlan, Store, StoredEnvelope, new_queue_id

log = logging.getLogger("liveprism.smtp")
txn_log = logging.getLogger("liveprism.txn")

OFFLOAD_SIZE = 64 * 1024
"""Messages this large are parsed and evaluated off the event loop (issue 7: a 6 MB header or a
200,000-part multipart must not stall every other session); smaller ones cost less than the hop."""


def _evaluate(
    evaluation: Evaluation, view: MessageView, external_hits: Sequence[Hit], returned_ids: Sequence[str]
) -> tuple[MessageView, Decision]:
    """Decide the parsed message with the check hits of DATA (the graph is immutable and the
    evaluation is this session's own, so this may run in a worker thread)."""
    return view, evaluation.data(view, external_hits=external_hits, returned_ids=returned_ids)


def _header_section(raw: bytes) -> bytes:
    """The header section of `raw` with the empty line that ends it (all of `raw` without one)."""
    end = raw.find(b"\r\n\r\n")
    return raw if end < 0 else raw[: end + 4]


def _strip_spooled(spool: Path, head: bytes, size: int, hostname: str) -> int:
    """`strip_forged_authentication_results` for a message of `size` bytes in a spool file whose
    header section is `head`: the file is rewritten (header section changed, the rest copied from
    the old file in pieces) only when a field goes. Returns the message size."""
    stripped = strip_forged_authentication_results(head, hostname)
    if stripped is head:
        return size
    rewritten = spool.with_name(spool.name + ".new")
    try:
        with (open(spool, "rb") as source,
              open(os.open(rewritten, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as out):
            out.write(stripped)
            source.seek(len(head))
            shutil.copyfileobj(source, out, 1024 * 1024)
        os.replace(rewritten, spool)
    finally:
        discard(rewritten)
    return len(stripped) + size - len(head)


class Waker(Protocol):
    """Whatever delivers accepted mail: told after each accept so delivery starts at once."""

    def wake(self) -> None: ...


class TransactionHandler:
    """The aiosmtpd handler both listeners share: it drives one `Evaluation` per transaction and
    stores what the decision accepts; it decides nothing itself. The listener's own hooks —
    which checks start (`_start_checks`), whether EHLO offers AUTH (`_offers_auth`), how the
    `Evaluation` begins (`_begin`), what may refuse a decided 250 (`_before_accept`) — are given
    by `InboundHandler` (engine/smtp/inbound.py) and `OutboundHandler` (engine/smtp/outbound.py)."""

    def __init__(
        self,
        *,
        current_graph: Callable[[], FilterGraph],
        store: Store,
        relay: Waker | None,
        log_format: Callable[[], str],
        observer: TransactionObserver | None = None,
    ) -> None:
        self._observer = observer or TransactionObserver()
        self._current_graph = current_graph
        self._store = store
        self._relay = relay
        self._log_format = log_format
        self._checker = Checker()

    def _start_checks(self, session: Session, env: GatewayEnvelope, graph: FilterGraph) -> None:
        """The transaction's external checks, started as soon as the client is known (DNSBL)."""
        raise NotImplementedError

    @property
    def spool_dir(self) -> Path:
        """Where GatewaySMTP writes large messages while they arrive (the store's spool)."""
        return self._store.spool_dir

    def session_limits(self) -> tuple[int, int]:
        """(`limits.max_errors`, `limits.max_junk_commands`) of the live policy, for GatewaySMTP."""
        limits = self._current_graph().gateway.limits
        return limits.max_errors, limits.max_junk_commands

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self._start_checks(session, gateway_envelope(envelope), self._current_graph())
        if not self._offers_auth():  # aiosmtpd lists AUTH after STARTTLS whether or not anyone can log in
            responses = [line for line in responses if not line.startswith("250-AUTH")]
        # aiosmtpd handles pipelined commands in order; say so (RFC 2920) and that we send
        # enhanced status codes (RFC 2034).
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    def _offers_auth(self) -> bool:
        """Whether EHLO lists AUTH."""
        raise NotImplementedError

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        session.host_name = hostname
        self._start_checks(session, gateway_envelope(envelope), self._current_graph())
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        env = gateway_envelope(envelope)
        sender = "" if address == "<>" else address
        env.evaluation = evaluation = self._begin(session)
        reply = evaluation.connect() or evaluation.mail(sender)
        if reply.is_positive:  # checks whose result can refuse now are waited for (bounded)
            self._start_checks(session, env, evaluation.graph)
            if env.checks is not None:
                env.checks.mail(sender, evaluation.helo)
                reply = evaluation.add_hits(await env.checks.early_hits()) or reply
        if not reply.is_positive:
            if env.checks is not None:
                env.checks.cancel()
                env.checks = None
            env.evaluation = None  # the client may try another sender
            hit = evaluation.refusal_hit
            detail = f"{hit.id} ({hit.message})" if hit is not None else str(reply)
            self._observer.refused("mail", REASON_BLOCK_LIST if hit is not None and hit.kind == KIND_LIST
                                   else hit.id if hit is not None and hit.kind == KIND_OUTBOUND
                                   else hit.kind if hit is not None else "")
            self._log_refusal(session, sender, f"MAIL refused: {detail}", evaluation.graph)
            return str(reply)
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return str(reply)

    def _begin(self, session: Session) -> Evaluation:
        """The transaction's `Evaluation`, started at MAIL FROM."""
        raise NotImplementedError

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        env = gateway_envelope(envelope)
        if env.evaluation is None:  # aiosmtpd answers RCPT before MAIL itself; never reached
            return "503 5.5.1 need MAIL command"
        result = env.evaluation.rcpt(address)
        if not result.accepted:
            env.refused.append(f"{sanitise(address)}: {result.reply}")
            self._observer.refused("rcpt", result.reason)
            return str(result.answer)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return str(result.answer)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        env = gateway_envelope(envelope)
        evaluation = env.evaluation
        if evaluation is None:  # aiosmtpd answers DATA before MAIL/RCPT itself; never reached
            return "503 5.5.1 need MAIL command"
        raw = envelope.original_content or b""
        spool, size = env.spool, env.size if env.spool is not None else len(raw)
        queue_id = new_queue_id()
        try:
            if spool is not None:  # read once for parsing and checks; the store takes the file itself
                raw = await asyncio.to_thread(spool.read_bytes)
            offload = len(raw) >= OFFLOAD_SIZE  # parse + evaluate in a thread: other sessions keep being served
            if offload:  # (a spooled message's large texts are decoded once its bytes are let go)
                view = await asyncio.to_thread(parse_message, raw, defer_texts=spool is not None)
            else:
                view = parse_message(raw)
            report = await env.checks.data(raw, view) if env.checks is not None else None
            hits = report.new_hits if report is not None else ()
            if spool is not None:  # done with the bytes: the file is what is stored, the view what is decided
                head, raw = _header_section(raw), b""
                view = await asyncio.to_thread(load_texts, view, functools.partial(read_range, spool))
                size = await asyncio.to_thread(_strip_spooled, spool, head, size,
                                               evaluation.graph.gateway.hostname)
            returned = await self._returned_copies(view, evaluation)
            if offload:
                view, decision = await asyncio.to_thread(_evaluate, evaluation, view, hits, returned)
            else:
                view, decision = _evaluate(evaluation, view, hits, returned)
            if spool is None:
                raw = strip_forged_authentication_results(raw, evaluation.graph.gateway.hostname)
        except Exception:  # a bug must not cost the client its message: it retries
            log.exception("evaluation failed for %s; replying 451", queue_id)
            return "451 4.3.0 temporary failure evaluating the message"
        accepted = self._accepted(queue_id, raw, view.subject, session, evaluation, decision, report)
        if spool is not None:
            accepted = replace(accepted, body=spool, body_size=size)
        if not decision.reply.is_positive:
            if accepted.archive:  # refused mail is archived too: "why was it rejected?" has an answer
                try:
                    await self._store.accept(accepted)  # no copies: the archive row only
                except Exception:
                    log.exception("could not archive refused message %s", queue_id)
            self._observer.observe(decision, evaluation.direction.value, time.monotonic() - env.started)
            self._log_txn(queue_id, session, env, decision, size, str(decision.reply))
            return str(decision.reply)
        refusal = await self._before_accept(evaluation)
        if refusal is not None:  # (outbound: a rate limit reached meanwhile)
            self._log_txn(queue_id, session, env, decision, len(raw), refusal)
            return refusal
        try:
            await self._store.accept(accepted)
        except Exception:
            log.exception("spool write failed for %s; replying 451", queue_id)
            return "451 4.3.0 temporary storage failure, try again later"
        if self._relay is not None:
            self._relay.wake()
        reply = f"250 2.0.0 queued as {queue_id}"
        self._observer.observe(decision, evaluation.direction.value, time.monotonic() - env.started)
        self._log_txn(queue_id, session, env, decision, size, reply)
        return reply

    async def _before_accept(self, evaluation: Evaluation) -> str | None:
        """Called before a message decided 250 is stored: a refusal replaces the 250 (None: store it)."""
        return None

    async def _returned_copies(self, view: MessageView, evaluation: Evaluation) -> tuple[str, ...]:
        """Queue ids of this gateway's traces in the message whose stored copy went, in this same
        direction, to one of these same recipients: the message came back to where it was delivered
        (a mail loop). A tenant's outbound mail to another tenant comes back inbound: not a loop."""
        ids = own_trace_ids(header_text(view, "received"), evaluation.graph.gateway.hostname)
        if not ids:
            return ()
        mine = {normalise_address(rcpt) for rcpts in evaluation.recipients.values() for rcpt in rcpts}
        returned = []
        for queue_id in dict.fromkeys(ids):
            info = await self._store.message_info(queue_id)
            if info is None or info.envelope.direction is not evaluation.direction:
                continue
            if mine & {normalise_address(rcpt) for rcpt in info.envelope.rcpts}:
                returned.append(queue_id)
        return tuple(returned)

    def _accepted(
        self, queue_id: str, raw: bytes, subject: str, session: Session, evaluation: Evaluation, decision: Decision,
        report: CheckReport | None = None,
    ) -> Accepted:
        """What the store keeps: the message, its envelope and each copy the decision accepts, with
        the trace and verdict header fields that copy carries. Outbound copies go to the MX of each
        recipient domain and carry the trace field only (the verdict is not the world's business)."""
        now = time.time()
        graph = evaluation.graph
        outbound = evaluation.direction is Direction.outbound
        auth = report.authentication_results_field(graph.gateway.hostname) if report is not None else b""
        copies = []
        for verdict in decision.copies:
            if verdict.reason == REASON_TEMPFAIL_HELD:
                log.warning("queue_id=%s tenant=%s tempfail after 250: copy held in quarantine",
                            queue_id, verdict.tenant)
            rcpt = verdict.recipients[0] if len(verdict.recipients) == 1 else None
            headers = received_header(
                hostname=graph.gateway.hostname, helo=evaluation.helo, client_ip=evaluation.client_ip,
                queue_id=queue_id, rcpt=rcpt, esmtp=bool(session.extended_smtp), tls=session.ssl is not None,
                received_at=now, authenticated=bool(session.authenticated),
            ) + (b"" if outbound else auth + verdict_headers(verdict, decision.policy_version))
            copies.append(CopyPlan(
                tenant=verdict.tenant, recipients=verdict.recipients, action=verdict.action, headers=headers,
                subject_prefix=verdict.subject_prefix, route_by="address" if outbound else "tenant",
                reason=verdict.reason,
                score=verdict.score, hits=verdict.hits,
            ))
        stored_envelope = StoredEnvelope(
            mail_from=evaluation.mail_from,
            rcpts=tuple(r for rcpts in evaluation.recipients.values() for r in rcpts),
            client_ip=evaluation.client_ip,
            helo=evaluation.helo,
            received_at=now,
            direction=evaluation.direction,
        )
        return Accepted(
            queue_id=queue_id,
            raw=raw,
            envelope=stored_envelope,
            subject=subject,
            policy_version=decision.policy_version,
            verdict=decision.to_json(),
            copies=tuple(copies),
            archive=graph.gateway.archive.enabled,
        )

    # ------------------------------------------------------------ logging

    def _log_txn(
        self, queue_id: str, session: Session, env: GatewayEnvelope, decision: Decision, size: int, reply: str
    ) -> None:
        """One structured line per transaction (text key=value or JSON, per gateway `log.format`)."""
        record: dict[str, Any] = {
            "queue_id": queue_id,
            "client": client_ip(session),
            "helo": sanitise(session.host_name or ""),
            "from": sanitise(env.mail_from or ""),
            "rcpts": [sanitise(r) for r in env.rcpt_tos],
            "refused": env.refused,
            "tenants": {
                name: {"action": v.action.value, "score": v.score, "hits": [h.id for h in v.hits]}
                for name, v in decision.tenants.items()
            },
            "size": size,
            "duration_ms": round((time.monotonic() - env.started) * 1000, 1),
            "policy": decision.policy_version,
            "reply": reply,
        }
        if self._log_format() == "json":
            txn_log.info(json.dumps(record, separators=(",", ":")))
            return
        tenants = " ".join(
            f"{name}={v.action.value}/{v.score:g}[{','.join(h.id for h in v.hits)}]"
            for name, v in decision.tenants.items()
        )
        txn_log.info(
            "qid=%s client=%s helo=%s from=<%s> rcpts=%s %s size=%d duration_ms=%.1f policy=%s reply=%r",
            queue_id, record["client"], record["helo"], record["from"], ",".join(record["rcpts"]), tenants,
            size, record["duration_ms"], decision.policy_version, reply,
        )

    def log_unfinished(self, session: Session, envelope: Envelope) -> None:
        """A transaction that ended without DATA but refused recipients gets its log line too."""
        if isinstance(envelope, GatewayEnvelope) and envelope.refused:
            graph = envelope.evaluation.graph if envelope.evaluation else self._current_graph()
            self._log_refusal(session, envelope.mail_from or "", f"RCPT refused: {'; '.join(envelope.refused)}", graph)

    def _log_refusal(self, session: Session, sender: str, reason: str, graph: FilterGraph) -> None:
        """The log line of a transaction refused before DATA (no queue id: nothing was queued)."""
        client, helo, sender = client_ip(session), sanitise(session.host_name or ""), sanitise(sender)
        if self._log_format() == "json":
            record = {"queue_id": None, "client": client, "helo": helo, "from": sender, "refused": reason,
                      "policy": graph.version}
            txn_log.info(json.dumps(record, separators=(",", ":")))
        else:
            txn_log.info("qid=- client=%s helo=%s from=<%s> %s policy=%s", client, helo, sender, reason, graph.version)
