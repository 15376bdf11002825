"""Compile a loaded, validated policy into an immutable `FilterGraph`.

Contract: `compile_policy` expects a `PolicySource` without errors (run `validate_policy`
first; `load_graph` does both). The graph's version is the content hash of the policy files,
plus the git commit when the policy directory is inside a git work tree. All matchers are
built here, once; evaluation never compiles anything.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from engine.graph.content import ContentIndex
from engine.graph.filter_graph import CompiledRule, FilterGraph, TenantPlan
from engine.graph.lists import ListEntry, ListIndex
from engine.policy.loader import LoadedFile, PolicySource, Problem, load_policy, paused_gc
from engine.policy.models import Condition, Direction, Gateway, PolicyList, RuleSet, Scoring, Tenant
from engine.policy.validate import validate_policy


@dataclass(frozen=True, slots=True)
class GraphResult:
    """A compiled graph, or None with the problems that prevented it (warnings come along too)."""

    graph: FilterGraph | None
    problems: tuple[Problem, ...]


def load_graph(root: Path) -> GraphResult:
    """Load, validate and compile the policy directory `root`; never raises for bad policy."""
    source = load_policy(root)
    problems = validate_policy(source)
    if any(problem.severity == "error" for problem in problems) or source.gateway is None:
        return GraphResult(None, problems)
    return GraphResult(compile_policy(source), problems)


def policy_version(source: PolicySource) -> str:
    """`<content hash[:12]>` plus `+git.<commit[:12]>` when the directory is in a git work tree."""
    version = source.content_hash[:12]
    commit = _git_commit(source.root)
    return f"{version}+git.{commit[:12]}" if commit else version


def _git_commit(root: Path) -> str | None:
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


LIST_FIELDS = ("senders", "domains", "networks")


def list_entries(loaded: LoadedFile[PolicyList]) -> list[ListEntry]:
    """Every entry of one list file, with its FILE:LINE, ranked by (file, field, index)."""
    policy_list = loaded.model
    name, action, path = policy_list.name, policy_list.action, loaded.path
    entries: list[ListEntry] = []
    for rank, field in enumerate(LIST_FIELDS):
        values = getattr(policy_list, field)
        lines = loaded.item_lines(field, len(values))
        entries.extend([
            ListEntry(name, action, field, value,
                      f"{path}:{line}" if line is not None else loaded.source((field, index)), (path, rank, index))
            for index, (value, line) in enumerate(zip(values, lines, strict=True))
        ])
    return entries


def _effective_scoring(gateway: Gateway, tenant: Tenant) -> Scoring:
    overrides = {key: value for key, value in tenant.scoring.model_dump().items() if value is not None}
    return gateway.scoring.model_copy(update=overrides)


def compiled_rules(loaded: LoadedFile[RuleSet]) -> list[CompiledRule]:
    """The rules of one rule file, flattened, with their FILE:LINE."""
    lines = loaded.item_lines("rules", len(loaded.model.rules))
    return [
        CompiledRule(
            rule.id, rule.then.score, rule.then.action, rule.then.message, rule.direction,
            f"{loaded.path}:{line}" if line is not None else loaded.source(("rules", position)),
        )
        for position, (rule, line) in enumerate(zip(loaded.model.rules, lines, strict=True))
    ]


class IndexBuilder:
    """Builds the two big matchers of a graph and the flattened rules. This one builds them
    afresh; a reload passes `engine.graph.build.incremental.IndexCache`, which reuses what the
    unchanged files compiled to."""

    def rules(self, loaded: LoadedFile[RuleSet]) -> list[CompiledRule]:
        """`compiled_rules(loaded)`."""
        return compiled_rules(loaded)

    def content(self, source: PolicySource, conditions: list[Condition]) -> ContentIndex:
        """The content index of `conditions` (every rule of `source.rulesets`, in file order)."""
        return ContentIndex(conditions)

    def lists(self, source: PolicySource) -> ListIndex:
        """The list index of every entry of `source.lists`, in file order."""
        return ListIndex(entry for loaded in source.lists for entry in list_entries(loaded))


def compile_policy(source: PolicySource, indexes: IndexBuilder | None = None) -> FilterGraph:
    """Build the graph. Raises only on a policy that `validate_policy` would have rejected."""
    assert source.gateway is not None, "compile_policy needs a gateway.yaml"
    with paused_gc():  # hundreds of thousands of acyclic objects: collections would only cost time
        return _compile(source, source.gateway.model, indexes or IndexBuilder())


def _compile(source: PolicySource, gateway: Gateway, builder: IndexBuilder) -> FilterGraph:

    conditions: list[Condition] = []
    rules: list[CompiledRule] = []
    rules_by_set: dict[str, list[int]] = {}
    for loaded in source.rulesets:
        compiled = builder.rules(loaded)
        rules_by_set.setdefault(loaded.model.name, []).extend(range(len(rules), len(rules) + len(compiled)))
        rules.extend(compiled)
        conditions.extend(rule.when for rule in loaded.model.rules)

    tenants: dict[str, TenantPlan] = {}
    for tenant_file in source.tenants:
        tenant = tenant_file.model
        rule_indexes = [i for name in (*gateway.rules, *tenant.rules) for i in rules_by_set.get(name, ())]
        inbound = frozenset(i for i in rule_indexes if rules[i].direction is not Direction.outbound)
        outbound = frozenset(i for i in rule_indexes if rules[i].direction is not Direction.inbound)
        listed = tenant.recipients.addresses
        tenants[tenant.name] = TenantPlan(
            name=tenant.name,
            domains=tuple(tenant.domains),
            routes=tuple(sorted(tenant.routes, key=lambda route: route.priority)),
            accept=tenant.recipients.accept,
            recipient_addresses=frozenset(a for a in listed if not a.startswith("*@")),
            recipient_domains=frozenset(a[2:] for a in listed if a.startswith("*@")),
            list_names=frozenset((*gateway.lists, *tenant.lists)),
            inbound_rules=inbound,
            outbound_rules=outbound,
            scoring=_effective_scoring(gateway, tenant),
            outbound_networks=tuple(tenant.outbound.networks),
            source=tenant_file.source(()),
            check_overrides={hit_id: (o.score, o.action) for hit_id, o in tenant.checks.items()},
            outbound=tenant.outbound,
        )

    return FilterGraph(
        version=policy_version(source),
        content_hash=source.content_hash,
        gateway=gateway,
        tenants=tenants,
        rules=rules,
        content=builder.content(source, conditions),
        lists=builder.lists(source),
        global_lists=frozenset(gateway.lists),
        root=source.root,
    )
