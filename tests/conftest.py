"""Test-suite wide settings, and the fixtures that tests of more than one folder use."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support.keys import Keys, make_keys
from tests.support.relay_lab import RelayLab

# CI machines are shared and noisy: a property test fails on a wrong answer, never on a slow one.
settings.register_profile("liveprism", deadline=None)
settings.load_profile("liveprism")


@pytest.fixture
def relay_lab(tmp_path: Path) -> Iterator[RelayLab]:
    """The relay harness (tests/support/relay_lab.py); everything it started is stopped at teardown."""
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


@pytest.fixture(scope="session")
def keys() -> Keys:
    """The DKIM keys of the run (tests/support/keys.py), made once."""
    return make_keys()
