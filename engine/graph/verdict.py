"""Result values of the filter graph: hits, SMTP replies, per-tenant verdicts and decisions.

Everything here is an immutable value; nothing raises. Reason tokens are kebab-case constants
reused verbatim in logs, headers and metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from engine.policy.models import Action

Stage = Literal["connect", "mail", "rcpt", "data"]

# Actions under which a copy is accepted (250) and stored.
ACCEPTED_ACTIONS = frozenset({Action.deliver, Action.tag, Action.quarantine, Action.discard})

# Reason tokens: why a tenant copy got its action.
REASON_VIRUS = "virus"
REASON_BLOCK_LIST = "block-list"
REASON_ALLOW_LIST = "allow-list"
REASON_RULE_ACTION = "rule-action"
REASON_SCORE = "score"
REASON_CLEAN = "clean"
REASON_RELAY_DENIED = "relaying-denied"
REASON_UNKNOWN_USER = "unknown-user"
REASON_MAIL_LOOP = "mail-loop"  # refused: the message is looping (engine/graph/loops.py)
REASON_TEMPFAIL_HELD = "tempfail-held"  # tempfailed while another tenant's copy took the 250: held
REASON_NOT_AUTHORISED = "not-authorised"  # outbound: the client is in no tenant's networks and did not AUTH
REASON_SPOOFED_SENDER = "spoofed-sender"  # outbound: MAIL FROM outside the sending tenant's domains
REASON_SPOOFED_FROM = "spoofed-from"  # outbound: header From outside the sending tenant's domains (or missing)

# Hit kinds.
KIND_RULE = "rule"
KIND_LIST = "list"
KIND_MIME = "mime"
KIND_ANTIVIRUS = "antivirus"
KIND_OUTBOUND = "outbound"  # anti-spoofing refusals of the outbound listener (id = the reason token)

HIT_MALFORMED_MIME = "malformed-mime"


@dataclass(frozen=True, slots=True)
class Hit:
    """One thing that matched: a rule, a list entry, a check result or a MIME defect."""

    id: str
    kind: str
    score: float = 0.0
    action: Action | None = None
    source: str = ""
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """DESIGN.md's hit object, plus `detail` when there is one (list entry, MIME defects, reply text)."""
        data: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "score": self.score,
            "action": self.action.value if self.action else None,
            "source": self.source,
        }
        if self.message:
            data["detail"] = self.message
        return data


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: code, enhanced status code (RFC 3463) and text."""

    code: int
    status: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.status} {self.text}"

    @property
    def is_positive(self) -> bool:
        return self.code < 400


REPLY_MAIL_OK = Reply(250, "2.1.0", "OK")
REPLY_RCPT_OK = Reply(250, "2.1.5", "OK")
REPLY_TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "too many recipients")
REPLY_NO_RECIPIENTS = Reply(554, "5.5.1", "no valid recipients")
REPLY_NO_POSTMASTER = Reply(550, "5.1.1", "no postmaster mailbox is configured (gateway.yaml postmaster)")
REPLY_RELAY_DENIED = Reply(550, "5.7.1", "relaying denied")
REPLY_UNKNOWN_USER = Reply(550, "5.1.1", "unknown recipient")
REPLY_TEMPFAIL = Reply(451, "4.7.1", "try again later")
REPLY_REJECT = Reply(550, "5.7.1", "message rejected by policy")


def action_reply(action: Action, message: str | None) -> Reply | None:
    """The SMTP reply a reject/tempfail action gives; None for actions that accept (250)."""
    if action is Action.reject:
        return Reply(550, "5.7.1", message) if message else REPLY_REJECT
    if action is Action.tempfail:
        return Reply(451, "4.7.1", message) if message else REPLY_TEMPFAIL
    return None


def policy_refusal(hit: Hit) -> Reply:
    """The reply refusing a whole transaction before DATA because of `hit` (a block list entry or
    a check whose action is reject/tempfail)."""
    if hit.action is Action.tempfail:
        return Reply(451, "4.7.1", hit.message) if hit.message and hit.kind != "list" else REPLY_TEMPFAIL
    return Reply(550, "5.7.1", f"rejected by policy ({hit.id})")


@dataclass(frozen=True, slots=True)
class RcptResult:
    """Outcome of RCPT TO: the owning tenant (None when no tenant owns the domain) and a refusal
    (`reply` is None when the recipient is accepted; `answer` is what the client is told)."""

    address: str  # normalised
    tenant: str | None
    reply: Reply | None
    reason: str = ""
    hits: tuple[Hit, ...] = ()

    @property
    def accepted(self) -> bool:
        return self.reply is None

    @property
    def answer(self) -> Reply:
        return self.reply or REPLY_RCPT_OK


@dataclass(frozen=True, slots=True)
class TenantVerdict:
    """The decision for one tenant's copy of a message."""

    tenant: str
    recipients: tuple[str, ...]
    action: Action
    score: float
    hits: tuple[Hit, ...]
    routes: tuple[str, ...]
    reason: str
    stage: Stage
    reply: Reply | None = None
    subject_prefix: str | None = None

    def held(self, reason: str) -> TenantVerdict:
        """This copy held in quarantine instead (see `engine.graph.transaction.combine`)."""
        return replace(self, action=Action.quarantine, reason=reason, reply=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "score": self.score,
            "route": list(self.routes),
            "hits": [hit.to_json() for hit in self.hits],
            "recipients": list(self.recipients),
            "reason": self.reason,
            "stage": self.stage,
        }


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of a transaction: one reply for the client and a verdict per tenant."""

    action: Action
    reply: Reply
    tenants: dict[str, TenantVerdict] = field(default_factory=dict)
    policy_version: str = ""
    stage: Stage = "data"

    @property
    def copies(self) -> tuple[TenantVerdict, ...]:
        """The tenants' copies to store (accepted actions), when the client got 250."""
        if not self.reply.is_positive:
            return ()
        return tuple(v for v in self.tenants.values() if v.action in ACCEPTED_ACTIONS)

    def to_json(self) -> dict[str, Any]:
        return {
            "action": self.action.value,
            "smtp_reply": str(self.reply),
            "policy_version": self.policy_version,
            "stage": self.stage,
            "tenants": {name: verdict.to_json() for name, verdict in self.tenants.items()},
        }
