"""Reloading a large policy fast: parse and compile only what the changed files hold.

Contract: `IncrementalLoader.load(root)` returns what `engine.policy.loader.load_policy(root)`
returns for the same bytes (same models, positions, problems, content hash; checked by
`tests/graph/test_live_reload.py` and `tests/policy/test_yaml_chunks.py`), but a file whose (path,
kind, sha256 of its text) was parsed before by this loader is not parsed again: its `LoadedFile`
(immutable) and its problems are reused. A changed rule or list file of 64 KiB or more is loaded
in pieces (`engine.policy.yaml_chunks`: one piece per rule, runs of about 64 list entries), and
only the pieces whose text is new are parsed and validated; the others (their validated `Rule`
objects and entries) come from the file's previous version. Whatever the pieces cannot reproduce
exactly (an error, an anchor, a tab...) takes the whole-file path, which reports every problem.
Files are read with the loader's own rules (`engine.policy.files.read_policy_text`: inside the
directory, size limit, UTF-8) and hashed with its `content_hash`.

The cache holds the files (and pieces) of the last load only (a file edited away is dropped), so
its memory is that of one parsed policy, which the running graph's source references anyway.

Compiling (`IndexCache`, passed to `compile_policy`):
- flattened rules (`CompiledRule`, with FILE:LINE): reused per unchanged rule file;
- list index: one index per list file, merged (`ListIndex.merged`, dict copies at C speed) into
  the graph's; reused as is when no list file changed. An edited file's entries that kept value,
  field, index and line are the old objects; when the others (removed + added) are under
  `LIST_DELTA_MAX_SHARE` of the file's entries its index is updated (`ListIndex.updated`, a copy:
  the running graph's index is never changed), else built afresh from its entries;
- content index: layered. The *base* index compiled at some load stays; rules that are new since
  (recognised by object identity: an unchanged file's `LoadedFile`, and an unchanged piece's
  `Rule`, are reused objects) go into a small *delta* index, and the base's rules that are gone
  are masked. `matching_rules` maps both to the new rule numbering and merges them, so the result
  is exactly what a fresh index gives (rules are independent; the result is a sorted list of rule
  indexes). When the delta holds more than `DELTA_MAX_SHARE` of the rules, everything is compiled
  afresh and becomes the new base. The cost per message: one more (small) pass over the texts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import threading
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.graph.build.compiler import GraphResult, IndexBuilder, compile_policy, compiled_rules, list_entries
from engine.graph.content import ContentIndex
from engine.graph.filter_graph import CompiledRule
from engine.graph.lists import ListEntry, ListIndex
from engine.mime.view import MessageView
from engine.policy.files import read_policy_text
from engine.policy.loader import LoadedFile, PolicySource, Problem, content_hash, paused_gc, policy_files
from engine.policy.models import Condition, Gateway, PolicyList, PolicyModel, Rule, RuleSet, Tenant
from engine.policy.schema_errors import schema_problems
from engine.policy.validate import validate_policy
from engine.policy.yaml_chunks import Piece, PieceKey, load_chunked
from engine.policy.yaml_positions import parse_yaml

_MODELS: dict[str, type[PolicyModel]] = {"tenants": Tenant, "lists": PolicyList, "rules": RuleSet}
DELTA_MAX_SHARE = 0.2  # of all rules; beyond it the content index is compiled afresh
LIST_DELTA_MAX_SHARE = 0.2  # entries removed + added, of all entries; beyond it the list index is built afresh
LOAD_ATTEMPTS = 5


def _hash_or_empty(root: Path, files: list[str]) -> str:
    try:
        return content_hash(root, files)
    except OSError:
        return ""  # a file vanished or is unreadable


@dataclass(frozen=True, slots=True)
class _Parsed:
    loaded: LoadedFile[Any] | None
    problems: tuple[Problem, ...]
    pieces: Mapping[PieceKey, Piece] | None = None  # when loaded in pieces (`yaml_chunks`)


@dataclass(frozen=True, slots=True)
class LoadStats:
    """How much of the last load was parsed (the rest came from the cache)."""

    files: int
    parsed: int


class IncrementalLoader:
    """`load_policy` with a per-file parse cache keyed by content hash; thread-safe (one load at a time)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str, str], _Parsed] = {}
        self._pieces: dict[str, Mapping[PieceKey, Piece]] = {}  # rel -> pieces of its last version
        self._lock = threading.Lock()
        self.last = LoadStats(0, 0)
        self.indexes = IndexCache()

    def load(self, root: Path) -> PolicySource:
        """The policy under `root`, as `load_policy` would load it; never raises for bad content."""
        with self._lock, frozen_after():
            return self._load(root)

    def load_graph(self, root: Path) -> tuple[GraphResult, PolicySource]:
        """`compiler.load_graph` on top of `load`: validate, then compile when there is no error."""
        with frozen_after():
            source = self.load(root)
            return compile_source(source, self.indexes), source

    def _load(self, root: Path) -> PolicySource:
        """Read and parse between two hashes of the directory; again when they differ (a write
        landed meanwhile): the content hash, and so the version, is always that of what was parsed."""
        for _ in range(LOAD_ATTEMPTS):
            files = policy_files(root)
            before = _hash_or_empty(root, files)
            source = self._load_files(root, files)
            if files == policy_files(root) and _hash_or_empty(root, files) == before:
                return dataclasses.replace(source, content_hash=before)
        problem = Problem("error", "gateway.yaml", 1, 1,
                          f"the policy directory kept changing while it was read ({LOAD_ATTEMPTS} tries)")
        return dataclasses.replace(source, problems=(*source.problems, problem), content_hash="")

    def _load_files(self, root: Path, files: list[str]) -> PolicySource:
        problems: list[Problem] = []
        cache: dict[tuple[str, str, str], _Parsed] = {}
        by_rel: dict[str, LoadedFile[Any] | None] = {}
        gateway_files = [rel for rel in files if "/" not in rel]
        if not gateway_files:
            problems.append(Problem("error", "gateway.yaml", 1, 1, "gateway.yaml is missing: it is required"))
        for extra in gateway_files[1:]:
            problems.append(Problem("warning", extra, 1, 1, f"ignored: {gateway_files[0]} is used"))
        parsed = 0
        for rel in files:
            if "/" not in rel and rel != gateway_files[0]:
                continue  # an ignored second gateway file
            model = Gateway if "/" not in rel else _MODELS[rel.partition("/")[0]]
            text = read_policy_text(root, rel)  # the loader's rules: inside the directory, size, UTF-8
            if isinstance(text, Problem):
                problems.append(text)
                continue
            key = (rel, model.__name__, hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest())
            entry = self._cache.get(key)
            if entry is None:
                entry = _parse(rel, text, model, self._pieces.get(rel, {}))
                parsed += 1
            cache[key] = entry
            by_rel[rel] = entry.loaded
            problems.extend(entry.problems)
        self._cache = cache
        self._pieces = {rel: entry.pieces for (rel, _, _), entry in cache.items() if entry.pieces}
        self.last = LoadStats(len(files), parsed)
        loaded = [(rel, by_rel.get(rel)) for rel in files]
        return PolicySource(
            root=root,
            gateway=by_rel.get(gateway_files[0]) if gateway_files else None,
            tenants=tuple(f for rel, f in loaded if f is not None and rel.startswith("tenants/")),
            lists=tuple(f for rel, f in loaded if f is not None and rel.startswith("lists/")),
            rulesets=tuple(f for rel, f in loaded if f is not None and rel.startswith("rules/")),
            problems=tuple(sorted(problems, key=Problem.sort_key)),
            content_hash="",  # set by `_load`
            files=tuple(files),
        )


@contextlib.contextmanager
def frozen_after() -> Iterator[None]:
    """Pause the garbage collector for a load, then move everything alive to the permanent
    generation (`gc.freeze`) before enabling it again.

    A policy is millions of long-lived, acyclic objects. Without the freeze, the first collection
    after a load walks all of them (seconds for 10,000 rules and 100,000 list entries, holding the
    GIL: the event loop stalls) and every full collection after it again. Frozen objects are still
    freed by reference counting when a newer graph replaces theirs; only a cycle among objects alive
    at a reload would never be collected (at most what open sessions hold at that instant)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:  # freeze first: enabled with millions of young objects, the next allocation collects
            gc.freeze()
            gc.enable()


def _parse(rel: str, text: str, model: type[PolicyModel], known: Mapping[PieceKey, Piece]) -> _Parsed:
    """What `loader.load_file` does after reading: YAML with positions, then the model. A large
    rule or list file is loaded in pieces, those of its last version (`known`) reused."""
    pieces: dict[PieceKey, Piece] = {}
    chunked = load_chunked(rel, text, model, known, pieces)
    if chunked is not None:
        return _Parsed(chunked, (), types.MappingProxyType(pieces))
    problems: list[Problem] = []
    result = parse_yaml(rel, text, problems)
    if result is None:
        return _Parsed(None, tuple(problems))
    plain, positions = result
    try:
        validated = model.model_validate(plain)
    except ValidationError as exc:
        return _Parsed(None, tuple(schema_problems(rel, model, exc, plain, positions)))
    return _Parsed(LoadedFile(path=rel, model=validated, positions=types.MappingProxyType(positions)), ())


def compile_source(source: PolicySource, indexes: IndexBuilder | None = None) -> GraphResult:
    """Validate a loaded source, then compile it when there is no error."""
    with paused_gc():
        problems = validate_policy(source)
    if any(problem.severity == "error" for problem in problems) or source.gateway is None:
        return GraphResult(None, problems)
    return GraphResult(compile_policy(source, indexes), problems)


# ---------------------------------------------------------------- compiling


class IndexCache(IndexBuilder):
    """Reuses the matchers of unchanged files and rules from one compile to the next (see the
    module docstring).

    Used by one reload at a time (LivePolicy serialises them); graphs already built keep theirs."""

    def __init__(self) -> None:
        self._lists_key: tuple[LoadedFile[Any], ...] = ()
        self._list_index: ListIndex | None = None
        # id(list file) -> (the file, its entries, their index)
        self._entries: dict[int, tuple[LoadedFile[Any], list[ListEntry], ListIndex]] = {}
        self._base: ContentIndex | None = None
        self._base_rules: dict[int, tuple[Rule, int]] = {}  # id(rule) -> (rule, index in the base)
        self._base_size = 0
        self._compiled: dict[int, tuple[LoadedFile[Any], list[CompiledRule]]] = {}  # id(file) -> its rules
        self.layered = False  # whether the last content index was layered (for tests and logs)

    def rules(self, loaded: LoadedFile[RuleSet]) -> list[CompiledRule]:
        known = self._compiled.get(id(loaded))
        if known is None or known[0] is not loaded:
            known = self._compiled[id(loaded)] = (loaded, compiled_rules(loaded))
        return known[1]

    def lists(self, source: PolicySource) -> ListIndex:
        key = tuple(source.lists)
        if self._list_index is not None and _same(key, self._lists_key):
            return self._list_index
        known = self._entries
        by_path = {files[0].path: files for files in known.values()}
        entries: dict[int, tuple[LoadedFile[Any], list[ListEntry], ListIndex]] = {}
        for loaded in key:
            previous = known.get(id(loaded))
            if previous is not None and previous[0] is loaded:
                entries[id(loaded)] = previous
                continue
            # An edited file: its entries that kept value, place and line are the old objects.
            _, old_items, old_index = by_path.get(loaded.path, (None, [], None))
            old = {(entry.field, entry.value, entry.source, entry.rank): entry for entry in old_items}
            items = [old.pop((entry.field, entry.value, entry.source, entry.rank), entry)
                     for entry in list_entries(loaded)]
            kept = set(map(id, old_items)) - set(map(id, old.values()))
            added = [entry for entry in items if id(entry) not in kept]
            removed = list(old.values())
            if old_index is not None and len(added) + len(removed) <= LIST_DELTA_MAX_SHARE * len(items):
                index = old_index.updated(removed, added)
            else:
                index = ListIndex(items)
            entries[id(loaded)] = (loaded, items, index)
        merged = ListIndex.merged([entries[id(loaded)][2] for loaded in key])
        self._entries, self._lists_key, self._list_index = entries, key, merged
        return merged

    def content(self, source: PolicySource, conditions: list[Condition]) -> ContentIndex:
        current = {id(loaded) for loaded in source.rulesets}  # (`rules` ran for each of them already)
        self._compiled = {ident: known for ident, known in self._compiled.items() if ident in current}
        rules = [rule for loaded in source.rulesets for rule in loaded.model.rules]
        base_map = [-1] * self._base_size
        delta_map: list[int] = []
        for index, rule in enumerate(rules):
            known = self._base_rules.get(id(rule))
            if known is not None and known[0] is rule and base_map[known[1]] < 0:
                base_map[known[1]] = index
            else:
                delta_map.append(index)
        if (self._base is not None and not delta_map and len(rules) == self._base_size
                and all(i == j for i, j in enumerate(base_map))):
            self.layered = False  # the same rules in the same order: the base index as it is
            return self._base
        if self._base is None or len(delta_map) > DELTA_MAX_SHARE * max(1, len(rules)):
            self._base = ContentIndex(conditions)
            self._base_rules = {id(rule): (rule, index) for index, rule in enumerate(rules)}
            self._base_size = len(rules)
            self.layered = False
            return self._base
        delta = ContentIndex([conditions[index] for index in delta_map])
        self.layered = True
        return LayeredContentIndex(self._base, base_map, delta, delta_map)


def _same(a: tuple[LoadedFile[Any], ...], b: tuple[LoadedFile[Any], ...]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class LayeredContentIndex(ContentIndex):
    """A base index with some rules masked, plus a delta index; rule numbers mapped to the new graph's.

    Only `matching_rules` and `rule_count` are offered (all the evaluator uses)."""

    def __init__(self, base: ContentIndex, base_map: list[int], delta: ContentIndex, delta_map: list[int]) -> None:
        # No super().__init__: the compiled state lives in `base` and `delta`.
        self._layer_base, self._base_map = base, base_map
        self._layer_delta, self._delta_map = delta, delta_map
        self._count = sum(1 for index in base_map if index >= 0) + len(delta_map)

    @property
    def rule_count(self) -> int:
        return self._count

    def matching_rules(self, view: MessageView, check_ids: frozenset[str] = frozenset()) -> list[int]:
        base_map, delta_map = self._base_map, self._delta_map
        found = [base_map[i] for i in self._layer_base.matching_rules(view, check_ids) if base_map[i] >= 0]
        found.extend(delta_map[index] for index in self._layer_delta.matching_rules(view, check_ids))
        return sorted(found)
