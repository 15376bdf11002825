"""Blast radius: replay messages through the base and the new graph, and keep those whose verdict changes.

Sources: a corpus directory (`*.eml`, envelopes by `engine.graph.replay.envelope_for`), and
with a state directory the held quarantine and the recent archive of a running gateway (read
through the store, opened as a non-owner; nothing is changed). Check results that were stored
with a message (DNSBL, SPF, antivirus, … hits) are replayed as they were, so a difference is the
policy change's alone. Each replay uses `engine.graph.replay.run`, the gateway's evaluation path.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.graph.filter_graph import FilterGraph
from engine.graph.replay import EnvelopeError, ReplayEnvelope, envelope_for, run
from engine.graph.verdict import KIND_LIST, KIND_MIME, KIND_RULE, Decision, Hit
from engine.policy.models import Action, Direction
from engine.store import open_store

DELIVERED = (Action.deliver, Action.tag)


@dataclass(frozen=True, slots=True)
class Flip:
    """One message whose verdict changes: `old -> new` and the hits that appeared (+) or went (-)."""

    name: str
    old: str
    new: str
    causes: tuple[str, ...]
    tenant: str | None = None

    def line(self) -> str:
        causes = f" ({', '.join(self.causes)})" if self.causes else ""
        return f"{self.name}: {self.old} -> {self.new}{causes}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "old": self.old, "new": self.new, "causes": list(self.causes),
                "tenant": self.tenant}


def _ids(decision: Decision, tenant: str | None) -> set[str]:
    verdicts = [decision.tenants[tenant]] if tenant and tenant in decision.tenants else decision.tenants.values()
    return {hit.id for verdict in verdicts for hit in verdict.hits if hit.kind in (KIND_RULE, KIND_LIST, KIND_MIME)}


def _action(decision: Decision, tenant: str | None) -> str:
    if tenant is not None:
        verdict = decision.tenants.get(tenant)
        return verdict.action.value if verdict else decision.action.value
    return decision.action.value


def compare(name: str, old: Decision, new: Decision, tenant: str | None = None) -> Flip | None:
    """The flip of one message (for one tenant's copy when given), or None when nothing changed."""
    old_action, new_action = _action(old, tenant), _action(new, tenant)
    old_tenants = {t: v.action for t, v in old.tenants.items() if tenant is None or t == tenant}
    new_tenants = {t: v.action for t, v in new.tenants.items() if tenant is None or t == tenant}
    if old_action == new_action and old_tenants == new_tenants and old.reply.code == new.reply.code:
        moved = [
            f"{t} route {', '.join(v.routes)} -> {', '.join(new.tenants[t].routes)}"
            for t, v in old.tenants.items()
            if (tenant is None or t == tenant) and t in new.tenants and v.action in DELIVERED
            and v.routes != new.tenants[t].routes
        ]
        return Flip(name, old_action, f"{new_action} [{'; '.join(moved)}]", ()) if moved else None
    old_ids, new_ids = _ids(old, tenant), _ids(new, tenant)
    causes = tuple([f"+{i}" for i in sorted(new_ids - old_ids)] + [f"-{i}" for i in sorted(old_ids - new_ids)])
    if old_action == new_action:  # one tenant's copy changed, not the transaction's outcome
        changed = [t for t in set(old_tenants) | set(new_tenants) if old_tenants.get(t) != new_tenants.get(t)]
        details = ", ".join(
            f"{t}: {getattr(old_tenants.get(t), 'value', 'none')} -> {getattr(new_tenants.get(t), 'value', 'none')}"
            for t in sorted(changed))
        return Flip(name, old_action, f"{new_action} [{details}]", causes, tenant)
    return Flip(name, old_action, new_action, causes, tenant)


# ---------------------------------------------------------------- corpus


@dataclass(frozen=True, slots=True)
class CorpusReplay:
    replayed: int
    flips: tuple[Flip, ...]
    errors: tuple[str, ...]


def replay_corpus(corpus: Path, old: FilterGraph | None, new: FilterGraph) -> CorpusReplay:
    """Every `*.eml` of `corpus` (sorted by name) through both graphs; a missing base graph counts as
    'deliver everything' (a repository's first policy)."""
    flips: list[Flip] = []
    errors: list[str] = []
    files = sorted(corpus.glob("*.eml")) if corpus.is_dir() else []
    for path in files:
        raw = path.read_bytes()
        try:
            envelope = envelope_for(path, raw)
        except EnvelopeError as exc:
            errors.append(str(exc))
            continue
        if not envelope.rcpts:
            errors.append(f"{path.name}: no recipient (no To/Cc header and no {path.stem}.envelope)")
            continue
        new_decision = run(new, envelope, raw).decision
        if old is None:
            flips.append(Flip(path.name, "none", new_decision.action.value, ()))
            continue
        flip = compare(path.name, run(old, envelope, raw).decision, new_decision)
        if flip is not None:
            flips.append(flip)
    return CorpusReplay(len(files), tuple(flips), tuple(errors))


# ---------------------------------------------------------------- stored mail


@dataclass(frozen=True, slots=True)
class StoreReplay:
    held: int
    archived: int
    released: tuple[Flip, ...]  # held copies the new policy would deliver
    rejected: tuple[Flip, ...]  # delivered copies the new policy would reject
    other: tuple[Flip, ...]  # every other change

    def summary(self) -> str:
        return (f"this change would have released {len(self.released)} of {self.held} held messages and rejected"
                f" {len(self.rejected)} delivered ones (of {self.archived} archived)")

    def to_json(self) -> dict[str, Any]:
        return {"held": self.held, "archived": self.archived, "summary": self.summary(),
                "released": [f.to_json() for f in self.released], "rejected": [f.to_json() for f in self.rejected],
                "other": [f.to_json() for f in self.other]}


def _stored_hits(hits: Sequence[Mapping[str, Any]]) -> tuple[Hit, ...]:
    """Check results stored with a verdict (not rules, lists or MIME: those are re-evaluated)."""
    found: list[Hit] = []
    for hit in hits:
        if hit.get("kind") in (KIND_RULE, KIND_LIST, KIND_MIME):
            continue
        try:
            action = Action(hit["action"]) if hit.get("action") else None
        except ValueError:
            action = None
        found.append(Hit(str(hit.get("id", "")), str(hit.get("kind", "")), float(hit.get("score") or 0.0), action,
                         str(hit.get("source", "")), hit.get("detail")))
    return tuple(found)


def _verdict_hits(verdict: Mapping[str, Any]) -> tuple[Hit, ...]:
    tenants = verdict.get("tenants") or {}
    hits = [hit for tenant in tenants.values() for hit in tenant.get("hits", [])] if tenants else []
    unique = {(h.get("id"), h.get("kind")): h for h in hits}
    return _stored_hits(list(unique.values()))


def replay_store(state: Path, since: float, old: FilterGraph, new: FilterGraph) -> StoreReplay:
    """Held quarantine copies and archived messages since `since`, through both graphs."""

    async def collect() -> tuple[list[tuple[str, str, ReplayEnvelope, bytes, tuple[Hit, ...]]], int, int]:
        store = open_store(state, owner=False)
        await store.open()
        items: list[tuple[str, str, ReplayEnvelope, bytes, tuple[Hit, ...]]] = []
        try:
            held = await store.list_quarantine(status="held")
            for entry in held:
                info = await store.message_info(entry.queue_id)
                raw = await store.read_message(entry.queue_id)
                if info is None or raw is None:
                    continue
                env = info.envelope
                envelope = ReplayEnvelope(env.mail_from, tuple(entry.recipients), env.client_ip, env.helo,
                                          Direction.inbound)
                items.append((f"quarantine {entry.id}", entry.tenant, envelope, raw, _stored_hits(entry.hits)))
            archived_ids = await store.list_archive(since=since)
            for queue_id in archived_ids:
                info = await store.message_info(queue_id)
                raw = await store.read_message(queue_id)
                if info is None or raw is None or info.envelope.direction not in ("inbound", "outbound"):
                    continue
                env = info.envelope
                envelope = ReplayEnvelope(env.mail_from, env.rcpts, env.client_ip, env.helo, Direction(env.direction))
                items.append((f"archive {queue_id}", "", envelope, raw, _verdict_hits(info.verdict)))
        finally:
            await store.close()
        return items, len(held), len(archived_ids)

    items, held_count, archived_count = asyncio.run(collect())
    released: list[Flip] = []
    rejected: list[Flip] = []
    other: list[Flip] = []
    for name, tenant, envelope, raw, hits in items:
        old_decision = run(old, envelope, raw, hits).decision
        new_decision = run(new, envelope, raw, hits).decision
        if tenant:  # a held copy: this tenant's verdict
            flip = compare(name, old_decision, new_decision, tenant)
            if flip is None:
                continue
            new_verdict = new_decision.tenants.get(tenant)
            (released if new_verdict is not None and new_verdict.action in DELIVERED else other).append(flip)
            continue
        flip = compare(name, old_decision, new_decision)
        if flip is None:
            continue
        was_delivered = any(v.action in DELIVERED for v in old_decision.tenants.values())
        now_rejected = any(
            v.action is Action.reject and old_decision.tenants.get(t) is not None
            and old_decision.tenants[t].action in DELIVERED
            for t, v in new_decision.tenants.items()
        ) or (was_delivered and new_decision.action is Action.reject)
        (rejected if now_rejected else other).append(flip)
    return StoreReplay(held_count, archived_count, tuple(released), tuple(rejected), tuple(other))
