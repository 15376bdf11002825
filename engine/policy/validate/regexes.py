"""Regexes: every RE2 pattern of the rules compiles; the walk over the leaves of a condition tree."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import re2

from engine.policy.loader import LoadedFile, PolicySource, Problem, YamlPath
from engine.policy.models import (
    AllCondition,
    AnyCondition,
    AttachmentCondition,
    BodyCondition,
    HeaderCondition,
    NotCondition,
    PolicyModel,
    Rule,
)
from engine.policy.validate.common import _CleanRules

_REGEXES = _CleanRules()


def _bad_regexes(source: PolicySource) -> Iterator[Problem]:
    """Every header/body regex and attachment filename pattern compiles with RE2 (memoised per rule)."""
    return _REGEXES.problems(source.rulesets, _REGEXES, _rule_bad_regexes)


def _rule_bad_regexes(loaded: LoadedFile[Any], index: int, rule: Rule) -> Iterator[Problem]:
    for path, pattern in _patterns(rule.when, ("rules", index, "when")):
        reason = _re2_error(pattern)
        if reason is not None:
            yield loaded.problem("error", path, f"{path[-1]}: RE2 cannot compile '{pattern}': {reason}")


@functools.lru_cache(maxsize=1 << 16)
def _re2_error(pattern: str) -> str | None:
    """Why RE2 cannot compile `pattern`, or None. Memoised: a hot reload re-validates every
    pattern of the policy, and compiling 10,000 of them again costs about a second."""
    options = re2.Options()
    options.log_errors = False
    try:
        re2.compile(pattern, options=options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        return reason.decode("utf-8", "replace") if isinstance(reason, bytes) else str(reason)
    return None


def _leaf_conditions(condition: PolicyModel, path: YamlPath) -> Iterator[tuple[YamlPath, PolicyModel]]:
    """(YAML path, condition) of every leaf (not any/all/not) of a condition tree."""
    if isinstance(condition, AnyCondition):
        for index, child in enumerate(condition.any):
            yield from _leaf_conditions(child, (*path, "any", index))
    elif isinstance(condition, AllCondition):
        for index, child in enumerate(condition.all):
            yield from _leaf_conditions(child, (*path, "all", index))
    elif isinstance(condition, NotCondition):
        yield from _leaf_conditions(condition.not_, (*path, "not"))
    else:
        yield path, condition


def _patterns(tree: PolicyModel, tree_path: YamlPath) -> Iterator[tuple[YamlPath, str]]:
    """(YAML path, pattern) of every RE2 pattern in a condition tree."""
    for path, condition in _leaf_conditions(tree, tree_path):
        yield from _leaf_patterns(condition, path)


def _leaf_patterns(condition: PolicyModel, path: YamlPath) -> Iterator[tuple[YamlPath, str]]:
    if isinstance(condition, HeaderCondition) and condition.header.regex is not None:
        yield (*path, "header", "regex"), condition.header.regex
    elif isinstance(condition, BodyCondition) and condition.body.regex is not None:
        yield (*path, "body", "regex"), condition.body.regex
    elif isinstance(condition, AttachmentCondition) and condition.attachment.filename is not None:
        yield (*path, "attachment", "filename"), condition.attachment.filename
