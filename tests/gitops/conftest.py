"""Shared fixtures for the GitOps tests (a policy repository in git, a store with held and archived mail)
and the steps of the workflow features in features/ (repositories, commands, stored mail)."""

from __future__ import annotations

import asyncio
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pytest_bdd import given, parsers, then, when

from engine.store import open_store
from engine.store.base import Accepted
from engine.store.sqlite import quarantine_id
from tests.support.messages import accepted, copy_plan
from tests.support.policies import commit, git
from tests.support.processes import REPO, liveprism, run_liveprism


@pytest.fixture
def policy_repo(tmp_path: Path) -> Path:
    """A git repository holding a copy of the example policy, its features and corpus, committed on main."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "policies", repo / "policies")
    shutil.copytree(REPO / "tests" / "corpus", repo / "tests" / "corpus")
    shutil.copytree(REPO / "tests" / "features", repo / "tests" / "features",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    git("config", "user.email", "test@liveprism.example", cwd=repo)  # for the commits of `promote --branch`
    git("config", "user.name", "LivePrism test", cwd=repo)
    commit(repo, "example policy")
    return repo


@dataclass(frozen=True)
class StoredMail:
    state: Path
    held_id: str  # quarantine id of a held copy for acme
    archived_queue_id: str  # a delivered message in the archive


def _accepted(raw: bytes, mail_from: str, rcpt: str, tenant: str, action: str, client_ip: str,
              subject: str = "") -> Accepted:
    verdict = {"action": action, "score": 0.0, "reason": "score", "hits": []}
    return accepted(copy_plan(tenant, action, rcpt, headers=b"", hits=()), raw=raw, mail_from=mail_from,
                    client_ip=client_ip, received_at=time.time() - 3600, subject=subject,
                    verdict={"action": action, "tenants": {tenant: verdict}})


@pytest.fixture
def stored_mail(tmp_path: Path) -> StoredMail:
    """A store holding the corpus invoice phish (held for acme) and the clean lunch message (delivered)."""
    corpus = REPO / "tests" / "corpus"
    phish = _accepted((corpus / "invoice-phish.eml").read_bytes(), "accounts@vendor-billing.example",
                      "ap@acme.example", "acme", "quarantine", "198.18.5.5", "Overdue invoice 2291")
    clean = _accepted((corpus / "clean.eml").read_bytes(), "alice@example.com", "bob@acme.example", "acme",
                      "deliver", "192.0.2.1")
    state = tmp_path / "state"

    async def fill() -> None:
        store = open_store(state)
        await store.open()
        for message in (phish, clean):
            await store.accept(message)
        await store.close()

    asyncio.run(fill())
    return StoredMail(state, quarantine_id(phish.queue_id, "acme"), clean.queue_id)


# ---------------------------------------------------------------- steps of the workflow features


@dataclass
class Workflow:
    tmp: Path
    repo: Path | None = None
    state: Path | None = None
    held_id: str = ""
    before: dict[str, str] = field(default_factory=dict)
    result: subprocess.CompletedProcess[str] | None = None

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        args = shlex.split(command)
        assert args[0] == "liveprism", command
        self.result = subprocess.run(liveprism(*args[1:]), cwd=self.repo, capture_output=True, text=True,
                                     timeout=300, check=False)
        return self.result


@pytest.fixture
def workflow(tmp_path: Path) -> Workflow:
    return Workflow(tmp_path)


@given(parsers.parse('a new policy repository made by "liveprism init"'))
def new_repository(workflow: Workflow) -> None:
    workflow.repo = workflow.tmp / "new-repo"
    made = run_liveprism("init", str(workflow.repo), cwd=None)
    assert made.returncode == 0, made.stderr


@given("the example policy repository")
def example_repository(workflow: Workflow) -> None:
    repo = workflow.tmp / "repo"
    shutil.copytree(REPO / "policies", repo / "policies")
    shutil.copytree(REPO / "tests" / "corpus", repo / "tests" / "corpus")
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    commit(repo, "example")
    workflow.repo = repo


@given(parsers.parse('this rule is added to the rules of "{file}":'))
def append_rule(workflow: Workflow, file: str, docstring: str) -> None:
    """The doc string is the rule as an item of `rules:` (indented by 2 like the file's items)."""
    assert workflow.repo is not None
    path = workflow.repo / file
    path.write_text(path.read_text() + "\n" + "".join(f"  {line}\n" for line in docstring.splitlines()))


@given(parsers.parse('"{entry}" is removed from "{file}"'))
def remove_entry(workflow: Workflow, entry: str, file: str) -> None:
    assert workflow.repo is not None
    path = workflow.repo / file
    text = path.read_text()
    assert entry in text
    path.write_text(text.replace(entry, "").replace("[]", "[]").replace("[, ", "[").replace(", ]", "]"))


@given(parsers.parse('a held message for acme from "{sender}" at {ip}'))
def held_message(workflow: Workflow, sender: str, ip: str) -> None:
    raw = f"From: {sender}\r\nTo: bob@acme.example\r\nSubject: Cheap watches\r\n\r\nBuy now.\r\n".encode()
    verdict = {"action": "quarantine", "score": 7.0, "reason": "score", "hits": []}
    held = accepted(copy_plan("acme", "quarantine", "bob@acme.example", headers=b"", score=7.0, hits=()), raw=raw,
                    mail_from=sender, client_ip=ip, helo="h.example", subject="Cheap watches",
                    verdict={"action": "quarantine", "tenants": {"acme": verdict}})
    workflow.state = workflow.tmp / "state"

    async def fill() -> None:
        store = open_store(workflow.state)  # type: ignore[arg-type]
        await store.open()
        await store.accept(held)
        await store.close()

    asyncio.run(fill())
    workflow.held_id = quarantine_id(held.queue_id, "acme")


@when(parsers.parse('I run "{command}"'))
def run_command(workflow: Workflow, command: str) -> None:
    workflow.run(command)


@when(parsers.parse('I promote it with "{options}"'))
def promote(workflow: Workflow, options: str) -> None:
    assert workflow.repo is not None
    workflow.before = {str(p.relative_to(workflow.repo)): p.read_text() for p in
                       (workflow.repo / "policies").rglob("*.yaml")}
    workflow.run(f"liveprism quarantine promote {workflow.held_id} {options} --state {workflow.state}")


@then("the command succeeds")
def succeeds(workflow: Workflow) -> None:
    assert workflow.result is not None
    assert workflow.result.returncode == 0, workflow.result.stdout[-3000:] + workflow.result.stderr[-3000:]


@then(parsers.parse('the command fails saying "{text}"'))
def fails_saying(workflow: Workflow, text: str) -> None:
    assert workflow.result is not None and workflow.result.returncode != 0
    assert text in workflow.result.stdout + workflow.result.stderr


@then(parsers.parse('the output says "{text}"'))
def output_says(workflow: Workflow, text: str) -> None:
    assert workflow.result is not None
    assert text in workflow.result.stdout, workflow.result.stdout


@then(parsers.parse('"{command}" succeeds'))
def command_succeeds(workflow: Workflow, command: str) -> None:
    result = workflow.run(command)
    assert result.returncode == 0, result.stdout + result.stderr


@then(parsers.parse('in "{file}" only this line changed:'))
def only_line_changed(workflow: Workflow, file: str, datatable: list[list[str]]) -> None:
    assert workflow.repo is not None
    (_, (before, after)) = datatable
    old = workflow.before[file].splitlines(keepends=True)
    new = (workflow.repo / file).read_text().splitlines(keepends=True)
    assert len(old) == len(new)
    changed = [(a, b) for a, b in zip(old, new, strict=True) if a != b]
    assert changed == [(before + "\n", after + "\n")]
    for other, text in workflow.before.items():  # every other policy file is untouched
        if other != file:
            assert (workflow.repo / other).read_text() == text
