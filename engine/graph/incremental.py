"""Reloading a large policy fast: parse only the files whose bytes changed since the last load.

Contract: `IncrementalLoader.load(root)` returns what `engine.policy.loader.load_policy(root)`
returns for the same bytes (same models, positions, problems, content hash; checked by
`tests/unit/test_live_reload.py`), but a file whose (path, kind, sha256 of its bytes) was parsed
before by this loader is not parsed again: its `LoadedFile` (immutable) and its problems are
reused. Each file is read exactly once per load, and both the parse and the content hash use
those bytes, so an edit racing with the load cannot make the hash disagree with the models.

The cache holds the files of the last load only (a file edited away is dropped), so its memory is
that of one parsed policy, which the running graph's source references anyway.
"""

from __future__ import annotations

import hashlib
import threading
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.graph.compiler import GraphResult, compile_policy
from engine.policy.loader import (
    LoadedFile,
    PolicySource,
    Problem,
    parse_yaml,
    paused_gc,
    policy_files,
    schema_problems,
)
from engine.policy.models import Gateway, PolicyList, PolicyModel, RuleSet, Tenant
from engine.policy.validate import validate_policy

_MODELS: dict[str, type[PolicyModel]] = {"tenants": Tenant, "lists": PolicyList, "rules": RuleSet}


@dataclass(frozen=True, slots=True)
class _Parsed:
    loaded: LoadedFile[Any] | None
    problems: tuple[Problem, ...]


@dataclass(frozen=True, slots=True)
class LoadStats:
    """How much of the last load was parsed (the rest came from the cache)."""

    files: int
    parsed: int


class IncrementalLoader:
    """`load_policy` with a per-file parse cache keyed by content hash; thread-safe (one load at a time)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], _Parsed] = {}
        self._lock = threading.Lock()
        self.last = LoadStats(0, 0)

    def load(self, root: Path) -> PolicySource:
        """The policy under `root`, as `load_policy` would load it; never raises for bad content."""
        with self._lock, paused_gc():
            return self._load(root)

    def load_graph(self, root: Path) -> tuple[GraphResult, PolicySource]:
        """`compiler.load_graph` on top of `load`: validate, then compile when there is no error."""
        source = self.load(root)
        return compile_source(source), source

    def _load(self, root: Path) -> PolicySource:
        files = policy_files(root)
        problems: list[Problem] = []
        digest = hashlib.sha256()
        cache: dict[tuple[str, str, str], _Parsed] = {}
        by_rel: dict[str, LoadedFile[Any] | None] = {}
        gateway_files = [rel for rel in files if "/" not in rel]
        if not gateway_files:
            problems.append(Problem("error", "gateway.yaml", 1, 1, "gateway.yaml is missing: it is required"))
        for extra in gateway_files[1:]:
            problems.append(Problem("warning", extra, 1, 1, f"ignored: {gateway_files[0]} is used"))
        parsed = 0
        readable = True
        for rel in files:
            if "/" not in rel and rel != gateway_files[0]:
                model: type[PolicyModel] | None = None
            else:
                model = Gateway if "/" not in rel else _MODELS[rel.partition("/")[0]]
            try:
                data = (root / rel).read_bytes()
            except OSError as exc:
                readable = False
                if model is not None:
                    problems.append(Problem("error", rel, 1, 1, f"cannot read: {exc.strerror or exc}"))
                continue
            digest.update(f"{rel}\0{len(data)}\0".encode())  # the same formula as loader.content_hash
            digest.update(data)
            if model is None:
                continue
            key = (rel, model.__name__, hashlib.sha256(data).hexdigest())
            entry = self._cache.get(key)
            if entry is None:
                entry = _parse(rel, data, model)
                parsed += 1
            cache[key] = entry
            by_rel[rel] = entry.loaded
            problems.extend(entry.problems)
        self._cache = cache
        self.last = LoadStats(len(files), parsed)
        loaded = [(rel, by_rel.get(rel)) for rel in files]
        return PolicySource(
            root=root,
            gateway=by_rel.get(gateway_files[0]) if gateway_files else None,
            tenants=tuple(f for rel, f in loaded if f is not None and rel.startswith("tenants/")),
            lists=tuple(f for rel, f in loaded if f is not None and rel.startswith("lists/")),
            rulesets=tuple(f for rel, f in loaded if f is not None and rel.startswith("rules/")),
            problems=tuple(sorted(problems, key=Problem.sort_key)),
            content_hash=digest.hexdigest() if readable else "",
            files=tuple(files),
        )


def _parse(rel: str, data: bytes, model: type[PolicyModel]) -> _Parsed:
    """What `loader.load_file` does, from bytes already read."""
    problems: list[Problem] = []
    try:
        text = data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")  # as read_text's universal newlines
    except UnicodeDecodeError as exc:
        return _Parsed(None, (Problem("error", rel, 1, 1, f"not UTF-8 text: {exc.reason} at byte {exc.start}"),))
    result = parse_yaml(rel, text, problems)
    if result is None:
        return _Parsed(None, tuple(problems))
    plain, positions = result
    try:
        validated = model.model_validate(plain)
    except ValidationError as exc:
        return _Parsed(None, tuple(schema_problems(rel, model, exc, plain, positions)))
    return _Parsed(LoadedFile(path=rel, model=validated, positions=types.MappingProxyType(positions)), ())


def compile_source(source: PolicySource) -> GraphResult:
    """Validate a loaded source, then compile it when there is no error."""
    with paused_gc():
        problems = validate_policy(source)
    if any(problem.severity == "error" for problem in problems) or source.gateway is None:
        return GraphResult(None, problems)
    return GraphResult(compile_policy(source), problems)
