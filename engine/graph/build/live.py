"""The live policy of a running process: the current `FilterGraph`, swapped atomically on change.

Every reload — the file watcher, SIGHUP, `POST /reload` on the admin API, a git sync pass, a
worker told by its parent — goes through `LivePolicy.reload`, one at a time:
- the directory is resolved first (`policies -> releases/N` symlinks: the target at that moment
  is loaded, so a deploy that swaps the link mid-load cannot mix two releases);
- load (only changed files are parsed: `IncrementalLoader`), validate and compile run in a
  worker thread; a valid result replaces `graph` in one assignment (readers never see a half
  state; a transaction keeps the snapshot it started with); an invalid one is recorded as the
  last attempt with its problems (`FILE:LINE:COL: error: MESSAGE`) and the running graph stays;
- after a swap the `on_reload` callbacks run (relay routing), then the async `after_reload`
  hooks (workers told to load the same directory), whose answers come back in the result.

`watch()` reloads when files under the directory change, and when the directory is a symlink
that now points elsewhere (checked every second).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.graph.build.compiler import GraphResult
from engine.graph.build.incremental import IncrementalLoader, compile_source, frozen_after
from engine.graph.filter_graph import FilterGraph
from engine.policy.loader import PolicySource, content_hash, policy_files

log = logging.getLogger("liveprism.reload")
RELOAD_DEBOUNCE_MS = 300
LINK_POLL_MS = 1000


@dataclass(frozen=True, slots=True)
class Attempt:
    """One reload attempt: what was tried, from where, and whether it is now served."""

    version: str  # of the files tried (content hash[:12] [+git.commit]); "" when nothing could be read
    directory: str
    at: float
    trigger: str  # start | watch | symlink | sighup | api | git | parent
    applied: bool
    problems: tuple[str, ...] = ()  # errors, FILE:LINE:COL: error: MESSAGE (FILE relative to the directory)
    revision: str | None = None  # git commit, when the attempt came from git sync
    parsed_files: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "version": self.version, "directory": self.directory, "at": self.at, "trigger": self.trigger,
            "applied": self.applied, "problems": list(self.problems), "revision": self.revision,
            "parsed_files": self.parsed_files, "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What `reload` did: the attempt, the version served afterwards and what hooks answered."""

    attempt: Attempt
    served: str
    hooks: dict[str, Any] = field(default_factory=dict)

    @property
    def applied(self) -> bool:
        return self.attempt.applied


class LivePolicy:
    """Holds the graph every new transaction (and delivery) reads, and the reload bookkeeping."""

    def __init__(self, policy_dir: Path, graph: FilterGraph, *, source: str | None = None,
                 loader: IncrementalLoader | None = None) -> None:
        self.policy_dir = policy_dir  # as configured (may be a symlink)
        self.graph = graph
        self.directory = policy_dir.resolve()  # what `graph` was loaded from
        self.source = source or str(policy_dir)  # shown in /policy and metrics: a path or a git URL
        self.revision: str | None = None  # git commit of the served policy, when known
        self.loaded_at = time.time()
        self.last_attempt: Attempt | None = None
        self.attempts = 0
        self.failures = 0
        self.last_success = self.loaded_at
        self.loader = loader or IncrementalLoader()
        self.on_reload: list[Callable[[FilterGraph], None]] = []  # called with each new graph
        self.after_reload: list[tuple[str, Callable[[LivePolicy], Awaitable[Any]]]] = []
        self._lock = asyncio.Lock()

    def current(self) -> FilterGraph:
        return self.graph

    async def reload(self, trigger: str, directory: Path | None = None, *, revision: str | None = None,
                     source: str | None = None) -> ReloadResult:
        """Load `directory` (default: the configured one, resolved now) and serve it when valid."""
        async with self._lock:
            target = (directory or self.policy_dir).resolve()
            started = time.monotonic()
            loaded = await asyncio.to_thread(self.loader.load, target)
            parsed = self.loader.last.parsed
            self.attempts += 1
            if loaded.content_hash == self.graph.content_hash and target == self.directory and not loaded.problems:
                attempt = Attempt(self.graph.version, str(target), time.time(), trigger, True, (), revision,
                                  parsed, time.monotonic() - started)
                self.last_attempt = attempt  # the files are what is served: nothing to swap
                return ReloadResult(attempt, self.graph.version, {"unchanged": True})
            result = await asyncio.to_thread(self._compile, loaded)
            version = _attempted_version(loaded.content_hash, result.graph)
            errors = tuple(p.format_text() for p in result.problems if p.severity == "error")
            applied = result.graph is not None
            attempt = Attempt(
                version=version, directory=str(target), at=time.time(), trigger=trigger, applied=applied,
                problems=errors, revision=revision, parsed_files=parsed,
                seconds=time.monotonic() - started,
            )
            self.last_attempt = attempt
            if result.graph is None:
                self.failures += 1
                for line in errors:
                    log.error("reload rejected: %s", line)
                log.error("reload (%s) of %s rejected (%s); still serving policy %s",
                          trigger, target, version or "unreadable", self.graph.version)
                return ReloadResult(attempt, self.graph.version)
            old, self.graph = self.graph, result.graph
            self.directory, self.loaded_at, self.last_success = target, attempt.at, attempt.at
            self.revision = revision
            if source is not None:
                self.source = source
            log.info("policy reloaded (%s, %d of %d files parsed, %.3f s): %s -> %s from %s", trigger,
                     self.loader.last.parsed, self.loader.last.files, attempt.seconds, old.version,
                     self.graph.version, target)
            for callback in self.on_reload:
                callback(self.graph)
            hooks: dict[str, Any] = {}
            for name, hook in self.after_reload:
                hooks[name] = await hook(self)
            return ReloadResult(attempt, self.graph.version, hooks)

    def _compile(self, source: PolicySource) -> GraphResult:
        with frozen_after():
            return compile_source(source, self.loader.indexes)

    async def watch(self) -> None:
        """Reload on every change under the policy dir (or of its symlink target), until cancelled.

        The watcher's first (possibly empty) batch also compares the files with what `graph` was
        compiled from, so an edit made between the initial load and the watcher's start is not missed."""
        from watchfiles import awatch

        started = False
        while True:
            target = self.policy_dir.resolve()
            if not target.is_dir():  # a dangling link mid-deploy: keep serving, look again soon
                await asyncio.sleep(LINK_POLL_MS / 1000)
                continue
            if target != self.directory:  # the link moved while we were not watching it
                await self.reload("symlink")
            try:
                async for changes in awatch(
                    target, debounce=RELOAD_DEBOUNCE_MS, recursive=True, rust_timeout=LINK_POLL_MS,
                    yield_on_timeout=True,
                ):
                    if self.policy_dir.resolve() != target:  # `ln -sfn releases/N policies`
                        break
                    if changes or (not started and await asyncio.to_thread(self._changed_since_load, target)):
                        await self.reload("watch")
                    started = True
            except (FileNotFoundError, RuntimeError) as exc:  # the watched release was deleted
                log.info("policy directory %s went away (%s); following %s", target, exc, self.policy_dir)

    def _changed_since_load(self, root: Path) -> bool:
        try:
            return content_hash(root, policy_files(root)) != self.graph.content_hash
        except OSError:
            return True

    def status(self) -> dict[str, Any]:
        """The served policy and the last attempt, as `GET /policy` shows them."""
        return {
            "version": self.graph.version,
            "content_hash": self.graph.content_hash,
            "git_commit": self.revision or _commit_of(self.graph.version),
            "source": self.source,
            "directory": str(self.directory),
            "loaded_at": self.loaded_at,
            "reloads": {"attempts": self.attempts, "failures": self.failures, "last_success": self.last_success},
            "last_attempt": self.last_attempt.to_json() if self.last_attempt is not None else None,
        }


def _attempted_version(digest: str, graph: FilterGraph | None) -> str:
    if graph is not None:
        return graph.version
    return digest[:12]


def _commit_of(version: str) -> str:
    """The git commit in a version `hash+git.commit`, or ""."""
    return version.partition("+git.")[2]

