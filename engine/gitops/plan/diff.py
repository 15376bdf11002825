"""Semantic difference between two loaded policies: what a reviewer needs to see, by object.

Sections: gateway settings, tenants (domains, routes, recipients, attached lists and rule sets,
effective thresholds, outbound), lists (entries added/removed with counts and samples), and
rules (added, removed or changed, by id, with FILE:LINE). Each change is one `Change` value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from engine.graph.filter_graph import FilterGraph
from engine.policy.loader import PolicySource

SAMPLES = 5


@dataclass(frozen=True, slots=True)
class Change:
    """One difference: `section` (gateway|tenant|list|rule), the object, `kind` (added|removed|changed),
    details (one line each) and where it is written now (FILE:LINE, or where it was when removed)."""

    section: str
    name: str
    kind: str
    details: tuple[str, ...] = ()
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"section": self.section, "name": self.name, "kind": self.kind, "details": list(self.details),
                "source": self.source}


def _compact(value: Any) -> str:
    text = json.dumps(value, separators=(", ", ": "), sort_keys=False, default=str)
    return text if len(text) <= 120 else text[:119] + "…"


def _item_text(item: Any) -> str:
    """A list item as a reviewer reads it: text as is, a route as `host:port (priority P, tls T)`."""
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping) and {"host", "port"} <= set(item):
        extra = ", ".join(f"{k} {v}" for k, v in item.items() if k not in ("host", "port"))
        return f"{item['host']}:{item['port']}" + (f" ({extra})" if extra else "")
    return _compact(item)


def _sample(items: list[str]) -> str:
    shown = ", ".join(items[:SAMPLES])
    return shown + (f", … (+{len(items) - SAMPLES} more)" if len(items) > SAMPLES else "")


def value_diff(old: Any, new: Any, path: str = "") -> list[str]:
    """Readable lines for what differs between two plain (JSON-like) values."""
    if old == new:
        return []
    label = path or "value"
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        lines: list[str] = []
        for key in list(old) + [k for k in new if k not in old]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in new:
                lines.append(f"{sub}: removed (was {_compact(old[key])})")
            elif key not in old:
                lines.append(f"{sub}: added {_compact(new[key])}")
            else:
                lines.extend(value_diff(old[key], new[key], sub))
        return lines
    if isinstance(old, list) and isinstance(new, list):
        old_keys = [_item_text(item) for item in old]
        new_keys = [_item_text(item) for item in new]
        added = [k for k in new_keys if k not in old_keys]
        removed = [k for k in old_keys if k not in new_keys]
        lines = []
        if added:
            lines.append(f"{label}: +{len(added)} ({_sample(added)})")
        if removed:
            lines.append(f"{label}: -{len(removed)} ({_sample(removed)})")
        if not lines:
            lines.append(f"{label}: order changed")
        return lines
    return [f"{label}: {_compact(old)} -> {_compact(new)}"]


def _dump(model: Any) -> dict[str, Any]:
    return dict(model.model_dump(mode="json", exclude_none=False))


def policy_diff(
    old: PolicySource, new: PolicySource, old_graph: FilterGraph | None, new_graph: FilterGraph | None
) -> list[Change]:
    """Every semantic change from `old` to `new`, gateway first, then tenants, lists, rules."""
    changes: list[Change] = []
    old_gw = _dump(old.gateway.model) if old.gateway else {}
    new_gw = _dump(new.gateway.model) if new.gateway else {}
    lines = value_diff(old_gw, new_gw)
    if lines:
        changes.append(Change("gateway", "gateway.yaml", "changed", tuple(lines),
                              new.gateway.path if new.gateway else "gateway.yaml"))

    changes += _objects("tenant", {f.model.name: f for f in old.tenants}, {f.model.name: f for f in new.tenants},
                        _tenant_view(old_graph), _tenant_view(new_graph))
    changes += _objects("list", {f.model.name: f for f in old.lists}, {f.model.name: f for f in new.lists}, {}, {})

    old_rules = _rules(old)
    new_rules = _rules(new)
    for rule_id, (data, source) in new_rules.items():
        if rule_id not in old_rules:
            changes.append(Change("rule", rule_id, "added", (_rule_summary(data),), source))
        elif old_rules[rule_id][0] != data:
            changes.append(Change("rule", rule_id, "changed", tuple(value_diff(old_rules[rule_id][0], data)), source))
    for rule_id, (data, source) in old_rules.items():
        if rule_id not in new_rules:
            changes.append(Change("rule", rule_id, "removed", (_rule_summary(data),), f"(was {source})"))
    return changes


def _rule_summary(data: Mapping[str, Any]) -> str:
    then = data.get("then") or {}
    effect = ", ".join(f"{k} {v}" for k, v in then.items() if v is not None)
    return f"{data.get('description') or ''} [{data.get('direction')}; {effect}]".strip()


def _rules(source: PolicySource) -> dict[str, tuple[dict[str, Any], str]]:
    found: dict[str, tuple[dict[str, Any], str]] = {}
    for loaded in source.rulesets:
        for index, rule in enumerate(loaded.model.rules):
            data = _dump(rule)
            data["rule_set"] = loaded.model.name
            found[rule.id] = (data, loaded.source(("rules", index)))
    return found


def _tenant_view(graph: FilterGraph | None) -> dict[str, dict[str, Any]]:
    """Per tenant, what the compiler derives and a reviewer wants to see: effective thresholds."""
    if graph is None:
        return {}
    return {name: {"effective_scoring": _dump(plan.scoring)} for name, plan in graph.tenants.items()}


def _objects(
    section: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    old_extra: Mapping[str, dict[str, Any]],
    new_extra: Mapping[str, dict[str, Any]],
) -> list[Change]:
    changes: list[Change] = []
    for name, loaded in new.items():
        data = {**_dump(loaded.model), **new_extra.get(name, {})}
        if section == "list":
            data.pop("rules", None)
        if name not in old:
            changes.append(Change(section, name, "added", tuple(_added_summary(section, data)), loaded.source(())))
            continue
        before = {**_dump(old[name].model), **old_extra.get(name, {})}
        lines = value_diff(before, data)
        if lines:
            changes.append(Change(section, name, "changed", tuple(lines), loaded.source(())))
    for name, loaded in old.items():
        if name not in new:
            changes.append(Change(section, name, "removed", tuple(_added_summary(section, _dump(loaded.model))),
                                  f"(was {loaded.path})"))
    return changes


def _added_summary(section: str, data: Mapping[str, Any]) -> list[str]:
    if section == "list":
        counts = ", ".join(f"{len(data.get(k) or [])} {k}" for k in ("senders", "domains", "networks"))
        return [f"action {data.get('action')}: {counts}"]
    routes = ", ".join(f"{r['host']}:{r['port']}" for r in data.get("routes") or [])
    return [f"domains {', '.join(data.get('domains') or [])}; routes {routes or 'none'}"]
