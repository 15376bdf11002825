"""Crash recovery, run by the owner's `open` (the package docstring tells what a crash can leave).

Contract: `_recover` makes the deliveries left in flight due at once, removes every file in
`spool/` and every file in `bodies/` without a `body_files` row, and reports both counts.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

from engine.store.sqlite.deliveries import _requeue_inflight
from engine.store.sqlite.schema import BODIES_DIR, SPOOL_DIR
from engine.store.sqlite.writer import _Txn


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What the owner's `open` repaired after a crash."""

    requeued: int  # deliveries that were in flight, due again now
    files_removed: int = 0  # spool files and unreferenced body files a crash left


def _recover(txn: _Txn, now: float, state_dir: Path) -> RecoveryReport:
    """Requeue deliveries left in flight; remove files a crash left behind (package docstring)."""
    removed = 0
    for leftover in os.scandir(state_dir / SPOOL_DIR):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(leftover.path)
            removed += 1
    known = {row[0] for row in txn.conn.execute("SELECT queue_id FROM body_files")}
    for body in os.scandir(state_dir / BODIES_DIR):
        if body.name not in known:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(body.path)
                removed += 1
    return RecoveryReport(_requeue_inflight(txn, now), removed)
