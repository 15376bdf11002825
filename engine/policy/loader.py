"""Load a policy directory: YAML with line positions (libyaml fast path, ruamel.yaml exact path), then pydantic.

Contract:
- `load_policy(root)` never raises for bad content. Every YAML syntax error, duplicate key and
  schema error it can find is reported as a `Problem` with a 1-based FILE:LINE:COL, all in one run;
  a file that fails is left out of the loaded tuples (its problems say why).
- Files: `gateway.yaml` (required), `tenants/*.yaml`, `lists/*.yaml`, `rules/*.yaml` (`.yml` too);
  hidden files and anything else are ignored. Paths in results are relative POSIX paths.
- `LoadedFile.positions` maps every mapping key and sequence item, as a JSON path of keys and
  indexes exactly as written in the YAML, to its (line, col), 1-based.
- `PolicySource.content_hash` is a sha256 over (relative path, bytes) of every policy file found,
  sorted by path: identical trees hash identically on any machine.

Speed: ruamel.yaml's round-trip parser is pure Python (about 17 s for 10,000 rules and 100,000
list entries). Each file is therefore first composed by libyaml (PyYAML's C parser) into nodes
with start marks, and walked once into plain data and positions; plain scalars are resolved with
ruamel's YAML 1.2 rules and, when not text, constructed by ruamel, so the data is the same.
Whatever that path does not reproduce exactly (a syntax error, a duplicate key, a tag, an alias of
a collection, a merge key, a non-text key, a `%` directive, a tab, a YAML 1.1 line break, nesting
deeper than 100) sends the file to the ruamel path, which makes the result and the error report.
The garbage collector is paused while loading: the parse allocates millions of objects, no cycles.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import gc
import hashlib
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, Union

from pydantic import BaseModel, Discriminator, Tag, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, SequenceNode
from ruamel.yaml.nodes import ScalarNode as RuamelScalarNode
from ruamel.yaml.resolver import VersionedResolver

from engine.policy.models import (
    CONDITION_KEYS,
    Gateway,
    PolicyList,
    PolicyModel,
    RuleSet,
    Tenant,
)

Severity = Literal["error", "warning"]
YamlPath = tuple[str | int, ...]
M = TypeVar("M", bound=PolicyModel)

GATEWAY_FILES = ("gateway.yaml", "gateway.yml")
KIND_DIRS = ("tenants", "lists", "rules")
YAML_SUFFIXES = (".yaml", ".yml")

try:
    from yaml import nodes as libyaml_nodes
    from yaml._yaml import CParser as LibyamlParser
except ImportError:  # PyYAML without its C extension: every file takes the ruamel path
    LibyamlParser = None

LIBYAML_AVAILABLE = LibyamlParser is not None
# The libyaml fast path (see the module docstring). False forces the ruamel path for every file:
# bench/load.py sets it to compare the two.
USE_LIBYAML = LIBYAML_AVAILABLE


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of `load_policy` / `validate_policy`, located at a 1-based FILE:LINE:COL."""

    severity: Severity
    file: str
    line: int
    col: int
    message: str

    def format_text(self) -> str:
        """`FILE:LINE:COL: SEVERITY: MESSAGE`, with FILE relative to the policy directory."""
        return f"{self.file}:{self.line}:{self.col}: {self.severity}: {self.message}"

    def sort_key(self) -> tuple[str, int, int, str, str]:
        """Order by file, line, col (then severity and message, for determinism)."""
        return (self.file, self.line, self.col, self.severity, self.message)


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


def nearest_position(positions: Mapping[YamlPath, tuple[int, int]], path: YamlPath) -> tuple[int, int]:
    """(line, col) of `path` in `positions`; else of its nearest recorded ancestor; else (1, 1)."""
    for end in range(len(path), -1, -1):
        found = positions.get(path[:end])
        if found is not None:
            return found
    return (1, 1)


# ---------------------------------------------------------------- directory


def policy_files(root: Path) -> list[str]:
    """Relative POSIX paths of the policy files under `root`, sorted."""
    found: list[str] = [name for name in GATEWAY_FILES if (root / name).is_file()]
    for kind in KIND_DIRS:
        directory = root / kind
        if not directory.is_dir():
            continue
        for child in directory.iterdir():
            if child.suffix in YAML_SUFFIXES and not child.name.startswith(".") and child.is_file():
                found.append(f"{kind}/{child.name}")
    return sorted(found)


def content_hash(root: Path, files: Sequence[str]) -> str:
    """sha256 over (relative path, length, bytes) of each file, in sorted path order."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        data = (root / rel).read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def load_policy(root: Path) -> PolicySource:
    """Load and schema-validate every policy file under `root`; see the module docstring."""
    with paused_gc():
        return _load_policy(root)


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


def _load_policy(root: Path) -> PolicySource:
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
        gateway = load_file(root, gateway_files[0], Gateway, problems)

    for rel in files:
        kind = rel.partition("/")[0]
        if kind == "tenants":
            _append(tenants, load_file(root, rel, Tenant, problems))
        elif kind == "lists":
            _append(lists, load_file(root, rel, PolicyList, problems))
        elif kind == "rules":
            _append(rulesets, load_file(root, rel, RuleSet, problems))

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


def load_file(root: Path, rel: str, model: type[M], problems: list[Problem]) -> LoadedFile[M] | None:
    """Parse and validate `root/rel` as `model`; append problems and return None when it fails."""
    try:
        text = (root / rel).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        problems.append(Problem("error", rel, 1, 1, f"not UTF-8 text: {exc.reason} at byte {exc.start}"))
        return None
    except OSError as exc:
        problems.append(Problem("error", rel, 1, 1, f"cannot read: {exc.strerror or exc}"))
        return None
    loaded = parse_yaml(rel, text, problems)
    if loaded is None:
        return None
    data, positions = loaded
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        problems.extend(schema_problems(rel, model, exc, data, positions))
        return None
    return LoadedFile(path=rel, model=validated, positions=types.MappingProxyType(positions))


def parse_yaml(
    rel: str, text: str, problems: list[Problem]
) -> tuple[dict[str, Any], dict[YamlPath, tuple[int, int]]] | None:
    """Parse `text`; return (plain data, positions), or append a problem and return None.

    The libyaml fast path when it can reproduce the ruamel result exactly, else `parse_yaml_ruamel`."""
    if USE_LIBYAML:
        fast = parse_yaml_libyaml(text)
        if fast is not None:
            return fast
    return parse_yaml_ruamel(rel, text, problems)


def parse_yaml_ruamel(
    rel: str, text: str, problems: list[Problem]
) -> tuple[dict[str, Any], dict[YamlPath, tuple[int, int]]] | None:
    """Round-trip parse `text` with ruamel.yaml: the reference result, and every error report."""
    yaml = YAML(typ="rt")
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        problems.append(_yaml_problem(rel, exc, text))
        return None
    except Exception as exc:  # ruamel raises plain ValueError etc. for e.g. `!!int x`
        problems.append(Problem("error", rel, 1, 1, f"invalid YAML: {exc}"))
        return None
    if not isinstance(document, CommentedMap):
        what = "empty" if document is None else f"a {_yaml_type(document)}"
        problems.append(Problem("error", rel, 1, 1, f"the file is {what}: expected a mapping of keys"))
        return None
    positions: dict[YamlPath, tuple[int, int]] = {(): (document.lc.line + 1, document.lc.col + 1)}
    data = _plain(document, (), positions, set())
    assert isinstance(data, dict)
    return data, positions


def _first_key_line(text: str, mapping: Any, key: str) -> int | None:
    """1-based line of the first `key` in the mapping that starts at `mapping` (a ruamel mark)."""
    try:
        root = YAML(typ="rt").compose(text)
    except Exception:  # only a better message is at stake
        return None
    stack = [root]
    while stack:
        node = stack.pop()
        if isinstance(node, MappingNode):
            if (node.start_mark.line, node.start_mark.column) == (mapping.line, mapping.column):
                for key_node, _ in node.value:
                    if isinstance(key_node, RuamelScalarNode) and key_node.value == key:
                        return int(key_node.start_mark.line) + 1
                return None
            stack.extend(value for _, value in node.value)
        elif isinstance(node, SequenceNode):
            stack.extend(node.value)
    return None


def _yaml_problem(rel: str, exc: MarkedYAMLError, text: str = "") -> Problem:
    mark = exc.problem_mark or exc.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    problem = (exc.problem or "invalid YAML").strip()
    if isinstance(exc, DuplicateKeyError):
        key = problem.split('"')[1] if problem.count('"') >= 2 else "?"
        message = f"duplicate key '{key}'"
        first = _first_key_line(text, exc.context_mark, key) if exc.context_mark is not None else None
        if first is not None:
            message += f" (first at line {first})"
        return Problem("error", rel, line, col, message)
    context = (exc.context or "").strip()
    start = exc.context_mark
    if "quoted scalar" in context and "end of stream" in problem and start is not None:
        # The scanner only notices at the end of the stream; the useful place is the opening quote.
        return Problem("error", rel, start.line + 1, start.column + 1, "unclosed quote")
    if "'\\t'" in problem:
        return Problem("error", rel, line, col, "tab character: YAML indentation must use spaces")
    if "another document" in problem:
        return Problem("error", rel, line, col, "a second YAML document: a policy file holds exactly one")
    message = problem
    if context and start is not None:
        message += f" ({context} at line {start.line + 1}, col {start.column + 1})"
    elif context:
        message += f" ({context})"
    return Problem("error", rel, line, col, message)


def _yaml_type(value: object) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return type(value).__name__


def _plain(node: Any, path: YamlPath, positions: dict[YamlPath, tuple[int, int]], active: set[int]) -> Any:
    """Copy a ruamel node into plain dict/list/str/int/float/bool, recording positions under `path`."""
    if isinstance(node, CommentedMap):
        if id(node) in active:
            return None  # recursive alias: leave it to the schema to complain
        active.add(id(node))
        result: dict[Any, Any] = {}
        for key, value in node.items():
            plain_key = _plain_key(key)
            child: YamlPath = (*path, plain_key)
            _record(positions, child, node.lc.key, key)
            result[plain_key] = _plain(value, child, positions, active)
        active.discard(id(node))
        return result
    if isinstance(node, CommentedSeq):
        if id(node) in active:
            return None
        active.add(id(node))
        items: list[Any] = []
        for index, value in enumerate(node):
            child = (*path, index)
            _record(positions, child, node.lc.item, index)
            items.append(_plain(value, child, positions, active))
        active.discard(id(node))
        return items
    if isinstance(node, TaggedScalar):
        return node.value
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, str):
        return str(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, datetime.date):
        return node.isoformat()  # every policy field that takes text takes it as a string
    return node


def _plain_key(key: Any) -> str:
    """Mapping keys as text (`1` -> "1", `null` -> "null"), so a bad key is reported as unknown."""
    if isinstance(key, str):
        return str(key)
    if key is None:
        return "null"
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def _record(positions: dict[YamlPath, tuple[int, int]], path: YamlPath, lookup: Callable[[Any], Any], key: Any) -> None:
    """Store ruamel's 0-based position of `key` as 1-based; keys without one (e.g. from a `<<:` merge,
    or in a tagged collection) are left out and resolve to their mapping."""
    try:
        found = lookup(key)
    except (KeyError, IndexError, AttributeError, TypeError):
        return
    if isinstance(found, tuple | list) and len(found) >= 2 and all(isinstance(v, int) for v in found[:2]):
        positions.setdefault(path, (found[0] + 1, found[1] + 1))


# ---------------------------------------------------------------- libyaml fast path

# Tags the fast parser's resolver gives untagged nodes; any other tag on a node was written in the
# YAML (`!!str`, `!custom`), and such a file takes the ruamel path.
_PLAIN = "liveprism:plain"  # a plain scalar: resolved below with ruamel's YAML 1.2 rules
_TEXT = "liveprism:text"  # a quoted or block scalar: always a string
_SEQ = "liveprism:seq"
_MAP = "liveprism:map"
_STR_TAG = "tag:yaml.org,2002:str"
# YAML 1.1 line breaks that libyaml counts as line ends and ruamel (YAML 1.2) does not.
_LIBYAML_ONLY_BREAKS = ("\x85", "\u2028", "\u2029")
# Deeper nesting takes the ruamel path, which fails at a few hundred levels (Python's recursion
# limit) where libyaml would not: a policy is a few levels deep, so keep that outcome unchanged.
_FAST_MAX_DEPTH = 100


class _NotFast(Exception):
    """The file holds something the fast path does not reproduce exactly: use the ruamel path."""


if LibyamlParser is not None:

    class _Composer(LibyamlParser):  # type: ignore[misc]
        """libyaml's parser and composer (C), with a resolver that only marks what it would resolve."""

        def descend_resolver(self, current_node: object, current_index: object) -> None:
            pass

        def ascend_resolver(self) -> None:
            pass

        def resolve(self, kind: type, value: str | None, implicit: Any) -> str:
            if kind is libyaml_nodes.ScalarNode:
                return _PLAIN if implicit[0] else _TEXT
            return _SEQ if kind is libyaml_nodes.SequenceNode else _MAP


def parse_yaml_libyaml(text: str) -> tuple[dict[str, Any], dict[YamlPath, tuple[int, int]]] | None:
    """(plain data, positions) as `parse_yaml_ruamel` would return them, or None to use that path."""
    if LibyamlParser is None or text.startswith("%") or "\n%" in text:
        return None  # a directive may change the YAML version
    if any(brk in text for brk in _LIBYAML_ONLY_BREAKS):
        return None  # these would shift libyaml's line numbers
    if "\t" in text:
        return None  # ruamel rejects tabs in more places than libyaml (after a value, inside a plain scalar)
    composer = _Composer(text)
    try:
        root = composer.get_single_node()
    except Exception:  # a syntax error, a second document...: the ruamel path reports it
        return None
    finally:
        composer.dispose()
    if root is None or root.tag != _MAP:
        return None  # empty, or not a mapping: the ruamel path words the problem
    mark = root.start_mark
    positions: dict[YamlPath, tuple[int, int]] = {(): (mark.line + 1, mark.column + 1)}
    try:
        data = _FastWalk(positions).mapping(root, ())
    except (_NotFast, RecursionError):
        return None
    return data, positions


class _FastWalk:
    """One walk over a libyaml node tree: plain data, and the positions of keys and items."""

    __slots__ = ("collections", "constructor", "plain_scalars", "positions", "resolver")

    def __init__(self, positions: dict[YamlPath, tuple[int, int]]) -> None:
        self.positions = positions
        self.plain_scalars: dict[str, tuple[Any, bool]] = {}  # text -> (plain value, is a string)
        self.collections: set[int] = set()  # ids of the collection nodes walked: an alias repeats one
        self.resolver: VersionedResolver | None = None
        self.constructor: Any = None

    def mapping(self, node: Any, path: YamlPath) -> dict[str, Any]:
        self._once(node)
        positions = self.positions
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            tag = key_node.tag
            if tag == _TEXT:
                key = key_node.value
            elif tag == _PLAIN and not key_node.style:
                key, is_text = self.plain(key_node.value)
                if not is_text:
                    raise _NotFast  # merge key, or a non-text key: ruamel's key equality and text differ
            else:
                raise _NotFast
            if key in result:
                raise _NotFast  # duplicate key: the ruamel path reports it
            child = (*path, key)
            mark = key_node.start_mark
            positions[child] = (mark.line + 1, mark.column + 1)
            tag = value_node.tag
            if tag == _TEXT:
                result[key] = value_node.value
            elif tag == _PLAIN and not value_node.style:
                result[key] = self.plain(value_node.value)[0]
            else:
                result[key] = self.collection(value_node, child)
        return result

    def sequence(self, node: Any, path: YamlPath) -> list[Any]:
        self._once(node)
        positions = self.positions
        items: list[Any] = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            mark = item.start_mark
            positions[child] = (mark.line + 1, mark.column + 1)
            tag = item.tag
            if tag == _TEXT:
                items.append(item.value)
            elif tag == _PLAIN and not item.style:
                items.append(self.plain(item.value)[0])
            else:
                items.append(self.collection(item, child))
        return items

    def collection(self, node: Any, path: YamlPath) -> Any:
        if len(path) > _FAST_MAX_DEPTH:
            raise _NotFast
        tag = node.tag
        if tag == _MAP:
            return self.mapping(node, path)
        if tag == _SEQ:
            return self.sequence(node, path)
        raise _NotFast  # an explicit tag, or `!` on a quoted scalar

    def _once(self, node: Any) -> None:
        ident = id(node)
        if ident in self.collections:
            raise _NotFast  # an alias of a collection (perhaps recursive): ruamel's copies and positions
        self.collections.add(ident)

    def plain(self, text: str) -> tuple[Any, bool]:
        """A plain scalar as the ruamel path makes it: (plain value, whether it resolved to a string)."""
        known = self.plain_scalars.get(text)
        if known is not None:
            return known
        if self.resolver is None:
            self.resolver = VersionedResolver()  # YAML 1.2, as YAML(typ="rt") without a directive
        tag = self.resolver.resolve(RuamelScalarNode, text, (True, False))
        if str(tag) == _STR_TAG:
            known = (text, True)
        else:
            if self.constructor is None:
                self.constructor = YAML(typ="rt").constructor
            try:
                constructed = self.constructor.construct_object(RuamelScalarNode(tag, text), deep=True)
            except Exception as exc:  # e.g. a timestamp that is no date: the ruamel path reports it
                raise _NotFast from exc
            known = (_plain(constructed, (), {}, set()), False)
        self.plain_scalars[text] = known
        return known


# ---------------------------------------------------------------- schema errors


@dataclass(slots=True)
class _Located:
    """A pydantic error location translated into the YAML: path, and what the walk learned."""

    path: list[str | int]
    parent: type[BaseModel] | None = None  # the model holding the last key, when known
    via_union: bool = False  # the loc went through a plain (non-discriminated) union member


def schema_problems(
    rel: str,
    model: type[BaseModel],
    exc: ValidationError,
    data: Mapping[str, Any],
    positions: Mapping[YamlPath, tuple[int, int]],
) -> list[Problem]:
    """One Problem per pydantic error (plain-union alternatives merged), located in the YAML."""
    merged: dict[tuple[YamlPath, str], list[str]] = {}
    order: list[tuple[YamlPath, str]] = []
    for error in exc.errors(include_url=False):
        located = _locate(model, error["loc"])
        target, message = _describe(error, located, data)
        key = (target, message if not located.via_union else "")
        if key not in merged:
            merged[key] = []
            order.append(key)
        if message not in merged[key]:
            merged[key].append(message)
    problems: list[Problem] = []
    for key in order:
        target, _ = key
        messages = merged[key]
        text = messages[0] if len(messages) == 1 else _merge_alternatives(messages)
        line, col = nearest_position(positions, target)
        problems.append(Problem("error", rel, line, col, text))
    return problems


def _merge_alternatives(messages: list[str]) -> str:
    prefix = messages[0].partition(": ")[0] + ": " if ": " in messages[0] else ""
    if prefix and all(m.startswith(prefix) for m in messages):
        return prefix + " or ".join(m[len(prefix) :] for m in messages)
    return " or ".join(messages)


def _describe(error: ErrorDetails, located: _Located, data: Mapping[str, Any]) -> tuple[YamlPath, str]:
    """(where to point, human message) for one pydantic error."""
    path = tuple(located.path)
    kind = error["type"]
    if kind == "extra_forbidden" and path:
        key = path[-1]
        message = f"unknown key '{key}'"
        allowed = _allowed_keys(located.parent)
        if located.parent is not None and _is_condition(located.parent) and key in CONDITION_KEYS:
            return path, f"{message}: a condition has exactly one key; combine conditions with any: or all:"
        suggestion = difflib.get_close_matches(str(key), allowed, n=1)
        if suggestion:
            message += f"; did you mean '{suggestion[0]}'?"
        elif allowed:
            message += f" (expected one of: {', '.join(allowed)})"
        return path, message
    if kind == "missing" and path:
        return path[:-1], f"missing required key '{path[-1]}'"
    if kind == "condition_kind":
        value = _value_at(data, path)
        expected = ", ".join(CONDITION_KEYS)
        if isinstance(value, dict) and value:
            unknown = next((k for k in value if k not in CONDITION_KEYS), next(iter(value)))
            message = f"unknown condition '{unknown}'"
            suggestion = difflib.get_close_matches(str(unknown), CONDITION_KEYS, n=1)
            if suggestion:
                message += f"; did you mean '{suggestion[0]}'?"
            return (*path, unknown), f"{message} (a condition is one of: {expected})"
        if isinstance(value, dict):
            return path, f"empty condition: give one of {expected}"
        return path, f"a condition must be a mapping with one of: {expected} (got {_yaml_type(value)})"
    message = error["msg"]
    if kind == "string_pattern_mismatch":
        message = f"{error['input']!r} does not match the pattern {error.get('ctx', {}).get('pattern', '?')}"
    for noise in ("Value error, ", "Assertion failed, "):
        message = message.removeprefix(noise)
    field_name = next((p for p in reversed(path) if isinstance(p, str)), None)
    if field_name is not None and not message.startswith(f"`{field_name}`"):
        message = f"{field_name}: {message}"
    return path, message


def _value_at(data: Any, path: YamlPath) -> Any:
    """The plain value at `path`, or None when the path does not exist."""
    for segment in path:
        if isinstance(data, list) and isinstance(segment, int):
            data = data[segment] if 0 <= segment < len(data) else None
        elif isinstance(data, dict):
            data = data.get(segment)
        else:
            return None
    return data


def _is_condition(model: type[BaseModel]) -> bool:
    keys = _field_keys(model)
    return len(keys) == 1 and keys[0] in CONDITION_KEYS


def _field_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


def _allowed_keys(model: type[BaseModel] | None) -> list[str]:
    return _field_keys(model) if model is not None else []


def _locate(model: type[BaseModel], loc: tuple[str | int, ...]) -> _Located:
    """Walk a pydantic `loc` along the model's types, dropping union tag segments the YAML lacks."""
    located = _Located(path=[])
    annotation: Any = model
    for segment in loc:
        annotation, tagged = _unwrap(annotation)
        if tagged is not None:  # discriminated union: this segment is the tag
            annotation = tagged.get(str(segment))
            continue
        if _is_plain_union(annotation):  # smart union: this segment names the member tried
            located.via_union = True
            annotation = None
            continue
        located.path.append(segment)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            located.parent = annotation
            annotation = _field_annotation(annotation, str(segment))
        elif typing.get_origin(annotation) in (list, tuple, set, frozenset):
            args = typing.get_args(annotation)
            annotation = args[0] if args else None
        elif typing.get_origin(annotation) is dict:
            args = typing.get_args(annotation)
            annotation = args[1] if len(args) == 2 else None
        else:
            annotation = None
    return located


def _field_annotation(model: type[BaseModel], key: str) -> Any:
    for name, info in model.model_fields.items():
        if key in (name, info.alias):
            if any(isinstance(meta, Discriminator) for meta in info.metadata):
                return typing.Annotated[info.annotation, *info.metadata]
            return info.annotation
    return None


def _unwrap(annotation: Any) -> tuple[Any, dict[str, Any] | None]:
    """Strip Annotated/Optional; for a discriminated union also return {tag: member type}."""
    discriminated = False
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            base, *metadata = typing.get_args(annotation)
            discriminated = discriminated or any(isinstance(m, Discriminator) for m in metadata)
            annotation = base
            continue
        if _is_union(annotation):
            members = [a for a in typing.get_args(annotation) if a is not type(None)]
            if discriminated:
                return annotation, dict(_tagged_members(members))
            if len(members) == 1:
                annotation = members[0]
                continue
        return annotation, None


def _tagged_members(members: list[Any]) -> Iterator[tuple[str, Any]]:
    for member in members:
        if typing.get_origin(member) is typing.Annotated:
            base, *metadata = typing.get_args(member)
            for meta in metadata:
                if isinstance(meta, Tag):
                    yield meta.tag, base


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (Union, types.UnionType)


def _is_plain_union(annotation: Any) -> bool:
    return _is_union(annotation) and len([a for a in typing.get_args(annotation) if a is not type(None)]) > 1
