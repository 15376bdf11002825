"""`liveprism test [REPO]`: run the repository's Gherkin scenarios with pytest and the liveprism plugin.

Contract: runs `python -m pytest REPO/tests/features` with REPO as working directory and rootdir
(so paths in scenarios are relative to REPO, and the policy is REPO/policies unless a scenario
says otherwise); `--junitxml FILE` and `--cucumberjson FILE` are passed through (relative to the
current directory), as is anything after `--`. Output, summary line (`N passed, M failed`) and
exit code are pytest's; 2 when REPO has no tests/features directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

FEATURES = Path("tests") / "features"


def pytest_command(
    repo: Path, junitxml: Path | None, cucumberjson: Path | None, extra: Sequence[str] = ()
) -> list[str]:
    """The pytest command line `liveprism test` runs (from `repo`)."""
    command = [sys.executable, "-m", "pytest", str(FEATURES), "--rootdir", "."]
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):  # entry points are not loaded: name both plugins
        command += ["-p", "pytest_bdd.plugin", "-p", "engine.gitops.bdd.plugin"]
    if junitxml is not None:
        command += ["--junitxml", str(junitxml.resolve())]
    if cucumberjson is not None:
        command += ["--cucumberjson", str(cucumberjson.resolve())]
    return [*command, *extra]


def run_test(repo: Path, junitxml: Path | None, cucumberjson: Path | None, extra: Sequence[str] = ()) -> int:
    """Run the scenarios of `repo`; return pytest's exit code."""
    if not (repo / FEATURES).is_dir():
        print(f"error: {repo / FEATURES} does not exist: no scenarios to run", file=sys.stderr)
        return 2
    return subprocess.call(pytest_command(repo, junitxml, cucumberjson, extra), cwd=repo)
