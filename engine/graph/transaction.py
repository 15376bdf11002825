"""One SMTP transaction evaluated against one compiled policy: the single evaluation path.

`serve` (the SMTP handler), `explain`, the BDD steps and the outbound listener all drive an
`Evaluation` (maddy's `CheckState` shape): `Evaluation.begin(graph, client_ip, helo, direction)`, then one
call per SMTP stage in protocol order, then `finish()`:

    evaluation = Evaluation.begin(graph, client_ip, helo, direction)
    evaluation.connect()             # gateway-wide block list by client network (inbound)
    evaluation.add_hits(hits)        # external check results as they arrive (DNSBL, SPF, …)
    evaluation.mail(sender)          # gateway-wide block list by envelope sender
    evaluation.rcpt(address) …       # relay refusal, unknown users, tenant block lists, limits
    evaluation.data(view, external_hits=…)   # content, thresholds, one verdict per tenant
    decision = evaluation.finish()   # the reply and each tenant's copy plan

Contract:
- every method returns a value (a `Reply`, an `RcptResult`, a `Decision`) and never raises on
  what a client sends; a refusal at one stage is final: later stages are not evaluated and
  `finish()` reports the refusal;
- recipients keep their case as given (RFC 5321 §2.4) and the same mailbox accepted twice is
  one recipient of its tenant's copy (its second RCPT still gets 250);
- the decision combines tenants' verdicts by DESIGN.md "Decisions": 5xx only when every copy is
  rejected, 4xx only when none is accepted and one is tempfailed, otherwise 250; a copy that
  tempfails while another copy took the 250 cannot be deferred any more and is held in
  quarantine (reason `tempfail-held`), releasable. `Decision.copies` are the copies to store;
- external hits given before DATA (`add_hits`) count in every tenant's DATA verdict; a hit whose
  action is `reject` or `tempfail` refuses the transaction at once (a listed client is refused
  before DATA when the policy says so);
- one graph snapshot serves the whole transaction: a hot reload never mixes two policies;
- outbound (`direction=outbound`): `mail` decides the sending tenant (`sender_tenant`: the SMTP
  AUTH user's tenant given to `begin`, or the tenant whose `outbound.networks` hold the client)
  and refuses a sender outside its domains (550 5.7.1); any recipient domain is accepted for it;
  `data` refuses a header From outside its domains (550 5.7.1) before any rule runs; gateway
  block lists by network/sender are inbound protections and are not applied to tenants' servers.

`simulate` runs a whole transaction from an envelope and a message: `explain`, the BDD steps and
`plan` use it, and the differential test proves it answers what `serve` answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from engine.graph.addresses import a_label_domain, mx_labels, normalise_address
from engine.graph.filter_graph import FilterGraph
from engine.graph.loops import loop_refusal
from engine.graph.verdict import (
    ACCEPTED_ACTIONS,
    REASON_BLOCK_LIST,
    REASON_MAIL_LOOP,
    REASON_TEMPFAIL_HELD,
    REPLY_MAIL_OK,
    REPLY_NO_POSTMASTER,
    REPLY_NO_RECIPIENTS,
    REPLY_RCPT_OK,
    REPLY_REJECT,
    REPLY_TEMPFAIL,
    REPLY_TOO_MANY_RECIPIENTS,
    Decision,
    Hit,
    RcptResult,
    Reply,
    Stage,
    TenantVerdict,
    policy_refusal,
)
from engine.mime.view import MessageView, header_text, parse_message
from engine.policy.models import Action, Direction


@dataclass(slots=True)
class Evaluation:
    """The state of one transaction (see the module docstring). Not shared between tasks."""

    graph: FilterGraph
    client_ip: str
    helo: str = ""
    direction: Direction = Direction.inbound
    mail_from: str = ""
    auth_tenant: str | None = None  # outbound: the tenant of the client's SMTP AUTH user, if it authenticated
    sender_tenant: str | None = None  # outbound: the tenant this transaction sends as (decided at MAIL)
    recipients: dict[str, list[str]] = field(default_factory=dict)  # tenant -> accepted rcpts, as given
    rcpt_results: list[RcptResult] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)  # external hits handed in before DATA
    _seen: set[str] = field(default_factory=set)  # normalised accepted rcpts
    _accepted_rcpts: int = 0  # RCPTs answered 250, duplicates included (the limit counts commands)
    _refused_copies: dict[str, TenantVerdict] = field(default_factory=dict)  # tenants refused at RCPT
    refusal_hit: Hit | None = None  # what refused the whole transaction before DATA, if anything
    _decision: Decision | None = None

    @classmethod
    def begin(
        cls, graph: FilterGraph, client_ip: str, helo: str = "", direction: Direction = Direction.inbound, *,
        auth_tenant: str | None = None,
    ) -> Evaluation:
        """A new transaction from this client against `graph`; `auth_tenant`: outbound, the tenant
        of the client's SMTP AUTH user."""
        return cls(graph, client_ip, helo, direction, auth_tenant=auth_tenant)

    # ------------------------------------------------------------ stages before DATA

    def connect(self) -> Reply | None:
        """A gateway-wide block list entry for the client network refuses the transaction."""
        if self._decision is not None:
            return self._decision.reply
        if self.direction is Direction.outbound:  # outbound clients are tenants' own servers
            return None
        blocked = self.graph.connect(self.client_ip)
        return None if blocked is None else self._refuse(blocked, "connect")

    def add_hits(self, hits: Sequence[Hit]) -> Reply | None:
        """Record external check results; a reject/tempfail hit refuses the transaction now."""
        if self._decision is not None:
            return self._decision.reply
        self.hits.extend(hits)
        refusing = [hit for hit in hits if hit.action in (Action.reject, Action.tempfail)]
        if not refusing:
            return None
        worst = max(refusing, key=lambda hit: hit.action.severity if hit.action else 0)
        return self._refuse(worst, self.stage)

    def mail(self, sender: str) -> Reply:
        """MAIL FROM: `sender` is the reverse-path without brackets ("" for the null sender)."""
        if self._decision is not None:
            return self._decision.reply
        self.mail_from = sender
        if self.direction is Direction.outbound:
            decided = self.graph.outbound_sender(self.client_ip, sender, self.auth_tenant)
            if isinstance(decided, Hit):
                return self._refuse(decided, "mail", Reply(550, "5.7.1", decided.message or "not allowed"))
            self.sender_tenant = decided
            return REPLY_MAIL_OK
        blocked = self.graph.mail(self.client_ip, sender)
        if blocked is not None:
            return self._refuse(blocked, "mail")
        return REPLY_MAIL_OK

    def rcpt(self, address: str) -> RcptResult:
        """RCPT TO: the result's `reply` is what the client is answered (250 when accepted)."""
        if self._decision is not None:
            return RcptResult(address, None, self._decision.reply, "refused")
        if self._accepted_rcpts >= self.graph.gateway.limits.max_recipients:
            result = RcptResult(address, None, REPLY_TOO_MANY_RECIPIENTS, "too-many-recipients")
            self.rcpt_results.append(result)
            return result
        given = a_label_domain(address.strip().strip("<>").strip())
        if self._is_postmaster(given):  # RFC 5321 §4.5.1: accepted without a domain
            postmaster = self.graph.gateway.postmaster
            if postmaster is None:
                result = RcptResult(given, None, REPLY_NO_POSTMASTER, "unknown-user")
                self.rcpt_results.append(result)
                return result
            given = postmaster
        result = self.graph.rcpt(self.client_ip, self.mail_from, given, direction=self.direction,
                                 sender_tenant=self.sender_tenant)
        self.rcpt_results.append(result)
        if not result.accepted or result.tenant is None:
            if result.tenant is not None and result.reason == REASON_BLOCK_LIST:
                plan = self.graph.tenants[result.tenant]
                self._refused_copies[result.tenant] = plan.refusal(
                    (address,), result.hits, "rcpt", result.reply or REPLY_REJECT
                )
            return result
        self._accepted_rcpts += 1
        if result.address not in self._seen:  # the same mailbox twice is delivered once
            self._seen.add(result.address)
            self.recipients.setdefault(result.tenant, []).append(given)
        return result

    def _is_postmaster(self, address: str) -> bool:
        """`postmaster` without a domain, or at the gateway's own host name (case-insensitive)."""
        local, at, domain = address.lower().rpartition("@")
        if not at:
            return domain == "postmaster"
        return local == "postmaster" and domain.rstrip(".") == self.graph.gateway.hostname

    # ------------------------------------------------------------ DATA and the outcome

    def data(self, view: MessageView, external_hits: Sequence[Hit] = (), returned_ids: Sequence[str] = ()) -> Decision:
        """End of DATA: one verdict per tenant with a recipient, combined into the client's reply.
        A message in a mail loop is refused first, whatever the policy (engine/graph/loops.py);
        `returned_ids` are queue ids of this gateway's traces that the caller's store shows went
        to these same recipients (only `serve` has a store; `explain` judges by headers)."""
        if self._decision is not None:
            return self._decision
        if not self.recipients:
            return self._no_recipients()
        gateway = self.graph.gateway
        loop = loop_refusal(header_text(view, "received"), gateway.hostname, gateway.limits.hopcount_limit,
                            returned_ids)
        if loop is not None:
            self.refusal_hit = loop.hit
            verdicts = {
                name: TenantVerdict(name, tuple(rcpts), Action.reject, 0.0, (loop.hit,),
                                    self.graph.tenants[name].route_labels, REASON_MAIL_LOOP, "data", loop.reply)
                for name, rcpts in self.recipients.items()
            }
            self._decision = Decision(Action.reject, loop.reply, verdicts, self.graph.version, "data")
            return self._decision
        if self.direction is Direction.outbound and self.sender_tenant is not None:
            spoofed = self.graph.foreign_from(self.sender_tenant, view.from_addresses)
            if spoofed is not None:
                return self._spoofed_from(spoofed)
        verdicts = self.graph.tenant_verdicts(
            client_ip=self.client_ip,
            mail_from=self.mail_from,
            recipients=self.recipients,
            view=view,
            direction=self.direction,
            external_hits=(*self.hits, *external_hits),
        )
        decision = combine(verdicts, "data", self.graph.version)
        if self._refused_copies:  # tenants refused at RCPT are reported beside, never combined
            decision = replace(decision, tenants={**self._refused_copies, **decision.tenants})
        self._decision = decision
        return decision

    def _spoofed_from(self, hit: Hit) -> Decision:
        """Outbound: the header From is not the sending tenant's; its copy is rejected at DATA."""
        assert self.sender_tenant is not None
        rcpts = tuple(self.recipients.get(self.sender_tenant, ()))
        reply = Reply(550, "5.7.1", hit.message or "header From not allowed")
        verdict = TenantVerdict(self.sender_tenant, rcpts, Action.reject, 0.0, (hit,), mx_labels(rcpts),
                                hit.id, "data", reply)
        self._decision = combine({self.sender_tenant: verdict}, "data", self.graph.version)
        return self._decision

    def finish(self) -> Decision:
        """The outcome: the refusal of an earlier stage, or the DATA decision."""
        if self._decision is not None:
            return self._decision
        return self._no_recipients()

    @property
    def stage(self) -> Stage:
        if self.rcpt_results:
            return "rcpt"
        return "mail" if self.mail_from else "connect"

    @property
    def refused(self) -> bool:
        """True once a stage refused the whole transaction."""
        return self._decision is not None and not self._decision.reply.is_positive

    def _refuse(self, hit: Hit, stage: Stage, reply: Reply | None = None) -> Reply:
        """The whole transaction is refused at `stage` by `hit` (a block list, a check or outbound
        anti-spoofing), answered `reply` (by default the hit's `policy_refusal`)."""
        reply = reply or policy_refusal(hit)
        self.refusal_hit = hit
        verdicts: dict[str, TenantVerdict] = {}
        for tenant in self.recipients:
            verdicts[tenant] = self.graph.tenants[tenant].refusal((), (hit,), stage, reply)
        action = Action.tempfail if reply.code // 100 == 4 else Action.reject
        self._decision = Decision(action, reply, verdicts, self.graph.version, stage)
        return reply

    def _no_recipients(self) -> Decision:
        first = next((r.reply for r in self.rcpt_results if r.reply is not None and not r.accepted), None)
        reply = first or REPLY_NO_RECIPIENTS
        return Decision(Action.reject, reply, dict(self._refused_copies), self.graph.version, "rcpt")


def combine(verdicts: dict[str, TenantVerdict], stage: Stage, version: str) -> Decision:
    """The client's reply from each tenant's verdict (DESIGN.md "Decisions"), and the copies."""
    copies = list(verdicts.values())
    accepted = [v for v in copies if v.action in ACCEPTED_ACTIONS]
    if accepted:
        # A copy that tempfails while another took the 250 cannot be deferred to the client any
        # more: it is held (releasable) rather than lost.
        held = {
            name: v.held(REASON_TEMPFAIL_HELD)
            for name, v in verdicts.items()
            if v.action is Action.tempfail
        }
        final = {**verdicts, **held}
        action = max((v.action for v in final.values() if v.action in ACCEPTED_ACTIONS), key=lambda a: a.severity)
        return Decision(action, Reply(250, "2.0.0", "queued"), final, version, stage)
    tempfailed = [v for v in copies if v.action is Action.tempfail]
    if tempfailed or not copies:
        reply = (tempfailed[0].reply if tempfailed else None) or REPLY_TEMPFAIL
        return Decision(Action.tempfail, reply, dict(verdicts), version, stage)
    reply = copies[0].reply or REPLY_REJECT
    return Decision(Action.reject, reply, dict(verdicts), version, stage)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A simulated transaction: the decision and the reply of every stage, in protocol order."""

    decision: Decision
    rcpt_results: tuple[RcptResult, ...]
    replies: tuple[tuple[str, Reply], ...]  # ("mail", reply), ("rcpt <addr>", reply), ("data", reply)


def simulate(
    graph: FilterGraph,
    *,
    raw: bytes,
    mail_from: str,
    rcpts: Sequence[str],
    client_ip: str,
    helo: str = "",
    direction: Direction = Direction.inbound,
    external_hits: Sequence[Hit] = (),
    view: MessageView | None = None,
    early_hits: Sequence[Hit] = (),
    auth_tenant: str | None = None,
) -> Outcome:
    """Run one whole transaction as `serve` would (the client stops at the first refusal of the
    whole transaction, and sends DATA only when a recipient was accepted). `early_hits` are check
    results `serve` has after MAIL FROM (DNSBL, SPF), `external_hits` those of DATA; `auth_tenant`
    is the tenant of an outbound client's SMTP AUTH user."""
    evaluation = Evaluation.begin(graph, client_ip, helo, direction, auth_tenant=auth_tenant)
    replies: list[tuple[str, Reply]] = []
    refusal = evaluation.connect() or evaluation.add_hits(())
    if refusal is None:
        reply = evaluation.mail(mail_from)
        if reply.is_positive and early_hits:
            reply = evaluation.add_hits(early_hits) or reply
        replies.append(("mail", reply))
        if reply.is_positive:
            for rcpt in rcpts:
                result = evaluation.rcpt(rcpt)
                replies.append((f"rcpt {rcpt}", result.reply or REPLY_RCPT_OK))
            if evaluation.recipients:
                decision = evaluation.data(view or parse_message(raw), external_hits)
                replies.append(("data", decision.reply))
    else:
        replies.append(("mail", refusal))
    decision = evaluation.finish()
    # the client stops here; name the tenants it wrote to (outbound: the recipients are not tenants')
    if decision.stage in ("connect", "mail") and direction is not Direction.outbound:
        hits = (evaluation.refusal_hit,) if evaluation.refusal_hit else ()
        blocked = dict(decision.tenants)
        for rcpt in rcpts:
            tenant = graph.tenant_of_domain(normalise_address(rcpt).rpartition("@")[2])
            if tenant is not None and tenant not in blocked:
                blocked[tenant] = graph.tenants[tenant].refusal((), hits, decision.stage, decision.reply)
        decision = replace(decision, tenants=blocked)
    return Outcome(decision, tuple(evaluation.rcpt_results), tuple(replies))
