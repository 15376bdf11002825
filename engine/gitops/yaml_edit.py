"""Minimal in-place edits of policy YAML: every byte outside the inserted text stays as it was.

ruamel.yaml's round-trip loader locates the sequence to extend (line, column, flow or block
style); the edit is then spliced into the original text, so comments, key order, quoting, flow
or block style and indentation of the rest of the file cannot change, and the result is parsed
again by ruamel to prove it holds the new entry. Results are values: `Edited` or `EditRefused`.

- `append_scalar(text, key, value)`: add `value` to the top-level sequence `key` (flow
  `[a, b]` -> `[a, b, value]`; block: a new `- value` line after the last item; a missing key
  is added at the end as a flow list). Refused when the value is already there (case-insensitive).
- `append_block(text, key, lines)`: add a multi-line item (a rule) to the block sequence `key`,
  indented like its first item, after its last item, separated by a blank line.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError


@dataclass(frozen=True, slots=True)
class Edited:
    text: str
    line: int  # 1-based line of the new entry


@dataclass(frozen=True, slots=True)
class EditRefused:
    reason: str


def _load(text: str) -> Any:
    return YAML(typ="rt").load(text)


def scalar_text(value: str) -> str:
    """`value` as a YAML flow scalar: plain when that reads back as the same string, else double-quoted."""
    plain = value
    try:
        loaded = _load(f"k: [{plain}]\n")
        if isinstance(loaded, CommentedMap) and list(loaded["k"]) == [value] and plain.strip() == plain:
            return plain
    except YAMLError:
        pass
    return json.dumps(value, ensure_ascii=False)


def _top(text: str) -> CommentedMap | EditRefused:
    try:
        data = _load(text)
    except YAMLError as exc:
        return EditRefused(f"the file does not parse: {exc}")
    if not isinstance(data, CommentedMap):
        return EditRefused("the file is not a YAML mapping")
    return data


def _closing_bracket(lines: list[str], line: int, col: int) -> tuple[int, int] | None:
    """Position of the `]` closing the flow sequence opening at (line, col), 0-based; quotes respected."""
    depth = 0
    quote: str | None = None
    for row in range(line, len(lines)):
        text = lines[row]
        start = col if row == line else 0
        index = start
        while index < len(text):
            char = text[index]
            if quote:
                if char == "\\" and quote == '"':
                    index += 1
                elif char == quote:
                    quote = None
            elif char in "\"'":
                quote = char
            elif char == "#" and (index == 0 or text[index - 1] in " \t"):
                break
            elif char == "[":
                depth += 1
            elif char == "]":
                depth -= 1
                if depth == 0:
                    return row, index
            index += 1
    return None


def _scalar_end(line: str, col: int) -> int:
    """End (exclusive) of the flow scalar starting at `col` of `line`: its closing quote, or the
    last non-blank character before `,`, `]`, ` #` or the end of the line."""
    quote = line[col : col + 1]
    if quote in ("'", '"'):
        index = col + 1
        while index < len(line):
            if quote == '"' and line[index] == "\\":
                index += 2
                continue
            if line[index] == quote:
                if quote == "'" and line[index + 1 : index + 2] == "'":
                    index += 2
                    continue
                return index + 1
            index += 1
        return len(line.rstrip("\r\n"))
    index = col
    while index < len(line) and line[index] not in ",]\r\n" and line[index : index + 2] != " #":
        index += 1
    return len(line[:index].rstrip())


def _dash_col(line: str, item_col: int) -> int:
    """Column of the `-` that introduces the block sequence item starting at `item_col` of `line`."""
    head = line[:item_col].rstrip()
    return len(head) - 1 if head.endswith("-") else max(item_col - 2, 0)


def append_scalar(text: str, key: str, value: str) -> Edited | EditRefused:
    """Add `value` to the top-level sequence `key` (see the module docstring)."""
    data = _top(text)
    if isinstance(data, EditRefused):
        return data
    lines = text.splitlines(keepends=True)
    item = scalar_text(value)
    current = data.get(key)
    if current is None:
        prefix = "" if not text or text.endswith("\n") else "\n"
        return _verified(text + f"{prefix}{key}: [{item}]\n", key, value, len(lines) + 1)
    if not isinstance(current, CommentedSeq):
        return EditRefused(f"{key} is not a list")
    if any(str(existing).lower() == value.lower() for existing in current):
        return EditRefused(f"{value} is already in {key}")
    if current.fa.flow_style() or len(current) == 0:
        line, col = data.lc.value(key)
        close = _closing_bracket(lines, line, col)
        if close is None:
            return EditRefused(f"cannot find the end of the {key} list")
        row, index = close
        before = lines[row][:index]
        trimmed = before.rstrip()
        if len(current) and not trimmed:  # `]` on a line of its own: a new item line before it
            last_row, last_col = current.lc.item(len(current) - 1)
            last = lines[last_row]
            end = _scalar_end(last, last_col)
            if not last[end:].lstrip().startswith(","):
                lines[last_row] = last[:end] + "," + last[end:]
            indent = last[: len(last) - len(last.lstrip())]
            lines.insert(row, f"{indent}{item}\n")
            return _verified("".join(lines), key, value, row + 1)
        if len(current) == 0:
            spliced = before + item
        elif trimmed.endswith(","):
            spliced = trimmed + " " + item + before[len(trimmed):]
        else:
            spliced = trimmed + ", " + item + before[len(trimmed):]
        lines[row] = spliced + lines[row][index:]
        return _verified("".join(lines), key, value, row + 1)
    last_line, item_col = current.lc.item(len(current) - 1)
    new_line = " " * _dash_col(lines[last_line], item_col) + f"- {item}\n"
    insert_at = last_line + 1
    if insert_at == len(lines) and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines.insert(insert_at, new_line)
    return _verified("".join(lines), key, value, insert_at + 1)


def append_block(text: str, key: str, item_lines: list[str], ident: str) -> Edited | EditRefused:
    """Add a multi-line item (first line `- ...`, the rest relative to it) to the block sequence `key`."""
    data = _top(text)
    if isinstance(data, EditRefused):
        return data
    current = data.get(key)
    if not isinstance(current, CommentedSeq) or current.fa.flow_style() or len(current) == 0:
        return EditRefused(f"{key} must be a non-empty block list to append to")
    lines = text.splitlines(keepends=True)
    first_line, item_col = current.lc.item(0)
    indent = " " * _dash_col(lines[first_line], item_col)
    keys = list(data.keys())
    following = keys[keys.index(key) + 1 :]
    end = min((data.lc.key(k)[0] for k in following), default=len(lines))
    while end > 0 and not lines[end - 1].strip():
        end -= 1  # insert before the blank lines that end the list
    if end and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    block = ["\n"] + [indent + line + "\n" for line in item_lines]
    lines[end:end] = block
    edited = "".join(lines)
    reloaded = _top(edited)
    if isinstance(reloaded, EditRefused):
        return EditRefused(f"the edit would break the file: {reloaded.reason}")
    if not any(isinstance(entry, CommentedMap) and entry.get("id") == ident for entry in reloaded.get(key, [])):
        return EditRefused("the edit did not produce the new entry (unexpected layout)")
    return Edited(edited, end + 2)


def _verified(edited: str, key: str, value: str, line: int) -> Edited | EditRefused:
    reloaded = _top(edited)
    if isinstance(reloaded, EditRefused):
        return EditRefused(f"the edit would break the file: {reloaded.reason}")
    if value not in [str(v) for v in reloaded.get(key) or []]:
        return EditRefused("the edit did not produce the new entry (unexpected layout)")
    return Edited(edited, line)


def dump_plain(value: Any) -> str:
    """ruamel's rendering of a plain value (for messages)."""
    stream = io.StringIO()
    YAML(typ="safe").dump(value, stream)
    return stream.getvalue()
