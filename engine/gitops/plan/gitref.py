"""The policy directory as it was at a git ref, extracted into a temporary directory.

`policy_at(directory, ref, into)` finds the repository holding `directory`, and extracts the
same relative directory at `ref` with `git archive` (the work tree and index are not touched).
Results are values: a `GitRefError` names what went wrong (not a repository, unknown ref).
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class GitRefError:
    message: str


def git_root(directory: Path) -> Path | None:
    """The top of the git work tree holding `directory`, or None."""
    result = subprocess.run(
        ["git", "-C", str(directory), "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=False
    )
    return Path(result.stdout.strip()) if result.returncode == 0 else None


def policy_at(directory: Path, ref: str, into: Path) -> Path | GitRefError:
    """Extract `directory` as of `ref` below `into`; returns the extracted policy directory
    (empty when the directory did not exist at `ref`)."""
    root = git_root(directory)
    if root is None:
        return GitRefError(f"{directory} is not inside a git work tree")
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )
    if commit.returncode != 0:
        return GitRefError(f"unknown git ref {ref!r} in {root}")
    rel = directory.resolve().relative_to(root.resolve()).as_posix()
    target = into / rel if rel != "." else into
    target.mkdir(parents=True, exist_ok=True)
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-tree", "-d", "--name-only", commit.stdout.strip(), "--", rel],
        capture_output=True, text=True, check=False,
    )
    if rel != "." and not listing.stdout.strip():
        return target  # the policy directory is new in the work tree
    archive = subprocess.run(
        ["git", "-C", str(root), "archive", "--format=tar", commit.stdout.strip(), "--", rel],
        capture_output=True, check=False,
    )
    if archive.returncode != 0:
        return GitRefError(f"git archive {ref} failed: {archive.stderr.decode(errors='replace').strip()}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return target
