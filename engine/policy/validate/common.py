"""What the check families share: `_Site` (one place in the policy), the files of a policy, and
the memos that let a hot reload skip the checks over unchanged files and rules."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.policy.loader import LoadedFile, PolicySource, Problem, Severity, YamlPath
from engine.policy.models import Rule

ENV_PREFIX = "env:"


@dataclass(frozen=True, slots=True)
class _Site:
    """One place in the policy: a file and a YAML path in it."""

    file: LoadedFile[Any]
    path: YamlPath

    def where(self) -> str:
        """`FILE:LINE`, for messages that name another place."""
        return self.file.source(self.path)

    def problem(self, severity: Severity, message: str) -> Problem:
        return self.file.problem(severity, self.path, message)


def _all_files(source: PolicySource) -> Iterator[LoadedFile[Any]]:
    if source.gateway is not None:
        yield source.gateway
    yield from source.tenants
    yield from source.lists
    yield from source.rulesets


class _Memo:
    """The last result of a check over some files, reused while the very same file objects come
    again: the incremental loader of a hot reload (`engine.graph.build.incremental`) hands back an
    unchanged file's `LoadedFile` itself, so only checks over changed files run again."""

    def __init__(self) -> None:
        self._last: tuple[tuple[object, ...], tuple[Problem, ...]] = ((), ())

    def get(self, files: tuple[object, ...], compute: Callable[[], Iterable[Problem]]) -> tuple[Problem, ...]:
        key, value = self._last
        if files and len(files) == len(key) and all(a is b for a, b in zip(files, key, strict=True)):
            return value
        value = tuple(compute())
        self._last = (files, value)  # one assignment: a concurrent reader sees the old or the new pair
        return value



class _CleanRules:
    """The rules one check found nothing wrong with, by identity, while the check's `context` is
    the same object: a hot reload hands back every unchanged rule as the very same object
    (`engine.graph.build.incremental`, `engine.policy.yaml_chunks`), so only new rules are checked.
    A rule with a problem is checked every time (its problem names its place)."""

    def __init__(self) -> None:
        self._state: tuple[object, dict[int, Rule]] = (None, {})  # (context, clean rules): one attribute

    def problems(
        self, rulesets: Iterable[LoadedFile[Any]], context: object,
        check: Callable[[LoadedFile[Any], int, Rule], Iterable[Problem]],
    ) -> Iterator[Problem]:
        last_context, last_clean = self._state
        known = last_clean if context is last_context else {}
        clean: dict[int, Rule] = {}
        for loaded in rulesets:
            rules: list[Rule] = loaded.model.rules
            for index, rule in enumerate(rules):
                if known.get(id(rule)) is not rule:
                    found = tuple(check(loaded, index, rule))
                    if found:
                        yield from found
                        continue
                clean[id(rule)] = rules[index]
        self._state = (context, clean)  # one assignment; only current rules are kept
