"""The inbound SMTP front end: aiosmtpd hooks that drive the filter graph stage by stage.

Contract:
- envelope decisions are replied at the earliest stage (MAIL for gateway-wide block lists,
  RCPT for open-relay refusal, unknown users and tenant block lists);
- content is evaluated once at end of DATA, one verdict per tenant; the reply follows
  DESIGN.md (5xx only if every copy is rejected, 4xx only if none accepted and one tempfailed);
- `250` is sent only after `Store.accept` returned, i.e. after the message and its index rows
  are committed and fsynced. If the store fails the client gets `451 4.3.0` and keeps the message;
- a message refused after DATA is still archived (when the archive is on), with its verdict;
- one graph snapshot serves a whole transaction, so a hot reload never mixes two policies;
- nothing a client sends can crash the process: evaluation errors become `451 4.3.0`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from engine.admin.metrics import TransactionObserver
from engine.graph.evaluator import ACCEPTED_ACTIONS, FilterGraph
from engine.graph.verdict import Decision
from engine.mime.view import parse_message
from engine.policy.models import Action
from engine.smtp.headers import received_header, sanitise, verdict_headers
from engine.smtp.protocol import client_ip
from engine.store.base import Accepted, CopyPlan, Store, new_queue_id
from engine.store.base import Envelope as StoredEnvelope

log = logging.getLogger("liveprism.smtp")
txn_log = logging.getLogger("liveprism.txn")


class Waker(Protocol):
    """Whatever delivers accepted mail: told after each accept so delivery starts at once."""

    def wake(self) -> None: ...


@dataclass
class Transaction:
    """Per-transaction state kept beside aiosmtpd's envelope (reset by RSET and after DATA)."""

    graph: FilterGraph | None = None
    started: float = field(default_factory=time.monotonic)
    recipients: dict[str, list[str]] = field(default_factory=dict)  # tenant -> accepted rcpts, as given
    seen: set[str] = field(default_factory=set)  # normalised accepted rcpts
    refused: list[str] = field(default_factory=list)  # "rcpt: reply" for the log


def _txn(envelope: Envelope) -> Transaction:
    state = getattr(envelope, "liveprism", None)
    if state is None:
        state = Transaction()
        envelope.liveprism = state  # type: ignore[attr-defined]
    return state


class InboundHandler:
    """aiosmtpd handler for the inbound (MX) listener."""

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

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        # aiosmtpd handles pipelined commands in order; say so (RFC 2920) and that we send
        # enhanced status codes (RFC 2034).
        return [*responses[:-1], "250-PIPELINING", "250-ENHANCEDSTATUSCODES", responses[-1]]

    async def handle_HELO(self, server: SMTP, session: Session, envelope: Envelope, hostname: str) -> str:
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        txn = _txn(envelope)
        txn.graph = graph = self._current_graph()
        sender = "" if address == "<>" else address
        blocked = graph.mail(client_ip(session), sender)
        if blocked is not None:
            self._log_refusal(session, sender, f"MAIL refused: {blocked.id} ({blocked.message})", graph)
            return f"550 5.7.1 rejected by policy ({blocked.id})"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        txn = _txn(envelope)
        graph = txn.graph or self._current_graph()
        if len(envelope.rcpt_tos) >= graph.gateway.limits.max_recipients:
            return "452 4.5.3 too many recipients"
        sender = "" if envelope.mail_from == "<>" else (envelope.mail_from or "")
        result = graph.rcpt(client_ip(session), sender, address)
        if result.reply is not None or result.tenant is None:
            txn.refused.append(f"{sanitise(address)}: {result.reply}")
            return str(result.reply)
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        if result.address not in txn.seen:  # the same mailbox twice is delivered once
            txn.seen.add(result.address)
            # RFC 5321 §2.4: the local part's case is the destination's business; keep it as given
            txn.recipients.setdefault(result.tenant, []).append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        txn = _txn(envelope)
        graph = txn.graph or self._current_graph()
        raw = envelope.original_content or b""
        sender = "" if envelope.mail_from == "<>" else (envelope.mail_from or "")
        queue_id = new_queue_id()
        try:
            view = parse_message(raw)
            decision = graph.data(
                client_ip=client_ip(session), mail_from=sender, recipients=txn.recipients, view=view
            )
        except Exception:  # a bug must not cost the client its message: it retries
            log.exception("evaluation failed for %s; replying 451", queue_id)
            return "451 4.3.0 temporary failure evaluating the message"
        accepted = self._accepted(queue_id, raw, session, envelope, txn, graph, decision, sender)
        if not decision.reply.is_positive:
            if accepted.archive:  # refused mail is archived too: "why was it rejected?" has an answer
                try:
                    await self._store.accept(accepted)  # no copies: the archive row only
                except Exception:
                    log.exception("could not archive refused message %s", queue_id)
            self._observer.observe(decision, "inbound", time.monotonic() - txn.started)
            self._log_txn(queue_id, session, envelope, txn, decision, len(raw), str(decision.reply))
            return str(decision.reply)
        try:
            await self._store.accept(accepted)
        except Exception:
            log.exception("spool write failed for %s; replying 451", queue_id)
            return "451 4.3.0 temporary storage failure, try again later"
        if self._relay is not None:
            self._relay.wake()
        reply = f"250 2.0.0 queued as {queue_id}"
        self._observer.observe(decision, "inbound", time.monotonic() - txn.started)
        self._log_txn(queue_id, session, envelope, txn, decision, len(raw), reply)
        return reply

    def _accepted(
        self,
        queue_id: str,
        raw: bytes,
        session: Session,
        envelope: Envelope,
        txn: Transaction,
        graph: FilterGraph,
        decision: Decision,
        sender: str,
    ) -> Accepted:
        now = time.time()
        tls = session.ssl is not None
        copies = []
        for verdict in decision.tenants.values():
            action = verdict.action
            if action is Action.tempfail and decision.reply.is_positive:
                # Another tenant's copy took the 250, so this one cannot be deferred to the client
                # any more: hold it (releasable) rather than lose it.
                log.warning("queue_id=%s tenant=%s tempfail after 250: copy held in quarantine",
                            queue_id, verdict.tenant)
                action = Action.quarantine
            if action not in ACCEPTED_ACTIONS:
                continue
            rcpt = verdict.recipients[0] if len(verdict.recipients) == 1 else None
            headers = received_header(
                hostname=graph.gateway.hostname, helo=session.host_name or "", client_ip=client_ip(session),
                queue_id=queue_id, rcpt=rcpt, esmtp=bool(session.extended_smtp), tls=tls, received_at=now,
            ) + verdict_headers(verdict, decision.policy_version)
            copies.append(
                CopyPlan(
                    tenant=verdict.tenant,
                    recipients=verdict.recipients,
                    action=action.value,
                    headers=headers,
                    subject_prefix=verdict.subject_prefix,
                    verdict=verdict.to_json(),
                )
            )
        stored_envelope = StoredEnvelope(
            mail_from=sender,
            rcpts=tuple(r for rcpts in txn.recipients.values() for r in rcpts),
            client_ip=client_ip(session),
            helo=session.host_name or "",
            received_at=now,
        )
        return Accepted(
            queue_id=queue_id,
            raw=raw,
            envelope=stored_envelope,
            policy_version=decision.policy_version,
            verdict=decision.to_json(),
            copies=tuple(copies),
            archive=graph.gateway.archive.enabled,
        )

    # ------------------------------------------------------------ logging

    def _log_txn(
        self, queue_id: str, session: Session, envelope: Envelope, txn: Transaction, decision: Decision,
        size: int, reply: str,
    ) -> None:
        """One structured line per transaction (text key=value or JSON, per gateway `log.format`)."""
        record: dict[str, Any] = {
            "queue_id": queue_id,
            "client": client_ip(session),
            "helo": sanitise(session.host_name or ""),
            "from": sanitise(envelope.mail_from or ""),
            "rcpts": [sanitise(r) for r in envelope.rcpt_tos],
            "refused": txn.refused,
            "tenants": {
                name: {"action": v.action.value, "score": v.score, "hits": [h.id for h in v.hits]}
                for name, v in decision.tenants.items()
            },
            "size": size,
            "duration_ms": round((time.monotonic() - txn.started) * 1000, 1),
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
        txn = getattr(envelope, "liveprism", None)
        if isinstance(txn, Transaction) and txn.refused:
            graph = txn.graph or self._current_graph()
            self._log_refusal(session, envelope.mail_from or "", f"RCPT refused: {'; '.join(txn.refused)}", graph)

    def _log_refusal(self, session: Session, sender: str, reason: str, graph: FilterGraph) -> None:
        """The log line of a transaction refused before DATA (no queue id: nothing was queued)."""
        client, helo, sender = client_ip(session), sanitise(session.host_name or ""), sanitise(sender)
        if self._log_format() == "json":
            record = {"queue_id": None, "client": client, "helo": helo, "from": sender, "refused": reason,
                      "policy": graph.version}
            txn_log.info(json.dumps(record, separators=(",", ":")))
        else:
            txn_log.info("qid=- client=%s helo=%s from=<%s> %s policy=%s", client, helo, sender, reason, graph.version)
