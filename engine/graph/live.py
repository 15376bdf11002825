"""The live policy of a running process: the current `FilterGraph`, swapped atomically on change.

`watch()` reloads when files under the policy dir change: load, validate and compile run in a
worker thread; a valid result replaces `graph` in one assignment (readers never see a half
state); an invalid one is logged problem by problem and the running graph stays.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from engine.graph.compiler import load_graph
from engine.graph.evaluator import FilterGraph

log = logging.getLogger("liveprism.reload")
RELOAD_DEBOUNCE_MS = 300


class LivePolicy:
    """Holds the graph every new transaction (and delivery) reads."""

    def __init__(self, policy_dir: Path, graph: FilterGraph) -> None:
        self.policy_dir = policy_dir
        self.graph = graph

    def current(self) -> FilterGraph:
        return self.graph

    async def watch(self) -> None:
        """Reload on every change under the policy dir, until cancelled."""
        from watchfiles import awatch

        async for _changes in awatch(self.policy_dir, debounce=RELOAD_DEBOUNCE_MS, recursive=True):
            result = await asyncio.to_thread(load_graph, self.policy_dir)
            if result.graph is None:
                for problem in result.problems:
                    if problem.severity == "error":
                        log.error("reload rejected: %s", problem.format_text())
                log.error("reload rejected; still serving policy %s", self.graph.version)
                continue
            old, self.graph = self.graph, result.graph
            log.info("policy reloaded: %s -> %s", old.version, self.graph.version)
