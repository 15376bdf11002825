"""Names and ids: duplicate tenant / list / rule set names, duplicate rule ids, names that differ
from their file names."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

from engine.policy.loader import LoadedFile, PolicySource, Problem
from engine.policy.validate.common import _Memo, _Site


def _duplicate_names(source: PolicySource) -> Iterator[Problem]:
    """A second tenant / list / rule set with an already used name (files in path order)."""
    kinds: list[tuple[str, Sequence[LoadedFile[Any]]]] = [
        ("tenant", source.tenants),
        ("list", source.lists),
        ("rule set", source.rulesets),
    ]
    for kind, files in kinds:
        first: dict[str, _Site] = {}
        for loaded in files:
            site = _Site(loaded, ("name",))
            name = loaded.model.name
            if name in first:
                yield site.problem("error", f"duplicate {kind} name '{name}': already defined at {first[name].where()}")
            else:
                first[name] = site


_RULE_IDS = _Memo()


def _duplicate_rule_ids(source: PolicySource) -> Iterator[Problem]:
    """Rule ids are unique across the whole policy."""
    return iter(_RULE_IDS.get(source.rulesets, lambda: _find_duplicate_rule_ids(source)))


def _find_duplicate_rule_ids(source: PolicySource) -> Iterator[Problem]:
    ids = [rule.id for loaded in source.rulesets for rule in loaded.model.rules]
    if len(set(ids)) == len(ids):
        return
    first: dict[str, _Site] = {}
    for loaded in source.rulesets:
        for index, rule in enumerate(loaded.model.rules):
            site = _Site(loaded, ("rules", index, "id"))
            if rule.id in first:
                where = first[rule.id].where()
                yield site.problem("error", f"duplicate rule id '{rule.id}': already defined at {where}")
            else:
                first[rule.id] = site


def _names_match_files(source: PolicySource) -> Iterator[Problem]:
    """`tenants/acme.yaml` should say `name: acme`."""
    named: list[LoadedFile[Any]] = [*source.tenants, *source.lists, *source.rulesets]
    for loaded in named:
        stem = PurePosixPath(loaded.path).stem
        name = loaded.model.name
        if stem != name:
            yield loaded.problem(
                "warning", ("name",), f"name '{name}' differs from the file name '{stem}': rename one of them"
            )
