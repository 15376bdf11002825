"""What the commands that read or change stored mail (`quarantine`, `queue`) share.

The store is found with `--state DIR`, or from `storage.path` in the policy directory's
gateway.yaml (DIR argument or `--policy DIR`, default `policies`; the path is relative to the
working directory). It is opened as a non-owner, so the commands work while the gateway runs.
"""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer

from engine.mime.printable import escape
from engine.store import open_store, state_dir
from engine.store.base import Store
from engine.store.sqlite import DB_NAME

T = TypeVar("T")

StateOption = Annotated[
    Path | None, typer.Option("--state", help="State directory of the store (overrides storage.path).")
]
PolicyOption = Annotated[Path, typer.Option("--policy", help="Policy directory whose gateway.yaml gives storage.path.")]
PolicyArgument = Annotated[
    Path | None, typer.Argument(help="Policy directory (DESIGN.md's DIR; the same as --policy).", show_default=False)
]


def store_dir(state: Path | None, policy: Path) -> Path:
    """The store's directory: `--state`, else `storage.path` of the policy's gateway.yaml."""
    if state is not None:
        return state
    from engine.policy.loader import load_policy

    source = load_policy(policy)
    if source.gateway is None:
        problems = "; ".join(p.format_text() for p in source.problems if "gateway" in p.file)
        fail(f"cannot read storage.path from {policy}/gateway.yaml ({problems or 'missing'}); pass --state DIR")
    storage = source.gateway.model.storage
    if storage.url is not None:
        fail(f"storage.url ({storage.url}) is not supported by this command; pass --state DIR")
    return state_dir(storage)


def fail(message: str) -> NoReturn:
    """Print `error: message` to stderr and exit 1."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def with_store(state: Path | None, policy: Path, action: Callable[[Store], Awaitable[T]]) -> T:
    """Run `action` on the store (opened as a non-owner, closed afterwards); exit 1 if there is none."""
    directory = store_dir(state, policy)
    if not (directory / DB_NAME).is_file():
        fail(f"no LivePrism store in {directory}")

    async def session() -> T:
        store = open_store(directory, owner=False)
        await store.open()
        try:
            return await action(store)
        finally:
            await store.close()

    return asyncio.run(session())


def when(timestamp: float) -> str:
    """A UTC timestamp as `YYYY-MM-DD HH:MM:SSZ`."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def clip(text: str, width: int) -> str:
    """`text` for a terminal column: control characters escaped (a subject or an address can hold
    escape sequences), cut to `width` characters with an ellipsis when cut."""
    text = escape(text)
    return text if len(text) <= width else text[: width - 1] + "…"
