"""`liveprism sync`: one git sync pass into a work directory, for cron or a deploy pipeline.

Fetches the branch, checks the new commit out into INTO/releases/, validates and compiles it and,
when valid, swaps the INTO/current symlink to it; a gateway serving INTO/current picks the swap
up by itself (its watcher follows the link). A rejected commit is not tried again until the
branch moves (INTO/sync-state.json).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from engine.graph.build.incremental import IncrementalLoader
from engine.serve.gitsync import Applied, GitSettings, GitSync


def run_sync(remote: str, into: Path, branch: str, git_path: str) -> int:
    loader = IncrementalLoader()

    async def apply(policy_dir: Path, revision: str) -> Applied:
        result, _ = await asyncio.to_thread(loader.load_graph, policy_dir)
        errors = tuple(p.format_text() for p in result.problems if p.severity == "error")
        return Applied(result.graph is not None, result.graph.version if result.graph else "", errors)

    sync = GitSync(GitSettings(remote, branch, git_path), into)
    outcome = asyncio.run(sync.run_pass(apply))
    revision = (outcome.revision or "")[:12]
    if outcome.outcome == "fetch-failed":
        print(f"error: {'; '.join(outcome.problems)}", file=sys.stderr)
        return 2
    if outcome.outcome in ("rejected", "skipped"):
        for line in outcome.problems:
            print(line)
        what = "rejected" if outcome.outcome == "rejected" else "already rejected, not retried until the branch moves"
        print(f"{what}: commit {revision}; {into / 'current'} unchanged", file=sys.stderr)
        return 1
    verb = "applied" if outcome.outcome == "applied" else "up to date"
    print(f"{verb}: commit {revision} policy {outcome.version} -> {into / 'current'}")
    return 0
