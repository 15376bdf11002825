"""Pydantic validation errors as Problems at the FILE:LINE:COL of the YAML they are about.

Contract: `schema_problems` turns one `ValidationError` of a policy model into one Problem per
error, located at the YAML node the error is about (or its nearest ancestor that has a position),
worded for a policy author: an unknown key names the closest allowed key ("did you mean"), or the
allowed keys; a missing key points at its mapping; a bad condition names the condition kinds; the
alternatives of a plain union that all failed at one place are merged into one message.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel, Discriminator, Tag, ValidationError
from pydantic_core import ErrorDetails

from engine.policy.models import CONDITION_KEYS
from engine.policy.problem import Problem
from engine.policy.yaml_positions import Positions, YamlPath, nearest_position, yaml_type


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
    positions: Positions,
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
        return path, f"a condition must be a mapping with one of: {expected} (got {yaml_type(value)})"
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
