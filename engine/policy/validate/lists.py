"""Lists: an entry on both an allow and a block list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine.policy.loader import LoadedFile, PolicySource, Problem
from engine.policy.models import ListAction
from engine.policy.validate.common import _Memo, _Site

_ALLOWED_AND_BLOCKED = _Memo()
_LIST_FIELDS = (("senders", "sender"), ("domains", "domain"), ("networks", "network"))


def _allowed_and_blocked(source: PolicySource) -> Iterator[Problem]:
    """An entry on an allow list and on a block list: the block list wins, the allow entry is dead."""
    return iter(_ALLOWED_AND_BLOCKED.get(source.lists, lambda: _find_allowed_and_blocked(source)))


def _find_allowed_and_blocked(source: PolicySource) -> Iterator[Problem]:
    allows = [loaded for loaded in source.lists if loaded.model.action is ListAction.allow]
    blocks = [loaded for loaded in source.lists if loaded.model.action is ListAction.block]
    for field, noun in _LIST_FIELDS:
        allowed: set[str] = set()
        for loaded in allows:
            allowed.update(getattr(loaded.model, field))
        blocked: set[str] = set()
        for loaded in blocks:
            blocked.update(getattr(loaded.model, field))
        both = allowed & blocked
        if not both:
            continue
        first: dict[str, tuple[LoadedFile[Any], int]] = {}  # first (file, index) of each entry on a block list
        for loaded in blocks:
            for index, entry in enumerate(getattr(loaded.model, field)):
                if entry in both and entry not in first:
                    first[entry] = (loaded, index)
        for loaded in allows:
            for index, entry in enumerate(getattr(loaded.model, field)):
                if entry in both:
                    block = _Site(first[entry][0], (field, first[entry][1]))
                    yield loaded.problem(
                        "warning",
                        (field, index),
                        f"{noun} '{entry}' is also on block list '{block.file.model.name}' ({block.where()}),"
                        " which takes precedence",
                    )
