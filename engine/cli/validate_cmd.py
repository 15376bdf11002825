"""`liveprism validate [DIR] [--format text|json|github]`: schema + semantic checks of a policy directory.

Contract: prints every problem, located at FILE:LINE:COL with FILE relative to the current
directory (DIR/relative-path), in the chosen format; returns 0 when there are no errors (warnings
alone are valid), 1 when there are errors, 2 when DIR is not a directory.
- text: `FILE:LINE:COL: SEVERITY: MESSAGE` lines on stdout, a summary line on stderr;
- json: one object `{"valid": bool, "problems": [{severity, file, line, col, message}]}` on stdout;
- github: workflow commands `::error file=F,line=L,col=C::MESSAGE` on stdout, summary on stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.policy.loader import Problem, load_policy
from engine.policy.problem import display_path
from engine.policy.validate import validate_policy

EXIT_VALID = 0
EXIT_INVALID = 1
EXIT_USAGE = 2


def run_validate(directory: Path, fmt: str) -> int:
    """Validate the policy in `directory` and print its problems as `fmt`; return the exit code."""
    if not directory.is_dir():
        print(f"error: policy directory '{directory}' does not exist", file=sys.stderr)
        return EXIT_USAGE
    source = load_policy(directory)
    problems = validate_policy(source)
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    if fmt == "json":
        print(json.dumps({"valid": errors == 0, "problems": [_as_json(directory, p) for p in problems]}, indent=2))
    else:
        for problem in problems:
            print(problem.format("github" if fmt == "github" else "text", directory))
        print(
            f"{_count(errors, 'error')}, {_count(warnings, 'warning')} in {_count(len(source.files), 'file')}",
            file=sys.stderr,
        )
    return EXIT_INVALID if errors else EXIT_VALID


def _as_json(directory: Path, problem: Problem) -> dict[str, str | int]:
    return {
        "severity": problem.severity,
        "file": display_path(directory, problem.file),
        "line": problem.line,
        "col": problem.col,
        "message": problem.message,
    }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
