"""Which checks this build can run: `validate` refuses enabling one that is not built yet."""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

AUTH_CHECKS = ("spf", "dkim", "dmarc", "arc")


@cache
def auth_module(name: str) -> Any:
    """The authentication check module `engine.checks.<name>` (spf, dkim, dmarc, arc, authres),
    or None while it is not built."""
    try:
        return importlib.import_module(f"engine.checks.{name}")
    except ImportError:
        return None


def supported(name: str) -> bool:
    """Whether the check `name` (spf, dkim, dmarc, arc) can run in this build."""
    needs = {"dmarc": ("dmarc", "spf", "dkim")}.get(name, (name,))
    return all(auth_module(module) is not None for module in needs)
