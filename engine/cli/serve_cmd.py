"""`liveprism serve`: option checks, the metrics directory, then `engine.serve.service.run_serve`."""

from __future__ import annotations

import sys
from pathlib import Path

from engine.admin import multiproc


def run_serve_cmd(directory: Path, state: Path | None, workers: str, git_remote: str | None, branch: str,
                  git_path: str, interval: float, user: str | None = None) -> int:
    """Exit 2 on a bad option or an invalid policy; else run until stopped (0)."""
    metrics_dir = multiproc.prepare()  # before anything imports prometheus_client
    try:
        from engine.serve.gitsync import GitSettings
        from engine.serve.service import parse_workers, run_serve

        count = parse_workers(workers)
        if count is None:
            print(f"error: --workers {workers!r}: expected a positive number or auto", file=sys.stderr)
            return 2
        git = GitSettings(git_remote, branch, git_path, interval) if git_remote else None
        return run_serve(directory, state, workers=count, git_settings=git, user=user)
    finally:
        multiproc.cleanup(metrics_dir)
