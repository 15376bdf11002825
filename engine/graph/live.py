"""The live policy of a running process: the current `FilterGraph`, swapped atomically on change.

`watch()` reloads when files under the policy dir change: load, validate and compile run in a
worker thread; a valid result replaces `graph` in one assignment (readers never see a half
state); an invalid one is logged problem by problem and the running graph stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from engine.graph.compiler import load_graph
from engine.graph.evaluator import FilterGraph
from engine.policy.loader import content_hash, policy_files

log = logging.getLogger("liveprism.reload")
RELOAD_DEBOUNCE_MS = 300


class LivePolicy:
    """Holds the graph every new transaction (and delivery) reads."""

    def __init__(self, policy_dir: Path, graph: FilterGraph) -> None:
        self.policy_dir = policy_dir
        self.graph = graph
        self.on_reload: list[Callable[[FilterGraph], None]] = []  # called with each new graph

    def current(self) -> FilterGraph:
        return self.graph

    async def watch(self) -> None:
        """Reload on every change under the policy dir, until cancelled.

        The file watcher starts with the first iteration; its first (possibly empty) batch also
        triggers a comparison of the files with what `graph` was compiled from, so an edit made
        between the initial load and the watcher's start is not missed."""
        from watchfiles import awatch

        started = False
        async for changes in awatch(
            self.policy_dir, debounce=RELOAD_DEBOUNCE_MS, recursive=True, rust_timeout=1000, yield_on_timeout=True
        ):
            if changes or (not started and await asyncio.to_thread(self._changed_since_load)):
                await self._reload()
            started = True

    def _changed_since_load(self) -> bool:
        root = self.policy_dir
        try:
            return content_hash(root, policy_files(root)) != self.graph.content_hash
        except OSError:
            return True

    async def _reload(self) -> None:
        result = await asyncio.to_thread(load_graph, self.policy_dir)
        if result.graph is None:
            for problem in result.problems:
                if problem.severity == "error":
                    log.error("reload rejected: %s", problem.format_text())
            log.error("reload rejected; still serving policy %s", self.graph.version)
            return
        old, self.graph = self.graph, result.graph
        log.info("policy reloaded: %s -> %s", old.version, self.graph.version)
        for callback in self.on_reload:
            callback(self.graph)
