"""The store: spool, delivery queue, quarantine and archive (interface in `engine.store.base`).

`open_store` is the factory: the embedded SQLite store today; a server database behind
`storage.url` later, chosen here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

from engine.policy.models import Storage
from engine.store.base import Store


def state_dir(storage: Storage, override: Path | None = None) -> Path:
    """The state directory: `--state` when given, else `storage.path` relative to the working
    directory (DESIGN.md: state never lives in the policy repository)."""
    return override if override is not None else Path(storage.path)


def open_store(state_dir: Path, *, owner: bool = True, fsync_commits: bool = True) -> Store:
    """The embedded store (SQLite, messages included) under `state_dir`, created if missing.

    `owner=True` is the gateway: it takes an exclusive lock on the state directory and runs
    crash recovery in `open`. The relay process and tools that review or release mail while the
    gateway runs (the `quarantine` CLI) pass `owner=False`. `fsync_commits=False` (the relay)
    commits without fsync: see `engine.store.sqlite` for why that cannot lose accepted mail.
    """
    from engine.store.sqlite import SqliteStore  # imported when used: the CLI starts faster

    return SqliteStore(state_dir, owner=owner, fsync_commits=fsync_commits)
