"""YAML with line positions: a policy file's text as plain data plus the (line, col) of every node.

Contract:
- `parse_yaml(rel, text, problems, parser)` returns (plain data, positions) for a file whose top
  level is a mapping, or appends a `Problem` at the 1-based FILE:LINE:COL of the first YAML error
  and returns None; it never raises for bad content.
- Plain data is dict/list/str/int/float/bool/None as ruamel.yaml's round-trip loader (YAML 1.2)
  reads it; dates become ISO text; mapping keys are text.
- Positions map every mapping key and sequence item, as a path of keys and indexes exactly as
  written in the YAML, to its (line, col), 1-based (`Positions`).
- Aliases are limited against alias bombs ("billion laughs"): at most `MAX_ALIAS_REFERENCES`
  alias references per file, and at most `MAX_ALIAS_NODES` nodes added by expanding them in all.
  A file over either limit gets a Problem at the alias that crossed it, before anything is
  expanded: the cost is linear in the size of the text.

Parsers (`parser=`): "ruamel" is ruamel.yaml's round-trip parser, pure Python, the reference
result and every error report (about 17 s for 10,000 rules and 100,000 list entries). "auto"
first composes the file with libyaml (PyYAML's C parser) into nodes with start marks and walks
them once into plain data and positions; plain scalars are resolved with ruamel's YAML 1.2 rules
and, when not text, constructed by ruamel, so the data is the same. Whatever that walk does not
reproduce exactly (a syntax error, a duplicate key, a tag, an alias of a collection, a merge key,
a non-text key, a `%` directive, a tab, a YAML 1.1 line break, nesting deeper than 100, more
aliases than the limit) sends the file to the ruamel path, which makes the result and the error
report. The walk never expands an alias of a collection, so its own cost stays linear too.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import MappingNode, SequenceNode
from ruamel.yaml.nodes import ScalarNode as RuamelScalarNode
from ruamel.yaml.resolver import VersionedResolver

from engine.policy.problem import Problem

YamlPath = tuple[str | int, ...]
Positions = Mapping[YamlPath, tuple[int, int]]
Parsed = tuple[dict[str, Any], dict[YamlPath, tuple[int, int]]]
YamlParser = Literal["auto", "ruamel"]

# Alias limits per file. A policy uses a handful of aliases (shared routes, repeated lists); an
# alias bomb needs a few dozen references to expand to billions of nodes.
MAX_ALIAS_REFERENCES = 10_000
MAX_ALIAS_NODES = 100_000

try:
    from yaml import nodes as libyaml_nodes
    from yaml._yaml import CParser as LibyamlParser
except ImportError:  # PyYAML without its C extension: every file takes the ruamel path
    LibyamlParser = None

LIBYAML_AVAILABLE = LibyamlParser is not None


def nearest_position(positions: Positions, path: YamlPath) -> tuple[int, int]:
    """(line, col) of `path` in `positions`; else of its nearest recorded ancestor; else (1, 1)."""
    for end in range(len(path), -1, -1):
        found = positions.get(path[:end])
        if found is not None:
            return found
    return (1, 1)


def parse_yaml(rel: str, text: str, problems: list[Problem], parser: YamlParser = "auto") -> Parsed | None:
    """Parse `text`; return (plain data, positions), or append a problem and return None.

    "auto": the libyaml fast path when it can reproduce the ruamel result exactly, else
    `parse_yaml_ruamel`; "ruamel": always `parse_yaml_ruamel`."""
    if parser == "auto":
        fast = parse_yaml_libyaml(text)
        if fast is not None:
            return fast
    return parse_yaml_ruamel(rel, text, problems)


# ---------------------------------------------------------------- alias limits


class AliasLimitError(MarkedYAMLError):
    """An alias crossed `MAX_ALIAS_REFERENCES` or `MAX_ALIAS_NODES`; `problem_mark` is the alias."""


@dataclass(slots=True)
class _AliasBudget:
    """Counts, while composing, the nodes a full expansion of the document would make."""

    nodes: int = 0  # nodes composed so far, each alias counted as the size of what it names
    references: int = 0
    expanded: int = 0  # nodes added by aliases
    sizes: dict[int, int] = field(default_factory=dict)  # id(anchored node) -> its expanded size

    def alias(self, anchor: str, size: int, mark: Any) -> None:
        """Account for one alias of a node of `size` nodes; raise AliasLimitError over a limit."""
        self.references += 1
        if self.references > MAX_ALIAS_REFERENCES:
            raise AliasLimitError(
                problem=f"too many aliases: at most {MAX_ALIAS_REFERENCES:,} per file"
                " (a limit against YAML alias bombs)",
                problem_mark=mark,
            )
        self.expanded += size
        self.nodes += size
        if self.expanded > MAX_ALIAS_NODES:
            raise AliasLimitError(
                problem=f"alias *{anchor} expands to {size:,} nodes; the aliases of one file may expand to"
                f" at most {MAX_ALIAS_NODES:,} nodes in all (a limit against YAML alias bombs)",
                problem_mark=mark,
            )


class _AliasLimitedComposer(Composer):
    """ruamel's composer, counting what each alias would expand to (composing itself shares nodes)."""

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader)
        self.alias_budget = _AliasBudget()

    def compose_node(self, parent: Any, index: Any) -> Any:
        budget = self.alias_budget
        if self.parser.check_event(AliasEvent):
            event = self.parser.peek_event()
            node = super().compose_node(parent, index)  # raises for an undefined alias
            budget.alias(event.anchor, budget.sizes.get(id(node), 1), event.start_mark)  # 1: recursive
            return node
        before = budget.nodes
        budget.nodes += 1
        node = super().compose_node(parent, index)
        if node.anchor is not None:
            budget.sizes[id(node)] = budget.nodes - before
        return node


# ---------------------------------------------------------------- ruamel path


def parse_yaml_ruamel(rel: str, text: str, problems: list[Problem]) -> Parsed | None:
    """Round-trip parse `text` with ruamel.yaml: the reference result, and every error report."""
    yaml = YAML(typ="rt")
    yaml.Composer = _AliasLimitedComposer
    try:
        document = yaml.load(text)
    except MarkedYAMLError as exc:
        problems.append(_yaml_problem(rel, exc, text))
        return None
    except Exception as exc:  # ruamel raises plain ValueError etc. for e.g. `!!int x`
        problems.append(Problem("error", rel, 1, 1, f"invalid YAML: {exc}"))
        return None
    if not isinstance(document, CommentedMap):
        what = "empty" if document is None else f"a {yaml_type(document)}"
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


def yaml_type(value: object) -> str:
    """How a YAML author calls the type of a plain value: list, string, int, dict..."""
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


def fast_path_text(text: str) -> bool:
    """Whether the libyaml fast path may try `text` at all (see the module docstring)."""
    if LibyamlParser is None or text.startswith("%") or "\n%" in text:
        return False  # a directive may change the YAML version
    if any(brk in text for brk in _LIBYAML_ONLY_BREAKS):
        return False  # these would shift libyaml's line numbers
    # ruamel rejects tabs in more places than libyaml (after a value, inside a plain scalar)
    return "\t" not in text


def _compose_fast(text: str, tag: str) -> Any:
    """libyaml's node tree of `text` when its root is a `tag` collection without alias trouble; else None."""
    composer = _Composer(text)
    try:
        root = composer.get_single_node()
    except Exception:  # a syntax error, a second document...: the ruamel path reports it
        return None
    finally:
        composer.dispose()
    if root is None or root.tag != tag:
        return None  # empty, or not a mapping: the ruamel path words the problem
    if "&" in text and not _few_scalar_aliases(root):
        return None  # the ruamel path applies the alias limits and reports where
    return root


def parse_sequence_libyaml(
    text: str, key: str, scalars: PlainScalars | None = None
) -> tuple[list[Any], dict[YamlPath, tuple[int, int]]] | None:
    """A YAML text whose root is a block sequence, as (items, positions), by the fast path, walked
    as the value of the top-level `key` (positions under `(key, index, ...)`, depth as there);
    None when the fast path would not reproduce the ruamel result exactly (see
    `parse_yaml_libyaml`). Used for pieces of a large file (`engine.policy.yaml_chunks`)."""
    if not fast_path_text(text):
        return None
    root = _compose_fast(text, _SEQ)
    if root is None:
        return None
    positions: dict[YamlPath, tuple[int, int]] = {}
    try:
        items = _FastWalk(positions, scalars).sequence(root, (key,))
    except (_NotFast, RecursionError):
        return None
    return items, positions


def parse_yaml_libyaml(text: str) -> Parsed | None:
    """(plain data, positions) as `parse_yaml_ruamel` would return them, or None to use that path."""
    if not fast_path_text(text):
        return None
    root = _compose_fast(text, _MAP)
    if root is None:
        return None
    mark = root.start_mark
    positions: dict[YamlPath, tuple[int, int]] = {(): (mark.line + 1, mark.column + 1)}
    try:
        data = _FastWalk(positions).mapping(root, ())
    except (_NotFast, RecursionError):
        return None
    return data, positions


def _few_scalar_aliases(root: Any) -> bool:
    """True when the tree's only aliases are of scalars, at most MAX_ALIAS_REFERENCES of them.

    libyaml composes an alias as the very node it names; the walk below hands an alias of a
    collection to the ruamel path, so only scalar aliases are counted here, without expanding any."""
    seen: set[int] = set()
    aliases = 0
    stack = [root]
    while stack:
        node = stack.pop()
        ident = id(node)
        if ident in seen:
            if not isinstance(node, libyaml_nodes.ScalarNode):
                return False
            aliases += 1
            if aliases > MAX_ALIAS_REFERENCES:
                return False
            continue
        seen.add(ident)
        if isinstance(node, libyaml_nodes.MappingNode):
            for key, value in node.value:
                stack.append(key)
                stack.append(value)
        elif isinstance(node, libyaml_nodes.SequenceNode):
            stack.extend(node.value)
    return True


class _FastWalk:
    """One walk over a libyaml node tree: plain data, and the positions of keys and items."""

    __slots__ = ("collections", "plain", "positions")

    def __init__(self, positions: dict[YamlPath, tuple[int, int]], scalars: PlainScalars | None = None) -> None:
        self.positions = positions
        self.collections: set[int] = set()  # ids of the collection nodes walked: an alias repeats one
        self.plain = (scalars or PlainScalars()).plain

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


class PlainScalars:
    """Plain scalars resolved and constructed as the ruamel path does, each distinct text once
    (shared by the walks of the pieces of one file: `engine.policy.yaml_chunks`)."""

    __slots__ = ("constructor", "plain_scalars", "resolver")

    def __init__(self) -> None:
        self.plain_scalars: dict[str, tuple[Any, bool]] = {}  # text -> (plain value, is a string)
        self.resolver: VersionedResolver | None = None
        self.constructor: Any = None

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
