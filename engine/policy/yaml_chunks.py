"""A large policy file parsed and validated piece by piece, so that an edit re-parses only the
pieces it touched (hot reload of a 10,000-rule file or a 40,000-entry list).

Contract: `load_chunked(rel, text, model, known, kept)` returns the `LoadedFile` that
`engine.policy.loader.load_file` makes of the same text (equal model, equal positions), or None
when the text is not cut into pieces safely or anything in it is not plainly valid; the caller
then takes the whole-file path, which makes the result and every problem report. So problems
(FILE:LINE:COL), alias and size limits are exactly those of the whole-file path.

Algorithm. The top-level block sequences of `CHUNKED` fields (`rules:` of a rule set; `senders:`,
`domains:`, `networks:` of a list), written as `key:` on a line of its own followed by items
`- ...` at one indentation k, are cut at item lines into pieces: one rule per piece, and for lists
runs of about `LIST_PIECE` entries whose cuts depend on the entry text (an inserted entry changes
one piece, not every piece after it). What remains, with the pieces' lines left blank (so lines
keep their numbers), is the *skeleton*: a mapping with `key:` null. Each piece is parsed alone by
the libyaml fast path as a sequence, its items validated with the field's item type; pieces are
looked up first in `known` (text -> result of an earlier load), and every piece used goes into
`kept`. The model is the skeleton's validated model with the fields replaced by the items
(`model_copy`: no model of these has a cross-field validator; item types validate each item on
its own); positions are a lazy mapping over the skeleton's and the pieces' (lines shifted).

Why a piece alone parses as it does in the file: a cut lies at a line that starts with k spaces
and `- `, and every other non-blank, non-comment line of the section is indented more than k (else
no cut). If a piece parses without error, nothing it opened (quote, flow collection) is open at
its end, and a block scalar or plain scalar inside an item ends at a line indented k or less in
the file too; the scanner then meets the next `- ` at column k in the same state alone and in the
file. Anything that could reach across pieces is refused: an anchor (a piece with `&` after a
space, bracket or comma, or at a line start, takes the whole-file path, and an alias without its
anchor in the piece fails there), tabs, directives, YAML 1.1 line breaks (`fast_path_text`).
`tests/policy/test_yaml_chunks.py` checks equality with the whole-file path on generated and
adversarial files.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import TypeAdapter, ValidationError

from engine.policy.loader import LoadedFile
from engine.policy.models import PolicyList, PolicyModel, RuleSet
from engine.policy.yaml_positions import (
    PlainScalars,
    YamlPath,
    fast_path_text,
    parse_sequence_libyaml,
    parse_yaml_libyaml,
)

# Fields cut into pieces, by model: field -> items per piece (1: every item alone; else about
# that many on average, cut where the hash of an entry's line says so).
CHUNKED: dict[type[PolicyModel], dict[str, int]] = {
    RuleSet: {"rules": 1},
    PolicyList: {"senders": 64, "domains": 64, "networks": 64},
}
LIST_PIECE = 64
MIN_CHUNKED_BYTES = 64 * 1024  # smaller files are parsed whole: nothing to gain
_MIN_RUN = 8  # a content-defined cut needs at least this many items in the piece before it
_MAX_RUN = 16 * LIST_PIECE  # and is forced after this many

_KEY_LINE = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*):[ ]*(?:#.*)?")
_ANCHOR = re.compile(r"(?:^|[\s\[{,])&")


class _Run:
    """Positions of several consecutive pieces parsed together (keyed `(field, index in the run,
    ...)`, lines 1-based from the run's first line), and their paths grouped by item, on demand."""

    __slots__ = ("_by_item", "positions")

    def __init__(self, positions: dict[YamlPath, tuple[int, int]]) -> None:
        self.positions = positions
        self._by_item: dict[int, list[YamlPath]] | None = None

    def paths_of(self, index: int) -> list[YamlPath]:
        if self._by_item is None:
            self._by_item = {}
            for path in self.positions:
                self._by_item.setdefault(path[1], []).append(path)  # type: ignore[arg-type]
        return self._by_item.get(index, [])


@dataclass(frozen=True, slots=True)
class Piece:
    """One parsed and validated piece: its items as validated values, and where they are: in
    `run` under item indexes from `index_base`, lines from `line_base` (0-based) of the run."""

    items: tuple[Any, ...]
    run: _Run
    index_base: int = 0
    line_base: int = 0

    def position(self, field: str, index: int, rest: tuple[Any, ...]) -> tuple[int, int]:
        """(line counted from the piece's first line, 1-based; col) of item `index`'s `rest`."""
        if not 0 <= index < len(self.items):
            raise KeyError(index)
        line, col = self.run.positions[(field, index + self.index_base, *rest)]
        return line - self.line_base, col

    def paths(self) -> Iterator[tuple[int, tuple[Any, ...]]]:
        """(index in the piece, rest of the path) of every position of the piece."""
        for index in range(len(self.items)):
            for path in self.run.paths_of(index + self.index_base):
                yield index, path[2:]


PieceKey = tuple[str, str, str]  # (model name, field, text)

_ADAPTERS: dict[tuple[type[PolicyModel], str], TypeAdapter[Any]] = {}


def _adapter(model: type[PolicyModel], field: str) -> TypeAdapter[Any]:
    adapter = _ADAPTERS.get((model, field))
    if adapter is None:
        annotation = model.model_fields[field].annotation
        assert annotation is not None
        adapter = _ADAPTERS[(model, field)] = TypeAdapter(annotation)
    return adapter


@dataclass(slots=True)
class _Section:
    field: str
    key_line: int  # 0-based line of `field:`
    starts: list[int]  # offset of each item line
    end: int  # offset of the first line after the section


def load_chunked(
    rel: str, text: str, model: type[PolicyModel], known: Mapping[PieceKey, Piece], kept: dict[PieceKey, Piece]
) -> LoadedFile[Any] | None:
    """The file as `load_file` loads it, built from pieces (see the module docstring); or None."""
    fields = CHUNKED.get(model)
    if fields is None or len(text) < MIN_CHUNKED_BYTES or not fast_path_text(text):
        return None
    sections = _sections(text, fields)
    if not sections:
        return None
    lines = _LineCounter(text)
    skeleton_parts: list[str] = []
    done = 0
    for section in sections:
        skeleton_parts.append(text[done:section.starts[0]])
        skeleton_parts.append("\n" * text.count("\n", section.starts[0], section.end))
        done = section.end
    skeleton_parts.append(text[done:])
    skeleton = parse_yaml_libyaml("".join(skeleton_parts))
    if skeleton is None:
        return None
    data, skeleton_positions = skeleton
    values: dict[str, list[Any]] = {}
    placed: dict[str, list[tuple[int, int, Piece]]] = {}  # field -> (first index, first line, piece)
    scalars = PlainScalars()
    for section in sections:
        key_line = lines.line(section.starts[0]) - text.count("\n", section.key_line, section.starts[0])
        if (section.field in values or data.get(section.field, 0) is not None
                or skeleton_positions.get((section.field,)) != (key_line + 1, 1)):
            return None  # the key twice, `key:` with a value after all, or a line inside some text
        cuts = list(_cuts(text, section, fields[section.field]))
        found: list[Piece | None] = []
        for first, last, _ in cuts:
            key = (model.__name__, section.field, text[first:last])
            found.append(kept.get(key) or known.get(key))
        position = 0
        while position < len(cuts):  # parse each run of consecutive unknown pieces at once
            if found[position] is not None:
                position += 1
                continue
            stop = position
            while stop < len(cuts) and found[stop] is None:
                stop += 1
            run = _parse_run(model, section.field, text, cuts[position:stop], scalars)
            if run is None:
                return None
            found[position:stop] = run
            position = stop
        items: list[Any] = []
        pieces: list[tuple[int, int, Piece]] = []
        for (first, last, _), piece in zip(cuts, found, strict=True):
            assert piece is not None
            kept[(model.__name__, section.field, text[first:last])] = piece
            pieces.append((len(items), lines.line(first), piece))
            items.extend(piece.items)
        values[section.field] = items
        placed[section.field] = pieces
    try:
        head = model.model_validate({key: value for key, value in data.items() if key not in values})
    except ValidationError:
        return None
    loaded_model = head.model_copy(update=values)
    return LoadedFile(path=rel, model=loaded_model, positions=ChunkedPositions(skeleton_positions, placed))


class _LineCounter:
    """0-based line numbers of increasing offsets, counting newlines only once."""

    __slots__ = ("_line", "_offset", "_text")

    def __init__(self, text: str) -> None:
        self._text, self._offset, self._line = text, 0, 0

    def line(self, offset: int) -> int:
        if offset < self._offset:
            self._offset, self._line = 0, 0
        self._line += self._text.count("\n", self._offset, offset)
        self._offset = offset
        return self._line


_SIGNIFICANT = re.compile(r"^ *[^ \n#]", re.M)
# Patterns on "\n" + the line (the literal prefix makes the search fast); offsets are of the "\n".
_TOP_LEVEL = re.compile(r"\n[^ \n#]")  # a significant line at column 0
_TOP_LEVEL_NOT_ITEM = re.compile(r"\n(?:[^ \n#-]|-[^ \n])")
_ITEMS: dict[int, re.Pattern[str]] = {}
_SHALLOW: dict[int, re.Pattern[str]] = {}


def _items(indent: int) -> re.Pattern[str]:
    """Item lines at `indent`."""
    if indent not in _ITEMS:
        _ITEMS[indent] = re.compile(rf"\n {{{indent}}}-(?=[ \n]|\Z)")
    return _ITEMS[indent]


def _shallow(indent: int) -> re.Pattern[str]:
    """Significant lines indented 1..indent that are not item lines at `indent`."""
    if indent not in _SHALLOW:
        exact = rf" {{{indent}}}(?:-[^ \n]|[^ \n#-])"
        less = rf" {{1,{indent - 1}}}[^ \n#]|" if indent > 1 else ""
        _SHALLOW[indent] = re.compile(rf"\n(?:{less}{exact})")
    return _SHALLOW[indent]


def _sections(text: str, fields: Mapping[str, int]) -> list[_Section] | None:
    """The block sequences of `fields` and their item lines; None when one is not cut safely."""
    key_line = re.compile(r"^(" + "|".join(map(re.escape, fields)) + r"):[ ]*(?:#[^\n]*)?$", re.M)
    sections: list[_Section] = []
    end = 0
    for match in key_line.finditer(text):
        if match.start() < end:
            return None
        first = _SIGNIFICANT.search(text, match.end())
        if first is None:
            continue
        start = first.start()
        indent = first.end() - 1 - start
        if not _item_at(text, start + indent):
            continue  # not a block sequence: the skeleton holds it
        closing = (_TOP_LEVEL if indent else _TOP_LEVEL_NOT_ITEM).search(text, start - 1)
        end = closing.start() + 1 if closing is not None else len(text)
        if indent and _shallow(indent).search(text, start - 1, end) is not None:
            return None  # a line no deeper than the items: not cut safely
        starts = [item.start() + 1 for item in _items(indent).finditer(text, start - 1, end)]
        sections.append(_Section(match.group(1), match.start(), starts, end))
    return sections


def _item_at(text: str, dash: int) -> bool:
    """Whether a `-` at offset `dash` starts a sequence item (`- ` or `-` at the end of a line)."""
    return text.startswith("-", dash) and (dash + 1 == len(text) or text[dash + 1] in " \n")


def _cuts(text: str, section: _Section, per_piece: int) -> Iterator[tuple[int, int, int]]:
    """(first offset, end offset, number of items) of each piece of a section."""
    starts = section.starts
    if per_piece == 1:
        for position, start in enumerate(starts):
            yield start, starts[position + 1] if position + 1 < len(starts) else section.end, 1
        return
    # str hashes differ between processes, not within one: the cuts of the same text are the same.
    marks = [hash(text[start:start + 48]) % per_piece == 0 for start in starts]
    piece_start = 0
    for position in range(1, len(starts)):
        run = position - piece_start
        if run >= _MAX_RUN or (run >= _MIN_RUN and marks[position]):
            yield starts[piece_start], starts[position], position - piece_start
            piece_start = position
    yield starts[piece_start], section.end, len(starts) - piece_start


def _parse_run(
    model: type[PolicyModel], field: str, text: str, cuts: list[tuple[int, int, int]], scalars: PlainScalars
) -> list[Piece] | None:
    """Parse `text[cuts[0][0]:cuts[-1][1]]` (consecutive pieces: (start, end, item lines)) at once
    and share it out; None when that does not give each piece exactly its item lines' items."""
    run_text = text[cuts[0][0]:cuts[-1][1]]
    if "&" in run_text and _ANCHOR.search(run_text):
        return None  # an anchor may be aliased from another piece: the whole-file path
    parsed = parse_sequence_libyaml(run_text, field, scalars)
    if parsed is None or len(parsed[0]) != sum(count for _, _, count in cuts):
        return None
    items, positions = parsed
    try:
        validated = _adapter(model, field).validate_python(items)
    except ValidationError:
        return None
    run = _Run(positions)
    pieces: list[Piece] = []
    index = 0
    line = 0
    for start, end, count in cuts:
        lines = text.count("\n", start, end)
        for item in range(index, index + count):  # each item starts within its own piece's lines
            if not line < positions[(field, item)][0] <= line + max(lines, 1):
                return None
        pieces.append(Piece(tuple(validated[index:index + count]), run, index, line))
        index += count
        line += lines
    return pieces


class ChunkedPositions(Mapping[YamlPath, tuple[int, int]]):
    """Positions of a file loaded in pieces: the skeleton's, then each piece's shifted into place."""

    __slots__ = ("_firsts", "_placed", "_skeleton")

    def __init__(self, skeleton: Mapping[YamlPath, tuple[int, int]],
                 placed: Mapping[str, list[tuple[int, int, Piece]]]) -> None:
        self._skeleton = skeleton
        self._placed = placed
        self._firsts = {field: [first for first, _, _ in pieces] for field, pieces in placed.items()}

    def item_lines(self, field: str, count: int) -> list[int | None]:
        """Line of each of the first `count` items of the top-level sequence `field` (None: unknown)."""
        pieces = self._placed.get(field)
        if pieces is None:
            return [position[0] if (position := self._skeleton.get((field, index))) else None
                    for index in range(count)]
        lines: list[int | None] = []
        for _, line_offset, piece in pieces:
            run, base, shift = piece.run.positions, piece.index_base, line_offset - piece.line_base
            lines.extend(run[(field, base + index)][0] + shift for index in range(len(piece.items)))
        return lines[:count] + [None] * (count - len(lines))

    def __getitem__(self, path: YamlPath) -> tuple[int, int]:
        field = path[0] if len(path) >= 2 else None
        if isinstance(field, str) and field in self._placed and isinstance(path[1], int) and path[1] >= 0:
            firsts = self._firsts[field]
            slot = bisect.bisect_right(firsts, path[1]) - 1
            if slot >= 0:
                first, line_offset, piece = self._placed[field][slot]
                line, col = piece.position(field, path[1] - first, path[2:])
                return line + line_offset, col
            raise KeyError(path)
        return self._skeleton[path]

    def __iter__(self) -> Iterator[YamlPath]:
        yield from self._skeleton
        for field, pieces in self._placed.items():
            for first, _, piece in pieces:
                for index, rest in piece.paths():
                    yield (field, index + first, *rest)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, path: object) -> bool:
        try:
            self[path]  # type: ignore[index]
        except (KeyError, TypeError):
            return False
        return True
