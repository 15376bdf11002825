"""engine/serve/gitsync.py against real git: a bare repository made here is the remote, a clone of
it is where the "operator" commits and pushes. Each pass fetches the branch into the mirror,
checks the commit out into a release directory, hands it to `apply` and, when applied, swaps
the `current` symlink; these tests look at what is on disk (the symlink, the release
directories, sync-state.json) and at what `run_pass` answers."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from engine.serve.gitsync import KEEP_RELEASES, STATE_NAME, Applied, GitSettings, GitSync, PassResult
from tests.support.policies import commit, remote_and_clone, write_policy


@dataclass
class Apply:
    """The `apply` of `serve`, recorded: what it was given and the gateway.yaml it saw; refuses
    every release while `ok` is false."""

    ok: bool = True
    calls: list[tuple[Path, str, str]] = field(default_factory=list)

    async def __call__(self, policy_dir: Path, revision: str) -> Applied:
        self.calls.append((policy_dir, revision, (policy_dir / "gateway.yaml").read_text()))
        if not self.ok:
            return Applied(False, f"v-{revision[:7]}", ("gateway.yaml:1:1: error: refused by the test",))
        return Applied(True, f"v-{revision[:7]}")


@dataclass
class Remote:
    bare: Path
    work: Path

    def push(self, hostname: str, message: str) -> str:
        """A policy whose gateway.yaml names `hostname`, committed and pushed to main; the commit."""
        write_policy(self.work / "policies", {"gateway.yaml": f"hostname: {hostname}\n"})
        return commit(self.work, message, push="main")


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    return Remote(*remote_and_clone(tmp_path / "origin"))


def sync(remote: str | Path, workdir: Path, branch: str = "main") -> GitSync:
    return GitSync(GitSettings(remote=str(remote), branch=branch, path="policies", interval=30.0), workdir)


def run_pass(git: GitSync, apply: Apply, *, force: bool = False) -> PassResult:
    return asyncio.run(git.run_pass(apply, force=force))


def releases(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "releases").iterdir())


def sync_state(workdir: Path) -> dict[str, object]:
    state: dict[str, object] = json.loads((workdir / STATE_NAME).read_text())
    return state


def test_a_first_sync_checks_the_branch_out_and_points_current_at_it(tmp_path: Path, remote: Remote) -> None:
    revision = remote.push("mx1.example.com", "first policy")
    workdir, apply = tmp_path / "git", Apply()

    result = run_pass(sync(remote.bare, workdir), apply)

    assert result == PassResult("applied", revision, f"v-{revision[:7]}")
    assert (workdir / "current").is_symlink()
    link = os.readlink(workdir / "current")
    assert not os.path.isabs(link) and link.startswith(f"releases/{revision[:12]}-") and link.endswith("/policies")
    assert (workdir / "current" / "gateway.yaml").read_text() == "hostname: mx1.example.com\n"
    ((policy_dir, given, text),) = apply.calls
    assert (given, text) == (revision, "hostname: mx1.example.com\n")
    assert policy_dir.resolve() == (workdir / "current").resolve()
    assert releases(workdir) == [Path(link).parent.name]
    state = sync_state(workdir)
    assert (state["applied"], state["applied_version"], state["attempt_result"]) == (
        revision, f"v-{revision[:7]}", "applied")


def test_a_new_commit_is_applied_and_swapped_in(tmp_path: Path, remote: Remote) -> None:
    first = remote.push("mx1.example.com", "first policy")
    workdir, apply = tmp_path / "git", Apply()
    git = sync(remote.bare, workdir)
    run_pass(git, apply)
    old_link = os.readlink(workdir / "current")

    second = remote.push("mx2.example.com", "new hostname")
    result = run_pass(git, apply)

    assert second != first
    assert result == PassResult("applied", second, f"v-{second[:7]}")
    new_link = os.readlink(workdir / "current")
    assert new_link != old_link and new_link.startswith(f"releases/{second[:12]}-")
    assert (workdir / "current" / "gateway.yaml").read_text() == "hostname: mx2.example.com\n"
    assert (workdir / old_link / "gateway.yaml").read_text() == "hostname: mx1.example.com\n"  # kept, not current
    assert len(releases(workdir)) == 2
    assert [call[1] for call in apply.calls] == [first, second]
    assert sync_state(workdir)["applied"] == second


def test_an_unchanged_branch_neither_applies_nor_swaps(tmp_path: Path, remote: Remote) -> None:
    revision = remote.push("mx1.example.com", "first policy")
    workdir, apply = tmp_path / "git", Apply()
    run_pass(sync(remote.bare, workdir), apply)
    link, before = os.readlink(workdir / "current"), releases(workdir)

    again = run_pass(sync(remote.bare, workdir), apply)  # a restart: the state file is read back

    assert again == PassResult("unchanged", revision, f"v-{revision[:7]}")
    assert len(apply.calls) == 1
    assert os.readlink(workdir / "current") == link and releases(workdir) == before


@pytest.mark.parametrize(("broken", "said"), [("remote", "Could not read from remote repository"),
                                             ("branch", "couldn't find remote ref refs/heads/nope")])
def test_a_failed_fetch_keeps_the_current_release(tmp_path: Path, remote: Remote, broken: str, said: str) -> None:
    revision = remote.push("mx1.example.com", "first policy")
    workdir, apply = tmp_path / "git", Apply()
    run_pass(sync(remote.bare, workdir), apply)
    link = os.readlink(workdir / "current")
    remote.push("mx2.example.com", "not fetched")

    bad = sync(tmp_path / "no-such-remote.git", workdir) if broken == "remote" else sync(remote.bare, workdir, "nope")
    result = run_pass(bad, apply)

    assert (result.outcome, result.revision) == ("fetch-failed", None)
    (problem,) = result.problems
    assert "fatal:" in problem and said.lower() in problem.lower(), problem
    assert len(apply.calls) == 1  # nothing was handed to apply
    assert os.readlink(workdir / "current") == link
    assert (workdir / "current" / "gateway.yaml").read_text() == "hostname: mx1.example.com\n"
    state = sync_state(workdir)
    assert (state["applied"], state["attempt_result"], state["failures"]) == (revision, "fetch-failed", 1)


def test_a_rejected_commit_keeps_the_current_release_and_is_not_retried_until_forced(
    tmp_path: Path, remote: Remote
) -> None:
    good = remote.push("mx1.example.com", "first policy")
    workdir = tmp_path / "git"
    git = sync(remote.bare, workdir)
    run_pass(git, Apply())
    link, kept = os.readlink(workdir / "current"), releases(workdir)
    bad = remote.push("mx2.example.com", "refused")

    refusing = Apply(ok=False)
    rejected = run_pass(git, refusing)
    assert (rejected.outcome, rejected.revision) == ("rejected", bad)
    assert rejected.problems == ("gateway.yaml:1:1: error: refused by the test",)
    assert os.readlink(workdir / "current") == link and releases(workdir) == kept  # its release was removed
    assert (sync_state(workdir)["applied"], sync_state(workdir)["attempted"]) == (good, bad)

    skipped = run_pass(sync(remote.bare, workdir), refusing)  # not even after a restart
    assert (skipped.outcome, skipped.revision, len(refusing.calls)) == ("skipped", bad, 1)

    forced = run_pass(git, Apply(), force=True)
    assert forced == PassResult("applied", bad, f"v-{bad[:7]}")
    assert (workdir / "current" / "gateway.yaml").read_text() == "hostname: mx2.example.com\n"


def test_old_releases_are_pruned_but_never_the_current_one(tmp_path: Path, remote: Remote) -> None:
    workdir, apply = tmp_path / "git", Apply()
    git = sync(remote.bare, workdir)
    for n in range(KEEP_RELEASES + 2):
        remote.push(f"mx{n}.example.com", f"policy {n}")
        assert run_pass(git, apply).outcome == "applied"

    assert len(releases(workdir)) == KEEP_RELEASES
    current = Path(os.readlink(workdir / "current")).parent.name
    assert current in releases(workdir)
    assert (workdir / "current" / "gateway.yaml").read_text() == f"hostname: mx{KEEP_RELEASES + 1}.example.com\n"
