"""Secrets: a secret referenced by path (not `env:NAME`) must not be tracked by git."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path

from engine.policy.loader import PolicySource, Problem
from engine.policy.validate.common import ENV_PREFIX, _Site


def _tracked_secrets(source: PolicySource) -> Iterator[Problem]:
    """A secret referenced by path (not `env:NAME`) must not be tracked by git."""
    secrets: list[tuple[_Site, str]] = []
    if source.gateway is not None and source.gateway.model.tls.key is not None:
        secrets.append((_Site(source.gateway, ("tls", "key")), source.gateway.model.tls.key))
    if source.gateway is not None and source.gateway.model.admin is not None:
        secrets.append((_Site(source.gateway, ("admin", "token")), source.gateway.model.admin.token))
    for loaded in source.tenants:
        dkim = loaded.model.outbound.dkim
        if dkim is not None:
            secrets.append((_Site(loaded, ("outbound", "dkim", "private_key")), dkim.private_key))
        auth = loaded.model.outbound.auth
        if auth is not None:
            secrets.append((_Site(loaded, ("outbound", "auth", "users")), auth.users))
    by_path = [(site, value) for site, value in secrets if not value.startswith(ENV_PREFIX)]
    if not by_path or not _in_git_work_tree(source.root):
        return
    for site, value in by_path:
        if _git_tracks(source.root, value):
            yield site.problem(
                "error",
                f"secret '{value}' is tracked by git: remove it from the repository (git rm --cached) "
                f"and reference it by a path outside git or as {ENV_PREFIX}NAME",
            )


def _git(root: Path, args: Iterable[str]) -> str | None:
    """Standard output of `git ARGS` run in `root`; None when it fails or git cannot be run."""
    try:
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _in_git_work_tree(root: Path) -> bool:
    return (_git(root, ["rev-parse", "--is-inside-work-tree"]) or "").strip() == "true"


def _git_tracks(root: Path, path: str) -> bool:
    return _git(root, ["ls-files", "--error-unmatch", "--", path]) is not None
