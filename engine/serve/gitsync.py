"""Pull-based git sync ("reload on merge"): fetch a branch, validate it, swap it in atomically.

Layout of the work directory (`STATE/git` for `serve --git-remote`, `--into` for `liveprism sync`):
    mirror.git/            bare repository the branch is fetched into (objects shared by releases)
    releases/<rev12>-<ms>/ one checkout per revision tried (a detached git worktree of mirror.git)
    current -> releases/<rev12>-<ms>/<git-path>   the applied policy directory (symlink)
    sync-state.json        last applied and last attempted revision, the attempt's problems

One pass (`GitSync.run_pass`): fetch `refs/heads/BRANCH` from the remote (any URL git accepts:
https, ssh, file://, a local path); if the fetched commit is the applied one, or the last
attempted one that was rejected, nothing happens (a rejected commit is not retried until the
branch moves, even across restarts: the state file says so). Otherwise it is checked out into a
new release directory and handed to `apply` (validate + compile + swap in memory for `serve`;
validate + compile for `sync`); when applied, `current` is swapped by renaming a new symlink over
it (atomic), so a gateway serving `current` sees one release or the other, never a mix. A
rejected release directory is removed; old applied ones beyond `KEEP_RELEASES` are pruned.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("liveprism.git")
KEEP_RELEASES = 3
GIT_TIMEOUT = 300.0
STATE_NAME = "sync-state.json"


@dataclass(frozen=True, slots=True)
class GitSettings:
    remote: str
    branch: str = "main"
    path: str = "policies"
    interval: float = 30.0


@dataclass(frozen=True, slots=True)
class Applied:
    """What `apply` answers for a release: served (or valid) or not, with the errors."""

    ok: bool
    version: str
    problems: tuple[str, ...] = ()


@dataclass
class SyncState:
    applied: str | None = None  # revision of `current`
    applied_version: str | None = None
    attempted: str | None = None  # last revision tried
    attempt_result: str | None = None  # applied | rejected | fetch-failed
    problems: list[str] = field(default_factory=list)
    attempted_at: float | None = None
    failures: int = 0


@dataclass(frozen=True, slots=True)
class PassResult:
    """One pass: `outcome` is applied | unchanged | skipped (rejected before) | rejected | fetch-failed."""

    outcome: str
    revision: str | None
    version: str | None = None
    problems: tuple[str, ...] = ()


class GitError(Exception):
    pass


class GitSync:
    def __init__(self, settings: GitSettings, workdir: Path) -> None:
        self.settings = settings
        self.workdir = workdir
        self.mirror = workdir / "mirror.git"
        self.current = workdir / "current"
        self.state = self._read_state()
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ state file

    def _read_state(self) -> SyncState:
        try:
            return SyncState(**json.loads((self.workdir / STATE_NAME).read_text()))
        except (OSError, ValueError, TypeError):
            return SyncState()

    def _write_state(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        temporary = self.workdir / (STATE_NAME + ".tmp")
        temporary.write_text(json.dumps(asdict(self.state), indent=2))
        os.replace(temporary, self.workdir / STATE_NAME)

    def status(self) -> dict[str, Any]:
        """For `/policy` and the metrics."""
        return {"remote": self.settings.remote, "branch": self.settings.branch, "path": self.settings.path,
                "interval": self.settings.interval, **asdict(self.state)}

    # ------------------------------------------------------------ git

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
        try:
            done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT,
                                  check=False, env=env)
        except (OSError, subprocess.SubprocessError) as exc:
            raise GitError(f"git {args[0]}: {exc}") from exc
        if done.returncode != 0:
            raise GitError(f"git {' '.join(args[:2])}: {done.stderr.strip() or done.returncode}")
        return done.stdout.strip()

    def fetch(self) -> str:
        """Fetch the branch into the mirror; the commit it points at."""
        if not (self.mirror / "HEAD").exists():
            self.workdir.mkdir(parents=True, exist_ok=True)
            self._git("init", "--bare", "-q", str(self.mirror))
        branch = self.settings.branch
        remote = self.settings.remote
        if "://" not in remote and not remote.startswith(("git@", "/")) and Path(remote).exists():
            remote = str(Path(remote).resolve())  # a relative local path: relative to where we were started
        self._git("--git-dir", str(self.mirror), "fetch", "-q", "--no-tags", "--force", remote,
                  f"+refs/heads/{branch}:refs/heads/{branch}")
        return self._git("--git-dir", str(self.mirror), "rev-parse", f"refs/heads/{branch}^{{commit}}")

    def checkout(self, revision: str) -> Path:
        """A new release directory at `revision`; returns its policy directory (`--git-path`)."""
        releases = self.workdir / "releases"
        releases.mkdir(parents=True, exist_ok=True)
        release = releases / f"{revision[:12]}-{int(time.time() * 1000)}"
        self._git("--git-dir", str(self.mirror), "worktree", "add", "-q", "--detach", str(release), revision)
        return release / self.settings.path if self.settings.path not in ("", ".") else release

    def _remove_release(self, release: Path) -> None:
        try:
            self._git("--git-dir", str(self.mirror), "worktree", "remove", "--force", str(release))
        except GitError:
            shutil.rmtree(release, ignore_errors=True)
            self._git("--git-dir", str(self.mirror), "worktree", "prune")

    def _release_of(self, policy_dir: Path) -> Path:
        releases = (self.workdir / "releases").resolve()
        path = policy_dir.resolve()
        while path.parent != releases and path != path.parent:
            path = path.parent
        return path

    def swap_current(self, policy_dir: Path) -> None:
        """Point `current` at `policy_dir`: a new symlink renamed over the old one (atomic)."""
        temporary = self.workdir / "current.tmp"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        temporary.symlink_to(os.path.relpath(policy_dir, self.workdir))
        os.replace(temporary, self.current)

    def prune(self) -> None:
        """Remove applied releases beyond the newest KEEP_RELEASES (never the current one)."""
        releases = self.workdir / "releases"
        if not releases.is_dir():
            return
        keep = {self._release_of(self.current)} if self.current.exists() else set()
        ordered = sorted(releases.iterdir(), key=lambda p: p.name.rpartition("-")[2], reverse=True)
        for release in ordered[KEEP_RELEASES:]:
            if release.resolve() not in keep:
                self._remove_release(release)

    # ------------------------------------------------------------ one pass

    async def run_pass(self, apply: Callable[[Path, str], Awaitable[Applied]], *, force: bool = False) -> PassResult:
        """Fetch and, when the branch moved, check out, apply and swap; see the module docstring.

        `force` retries the current commit even when it was rejected before (not used by the
        timer; an operator's `reload` is explicit)."""
        async with self._lock:
            try:
                revision = await asyncio.to_thread(self.fetch)
            except GitError as exc:
                log.error("git sync: fetch of %s %s failed: %s", self.settings.remote, self.settings.branch, exc)
                self.state.failures += 1
                self.state.attempt_result, self.state.attempted_at = "fetch-failed", time.time()
                self.state.problems = [str(exc)]
                self._write_state()
                return PassResult("fetch-failed", None, problems=(str(exc),))
            if revision == self.state.applied and self.current.exists():
                return PassResult("unchanged", revision, self.state.applied_version)
            if revision == self.state.attempted and self.state.attempt_result == "rejected" and not force:
                return PassResult("skipped", revision, problems=tuple(self.state.problems))
            policy_dir = await asyncio.to_thread(self.checkout, revision)
            result = await apply(policy_dir, revision)
            self.state.attempted, self.state.attempted_at = revision, time.time()
            self.state.problems = list(result.problems)
            if not result.ok:
                self.state.attempt_result = "rejected"
                self.state.failures += 1
                self._write_state()
                log.error("git sync: commit %s of %s rejected; still serving %s", revision[:12],
                          self.settings.branch, (self.state.applied or "the previous policy")[:12])
                await asyncio.to_thread(self._remove_release, self._release_of(policy_dir))
                return PassResult("rejected", revision, result.version, result.problems)
            self.state.attempt_result = "applied"
            self.state.applied, self.state.applied_version = revision, result.version
            await asyncio.to_thread(self.swap_current, policy_dir)
            self._write_state()
            log.info("git sync: applied commit %s of %s (policy %s)", revision[:12], self.settings.branch,
                     result.version)
            await asyncio.to_thread(self.prune)
            return PassResult("applied", revision, result.version)
