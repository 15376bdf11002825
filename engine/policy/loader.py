"""Load a policy directory: its files (`files`), YAML with positions (`yaml_positions`), then pydantic.

Contract:
- `load_policy(root)` never raises for bad content. Every unreadable or refused file, YAML syntax
  error, duplicate key, alias over the limits and schema error it can find is reported as a
  `Problem` with a 1-based FILE:LINE:COL, all in one run; a file that fails is left out of the
  loaded tuples (its problems say why).
- Files (see `engine.policy.files`): `gateway.yaml` (required), `tenants/*.yaml`, `lists/*.yaml`,
  `rules/*.yaml` (`.yml` too); hidden files and anything else are ignored; a symlink leading
  outside the directory and a file over 16 MiB are refused. Paths in results are relative POSIX.
- `LoadedFile.positions` maps every mapping key and sequence item, as a JSON path of keys and
  indexes exactly as written in the YAML, to its (line, col), 1-based.
- `PolicySource.content_hash` is a sha256 over (relative path, bytes) of every policy file found,
  sorted by path: identical trees hash identically on any machine.
- `parser=` picks the YAML parser ("auto": the libyaml fast path with the ruamel fallback;
  "ruamel": the reference path only; see `engine.policy.yaml_positions`).

The garbage collector is paused while loading: the parse allocates millions of objects, no cycles.
Problem, YamlPath, content_hash and policy_files are re-exported here for the modules that
import them from the loader.
"""

from __future__ import annotations

import contextlib
import gc
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import ValidationError

from engine.policy.files import content_hash, policy_files, read_policy_text
from engine.policy.models import Gateway, PolicyList, PolicyModel, RuleSet, Tenant
from engine.policy.problem import Problem, Severity
from engine.policy.schema_errors import schema_problems
from engine.policy.yaml_positions import YamlParser, YamlPath, nearest_position, parse_yaml

__all__ = [
    "LoadedFile",
    "PolicySource",
    "Problem",
    "Severity",
    "YamlPath",
    "content_hash",
    "load_file",
    "load_policy",
    "paused_gc",
    "policy_files",
]

M = TypeVar("M", bound=PolicyModel)


# Not slots=True: on Python 3.11 a frozen slotted *generic* dataclass breaks `LoadedFile[X](...)`.
@dataclass(frozen=True)
class LoadedFile(Generic[M]):
    """One policy file that parsed and validated: its model and the positions of its YAML nodes."""

    path: str
    model: M
    positions: Mapping[YamlPath, tuple[int, int]] = field(default_factory=dict)

    def position(self, path: YamlPath) -> tuple[int, int]:
        """(line, col) of `path`; else of its nearest existing ancestor; else (1, 1)."""
        return nearest_position(self.positions, path)

    def item_lines(self, field: str, count: int) -> list[int | None]:
        """Line of each of the first `count` items of the top-level sequence `field` (None: not
        recorded): one pass, for the compiler's 100,000 list entries and 10,000 rules."""
        lines = getattr(self.positions, "item_lines", None)
        if lines is not None:
            return lines(field, count)  # type: ignore[no-any-return]
        positions = self.positions
        return [position[0] if (position := positions.get((field, index))) else None for index in range(count)]

    def source(self, path: YamlPath) -> str:
        """`FILE:LINE` of `path` (see `position`), as shown in verdict traces."""
        return f"{self.path}:{self.position(path)[0]}"

    def problem(self, severity: Severity, path: YamlPath, message: str) -> Problem:
        """A Problem located at `path` in this file."""
        line, col = self.position(path)
        return Problem(severity, self.path, line, col, message)


@dataclass(frozen=True, slots=True)
class PolicySource:
    """Everything `load_policy` read from one policy directory."""

    root: Path
    gateway: LoadedFile[Gateway] | None
    tenants: tuple[LoadedFile[Tenant], ...]
    lists: tuple[LoadedFile[PolicyList], ...]
    rulesets: tuple[LoadedFile[RuleSet], ...]
    problems: tuple[Problem, ...]
    content_hash: str
    files: tuple[str, ...] = ()  # every policy file found (relative POSIX paths), loaded or not


def load_policy(root: Path, parser: YamlParser = "auto") -> PolicySource:
    """Load and schema-validate every policy file under `root`; see the module docstring."""
    with paused_gc():
        return _load_policy(root, parser)


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Disable the cyclic garbage collector for a block (re-enabled after it, if it was enabled).

    Loading allocates millions of small objects and no cycles; the collections those allocations
    would trigger walk every live object, again and again (about 3/4 of the parse time)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _load_policy(root: Path, parser: YamlParser) -> PolicySource:
    files = policy_files(root)
    problems: list[Problem] = []
    gateway: LoadedFile[Gateway] | None = None
    tenants: list[LoadedFile[Tenant]] = []
    lists: list[LoadedFile[PolicyList]] = []
    rulesets: list[LoadedFile[RuleSet]] = []

    gateway_files = [f for f in files if "/" not in f]
    if not gateway_files:
        problems.append(Problem("error", "gateway.yaml", 1, 1, "gateway.yaml is missing: it is required"))
    for extra in gateway_files[1:]:
        problems.append(Problem("warning", extra, 1, 1, f"ignored: {gateway_files[0]} is used"))
    if gateway_files:
        gateway = load_file(root, gateway_files[0], Gateway, problems, parser)

    for rel in files:
        kind = rel.partition("/")[0]
        if kind == "tenants":
            _append(tenants, load_file(root, rel, Tenant, problems, parser))
        elif kind == "lists":
            _append(lists, load_file(root, rel, PolicyList, problems, parser))
        elif kind == "rules":
            _append(rulesets, load_file(root, rel, RuleSet, problems, parser))

    try:
        digest = content_hash(root, files)
    except OSError:
        digest = ""  # a file vanished or is unreadable; load_file has reported it
    return PolicySource(
        root=root,
        gateway=gateway,
        tenants=tuple(tenants),
        lists=tuple(lists),
        rulesets=tuple(rulesets),
        problems=tuple(sorted(problems, key=Problem.sort_key)),
        content_hash=digest,
        files=tuple(files),
    )


def _append(items: list[LoadedFile[M]], item: LoadedFile[M] | None) -> None:
    if item is not None:
        items.append(item)


# ---------------------------------------------------------------- one file


def load_file(
    root: Path, rel: str, model: type[M], problems: list[Problem], parser: YamlParser = "auto"
) -> LoadedFile[M] | None:
    """Parse and validate `root/rel` as `model`; append problems and return None when it fails."""
    text = read_policy_text(root, rel)
    if isinstance(text, Problem):
        problems.append(text)
        return None
    loaded = parse_yaml(rel, text, problems, parser)
    if loaded is None:
        return None
    data, positions = loaded
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        problems.extend(schema_problems(rel, model, exc, data, positions))
        return None
    return LoadedFile(path=rel, model=validated, positions=types.MappingProxyType(positions))
