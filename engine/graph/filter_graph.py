"""The compiled, immutable filter graph: what each SMTP stage's input matches.

A transaction is evaluated by an `Evaluation` (`Evaluation.begin(graph, …)`, engine/graph/transaction.py),
which calls these per-stage lookups in protocol order; nothing else decides. Each decision is
taken at the earliest stage that can see its input (DESIGN.md "Decisions"):
- `connect(ip)` / `mail(ip, sender)`: lists applied to every tenant (gateway `lists`), by client
  network and envelope sender;
- `rcpt(ip, sender, rcpt)`: open-relay refusal, recipient validation, the recipient tenant's
  own lists by network and envelope sender; outbound (`direction=outbound`): any recipient
  domain is accepted for the sending tenant the transaction decided at MAIL;
- outbound anti-spoofing (`outbound_sender`, `foreign_from`): the client is admitted by a
  tenant's `outbound.networks` or as an SMTP AUTH user of one tenant (the SMTP layer tells the
  transaction which); the envelope sender's and every header From address's domain must belong to
  that tenant: a domain (or a parent of it) in its `domains` or `outbound.sender_domains`, the
  most specific claim winning, so no tenant sends as another or as a stranger. The null sender is
  allowed (bounces of the tenant's servers, as Postfix allows them) when the tenant is known;
- `tenant_verdicts(...)`: content rules, header From against lists, score thresholds, one
  verdict per tenant (the transaction combines them into the client's reply).
Nothing here raises on bad input and nothing mutates the graph: a reload swaps the whole object.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from engine.graph.addresses import mx_labels, normalise_address
from engine.graph.content import ContentIndex
from engine.graph.lists import ListEntry, ListIndex
from engine.graph.verdict import (
    HIT_MALFORMED_MIME,
    KIND_ANTIVIRUS,
    KIND_LIST,
    KIND_MIME,
    KIND_OUTBOUND,
    KIND_RULE,
    REASON_ALLOW_LIST,
    REASON_BLOCK_LIST,
    REASON_CLEAN,
    REASON_NOT_AUTHORISED,
    REASON_RELAY_DENIED,
    REASON_RULE_ACTION,
    REASON_SCORE,
    REASON_SPOOFED_FROM,
    REASON_SPOOFED_SENDER,
    REASON_UNKNOWN_USER,
    REASON_VIRUS,
    REPLY_RELAY_DENIED,
    REPLY_UNKNOWN_USER,
    Hit,
    RcptResult,
    Reply,
    Stage,
    TenantVerdict,
    action_reply,
)
from engine.mime.view import MessageView
from engine.policy.models import AcceptMode, Action, Direction, Gateway, ListAction, Outbound, Route, Scoring


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """One content rule, flattened: what it does and where it was written."""

    id: str
    score: float | None
    action: Action | None
    message: str | None
    direction: Direction
    source: str

    def hit(self) -> Hit:
        return Hit(self.id, KIND_RULE, self.score or 0.0, self.action, self.source, self.message)


@dataclass(frozen=True, slots=True)
class TenantPlan:
    """One tenant, compiled: routes in order, recipient matcher, lists, rules and thresholds."""

    name: str
    domains: tuple[str, ...]
    routes: tuple[Route, ...]
    accept: AcceptMode
    recipient_addresses: frozenset[str]
    recipient_domains: frozenset[str]
    list_names: frozenset[str]
    inbound_rules: frozenset[int]
    outbound_rules: frozenset[int]
    scoring: Scoring
    outbound_networks: tuple[str, ...]
    source: str
    # tenant `checks:` overrides: hit id (or "check:*") -> (score or None, action or None)
    check_overrides: Mapping[str, tuple[float | None, Action | None]] = field(default_factory=dict)
    outbound: Outbound = field(default_factory=Outbound)  # the tenant's `outbound:` settings

    @property
    def sender_domains(self) -> tuple[str, ...]:
        """Domains this tenant may send as (subdomains included): `domains` + `outbound.sender_domains`."""
        return (*self.domains, *self.outbound.sender_domains)

    def own_check_hits(self, hits: Sequence[Hit]) -> tuple[Hit, ...]:
        """`hits` with this tenant's score/action overrides of check results applied."""
        if not self.check_overrides:
            return tuple(hits)
        out = []
        for hit in hits:
            override = self.check_overrides.get(hit.id) or self.check_overrides.get(hit.id.partition(":")[0] + ":*")
            if override is not None:
                score, action = override
                hit = replace(hit, score=hit.score if score is None else score,
                              action=hit.action if action is None else action, source=f"{self.source} checks")
            out.append(hit)
        return tuple(out)

    def accepts_recipient(self, address: str) -> bool:
        if self.accept is AcceptMode.any:
            return True
        return address in self.recipient_addresses or address.rpartition("@")[2] in self.recipient_domains

    @property
    def route_labels(self) -> tuple[str, ...]:
        """`host:port` of each route, in the order they are tried."""
        return tuple(route.label for route in self.routes)

    def refusal(self, rcpts: tuple[str, ...], hits: tuple[Hit, ...], stage: Stage, reply: Reply) -> TenantVerdict:
        """The verdict of a copy refused before DATA by a block list or a check."""
        return TenantVerdict(self.name, rcpts, Action.reject, 0.0, hits, self.route_labels, REASON_BLOCK_LIST,
                             stage, reply)

    def rules_for(self, direction: Direction) -> frozenset[int]:
        return self.outbound_rules if direction is Direction.outbound else self.inbound_rules

    def score_action(self, score: float) -> Action:
        if score >= self.scoring.reject_at:
            return Action.reject
        if score >= self.scoring.quarantine_at:
            return Action.quarantine
        if score >= self.scoring.tag_at:
            return Action.tag
        return Action.deliver


def _list_hit(entry: ListEntry) -> Hit:
    action = {ListAction.block: Action.reject, ListAction.allow: Action.deliver}.get(entry.action, Action.quarantine)
    return Hit(entry.list_name, KIND_LIST, 0.0, action, entry.source, f"{entry.field}: {entry.value}")


def _outbound_hit(reason: str, message: str) -> Hit:
    """An outbound anti-spoofing refusal (its id is the reason token)."""
    return Hit(reason, KIND_OUTBOUND, 0.0, Action.reject, "listeners.outbound", message)


def _relay_trick(address: str) -> bool:
    """Addresses that only look local: %-hacks, bang paths, source routes, quoted @, literals."""
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain:
        return True
    return (
        address.startswith("@")
        or any(ch in local for ch in "%!@:\"")
        or domain.startswith("[")
        or any(ch in domain for ch in "%!@:[] ")
    )


class FilterGraph:
    """The compiled policy. Immutable after construction; safe to share between tasks and threads."""

    def __init__(
        self,
        *,
        version: str,
        content_hash: str = "",
        gateway: Gateway,
        tenants: Mapping[str, TenantPlan],
        rules: Sequence[CompiledRule],
        content: ContentIndex,
        lists: ListIndex,
        global_lists: frozenset[str],
        root: Path | None = None,
    ) -> None:
        self.version = version
        self.root = root  # the policy directory it was compiled from (relative paths in it resolve here)
        self.content_hash = content_hash  # of the policy files it was compiled from
        self.gateway = gateway
        self.tenants: Mapping[str, TenantPlan] = dict(tenants)
        self.rules: tuple[CompiledRule, ...] = tuple(rules)
        self._content = content
        self._lists = lists
        self._global_lists = global_lists
        self._tenant_by_domain = {domain: plan.name for plan in self.tenants.values() for domain in plan.domains}
        self._outbound_networks = {
            plan.name: tuple(ipaddress.ip_network(network) for network in plan.outbound_networks)
            for plan in self.tenants.values()
        }
        self._route_labels = {plan.name: plan.route_labels for plan in self.tenants.values()}  # precomputed
        self._sender_owner = {  # sending domain -> tenant (validate refuses a domain claimed twice)
            domain.lower().rstrip("."): plan.name for plan in self.tenants.values() for domain in plan.sender_domains
        }

    # ------------------------------------------------------------ lookups

    def tenant_of_domain(self, domain: str) -> str | None:
        return self._tenant_by_domain.get(domain.lower().rstrip("."))

    def tenant_routes(self, tenant: str) -> tuple[Route, ...]:
        plan = self.tenants.get(tenant)
        return plan.routes if plan else ()

    def network_tenants(self, client_ip: str) -> tuple[str, ...]:
        """The tenants whose `outbound.networks` hold this client (usually one), in name order."""
        try:
            address = ipaddress.ip_address(client_ip)
        except ValueError:
            return ()
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return tuple(sorted(
            tenant for tenant, networks in self._outbound_networks.items()
            if any(address.version == net.version and address in net for net in networks)
        ))

    def sending_tenant_of(self, domain: str) -> str | None:
        """The tenant that may send as `domain`: the most specific of its parents (itself included)
        that some tenant lists in `domains` or `outbound.sender_domains`."""
        labels = domain.lower().rstrip(".").split(".")
        for start in range(len(labels)):
            owner = self._sender_owner.get(".".join(labels[start:]))
            if owner is not None:
                return owner
        return None

    def outbound_sender(self, client_ip: str, mail_from: str, auth_tenant: str | None = None) -> str | Hit:
        """MAIL FROM on the outbound listener: the tenant this transaction sends as, or the refusing
        hit. The client is that tenant's as its SMTP AUTH user (`auth_tenant`) or by its networks;
        the sender's domain must be the tenant's (`sending_tenant_of`); the null sender is allowed
        when the tenant is unambiguous."""
        candidates = (auth_tenant,) if auth_tenant is not None else self.network_tenants(client_ip)
        if not candidates or candidates[0] not in self.tenants:  # (a reload removed the user's tenant)
            return _outbound_hit(REASON_NOT_AUTHORISED, "relaying denied: client not authorised to send"
                                 " (not in a tenant's outbound networks, not authenticated)")
        sender = normalise_address(mail_from)
        if not sender:
            if len(candidates) == 1:
                return candidates[0]
            return _outbound_hit(REASON_SPOOFED_SENDER, "null sender from a network several tenants share:"
                                 " authenticate to say which tenant sends")
        domain = sender.rpartition("@")[2]
        owner = self.sending_tenant_of(domain)
        if owner is not None and owner in candidates:
            return owner
        return _outbound_hit(REASON_SPOOFED_SENDER, f"sender address not allowed: {domain[:100]} is not a"
                             " sending domain of this client")

    def foreign_from(self, tenant: str, from_addresses: Sequence[str]) -> Hit | None:
        """End of DATA on the outbound listener: the refusing hit when the header From is missing or
        one of its addresses is not a sending domain of `tenant`."""
        if not from_addresses:
            return _outbound_hit(REASON_SPOOFED_FROM, "header From missing")
        for address in from_addresses:
            domain = normalise_address(address).rpartition("@")[2]
            if not domain or self.sending_tenant_of(domain) != tenant:
                return _outbound_hit(REASON_SPOOFED_FROM, f"header From not allowed: {domain[:100] or address[:100]}"
                                     " is not a sending domain of this client")
        return None

    # ------------------------------------------------------------ envelope stages

    def _global_block(self, entries: Sequence[ListEntry]) -> Hit | None:
        for entry in entries:
            if entry.action is ListAction.block and entry.list_name in self._global_lists:
                return _list_hit(entry)
        return None

    def connect(self, client_ip: str) -> Hit | None:
        """A gateway-wide block list entry matching the client network, if any."""
        return self._global_block(self._lists.match_ip(client_ip))

    def mail(self, client_ip: str, mail_from: str) -> Hit | None:
        """A gateway-wide block list entry matching the client network or the envelope sender."""
        return self.connect(client_ip) or self._global_block(self._lists.match_address(normalise_address(mail_from)))

    def rcpt(
        self, client_ip: str, mail_from: str, rcpt: str, *, direction: Direction = Direction.inbound,
        sender_tenant: str | None = None,
    ) -> RcptResult:
        """Whether one recipient is accepted: open-relay refusal, recipient list, tenant block lists.

        Outbound, the result's `tenant` is `sender_tenant` (decided at MAIL by `outbound_sender`)."""
        address = normalise_address(rcpt)
        if _relay_trick(address):
            return RcptResult(address, None, REPLY_RELAY_DENIED, REASON_RELAY_DENIED)
        if direction is Direction.outbound:
            if sender_tenant is None:
                return RcptResult(address, None, REPLY_RELAY_DENIED, REASON_RELAY_DENIED)
            return RcptResult(address, sender_tenant, None)
        tenant = self.tenant_of_domain(address.rpartition("@")[2])
        if tenant is None:
            return RcptResult(address, None, REPLY_RELAY_DENIED, REASON_RELAY_DENIED)
        plan = self.tenants[tenant]
        if not plan.accepts_recipient(address):
            return RcptResult(address, tenant, REPLY_UNKNOWN_USER, REASON_UNKNOWN_USER)
        entries = self._lists.match_ip(client_ip) + self._lists.match_address(normalise_address(mail_from))
        for entry in entries:
            if entry.action is ListAction.block and entry.list_name in plan.list_names:
                hit = _list_hit(entry)
                reply = Reply(550, "5.7.1", f"rejected by policy ({entry.list_name})")
                return RcptResult(address, tenant, reply, REASON_BLOCK_LIST, (hit,))
        return RcptResult(address, tenant, None)

    # ------------------------------------------------------------ data stage

    def tenant_verdicts(
        self,
        *,
        client_ip: str,
        mail_from: str,
        recipients: Mapping[str, Sequence[str]],
        view: MessageView,
        direction: Direction = Direction.inbound,
        external_hits: Sequence[Hit] = (),
    ) -> dict[str, TenantVerdict]:
        """One verdict per tenant for an accepted message (tenant name → its accepted recipients).

        `external_hits` are check results (antivirus, DNSBL, …) computed outside the graph."""
        matched_rules = self._content.matching_rules(view, frozenset(hit.id for hit in external_hits))
        entries = self._lists.match_ip(client_ip) + self._lists.match_address(normalise_address(mail_from))
        for header_from in view.from_addresses:
            entries += self._lists.match_address(header_from)
        builtin: list[Hit] = []
        if view.defects:
            score = self.gateway.checks.mime.malformed_score
            builtin.append(Hit(HIT_MALFORMED_MIME, KIND_MIME, score, None, "builtin", ",".join(view.defects)))
        return {
            tenant: self._tenant_verdict(
                self.tenants[tenant], tuple(rcpts), direction, matched_rules, entries, builtin, external_hits
            )
            for tenant, rcpts in recipients.items()
            if tenant in self.tenants
        }

    def _tenant_verdict(
        self,
        plan: TenantPlan,
        rcpts: tuple[str, ...],
        direction: Direction,
        matched_rules: Sequence[int],
        entries: Sequence[ListEntry],
        builtin: Sequence[Hit],
        external_hits: Sequence[Hit],
    ) -> TenantVerdict:
        applicable = plan.rules_for(direction)
        external_hits = plan.own_check_hits(external_hits)
        rule_hits = [self.rules[i].hit() for i in matched_rules if i in applicable]
        seen: set[tuple[str, str]] = set()
        list_hits: list[Hit] = []
        for entry in entries:
            if entry.list_name in plan.list_names and (entry.list_name, entry.source) not in seen:
                seen.add((entry.list_name, entry.source))
                list_hits.append(_list_hit(entry))
        hits = (*external_hits, *list_hits, *builtin, *rule_hits)
        score = round(sum(hit.score for hit in hits), 3)
        routes = self._route_labels[plan.name] if direction is not Direction.outbound else mx_labels(rcpts)

        def verdict(action: Action, reason: str, reply_message: str | None = None) -> TenantVerdict:
            prefix = plan.scoring.subject_prefix if action is Action.tag else None
            reply = action_reply(action, reply_message)
            return TenantVerdict(plan.name, rcpts, action, score, hits, routes, reason, "data", reply, prefix)

        virus = next((hit for hit in external_hits if hit.kind == KIND_ANTIVIRUS and hit.action), None)
        if virus is not None and virus.action is not None:
            return verdict(virus.action, REASON_VIRUS, virus.message)
        if any(hit.action is Action.reject for hit in list_hits):
            return verdict(Action.reject, REASON_BLOCK_LIST)
        if any(hit.action is Action.deliver for hit in list_hits):
            return verdict(Action.deliver, REASON_ALLOW_LIST)
        action, reason, message = Action.deliver, REASON_CLEAN, None
        for hit in hits:
            if hit.action is not None and hit.action.severity > action.severity:
                action, reason, message = hit.action, REASON_RULE_ACTION, hit.message
        by_score = plan.score_action(score)
        if by_score.severity > action.severity:
            action, reason, message = by_score, REASON_SCORE, None
        return verdict(action, reason, message)
