"""Fixtures of the end-to-end tests: every test here starts real processes (`liveprism serve`,
`liveprism sink`, nsd, dnsmasq, clamd, Postfix's smtp-sink, OpenDKIM, git), all on 127.0.0.1,
each stopped by PID. The kit they use is in tests/support/ (gateway, peers, nsd, policies).

Every test collected here is marked `integration`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nsd import nsd_fixture

HERE = Path(__file__).resolve().parent

nsd = nsd_fixture()
"""A real nsd on 127.0.0.1 (tests/support/nsd.py), not started: `port = nsd.start({origin: zone_text})`,
`nsd.reload(zones)`; stopped by PID at teardown. A module serving fixed zones overrides it."""


@pytest.fixture
def procs() -> Iterator[list[object]]:
    """Everything appended here is stopped (by PID) at teardown, newest first."""
    started: list[object] = []
    yield started
    for item in reversed(started):
        item.stop()  # type: ignore[attr-defined]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)
