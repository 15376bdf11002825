"""Fixtures of the unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from relay_harness import RelayLab


@pytest.fixture
def relay_lab(tmp_path: Path) -> Iterator[RelayLab]:
    """The relay harness (tests/unit/relay_harness.py); everything it started is stopped at teardown."""
    loop = asyncio.new_event_loop()
    lab = RelayLab(tmp_path, loop)
    try:
        yield lab
    finally:
        try:
            loop.run_until_complete(asyncio.wait_for(lab.close(), 60))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
