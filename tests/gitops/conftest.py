"""Shared fixtures for the GitOps tests: a policy repository in git, a store with held and archived mail."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.policy.models import Action
from engine.store import open_store
from engine.store.base import Accepted, CopyPlan, Envelope, new_queue_id
from engine.store.sqlite import quarantine_id

REPO = Path(__file__).resolve().parents[2]
LIVEPRISM = [sys.executable, "-m", "engine"]


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True)
    return result.stdout


@pytest.fixture
def policy_repo(tmp_path: Path) -> Path:
    """A git repository holding a copy of the example policy, its features and corpus, committed on main."""
    repo = tmp_path / "repo"
    shutil.copytree(REPO / "policies", repo / "policies")
    shutil.copytree(REPO / "tests" / "corpus", repo / "tests" / "corpus")
    shutil.copytree(REPO / "tests" / "features", repo / "tests" / "features",
                    ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    git(repo, "config", "user.email", "test@liveprism.example")
    git(repo, "config", "user.name", "LivePrism test")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "example policy")
    return repo


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LIVEPRISM, *args], capture_output=True, text=True, cwd=cwd, timeout=300, check=False)


@dataclass(frozen=True)
class StoredMail:
    state: Path
    held_id: str  # quarantine id of a held copy for acme
    archived_queue_id: str  # a delivered message in the archive


def _accepted(raw: bytes, mail_from: str, rcpt: str, tenant: str, action: str, client_ip: str,
              subject: str = "") -> Accepted:
    verdict = {"action": action, "score": 0.0, "reason": "score", "hits": []}
    return Accepted(
        queue_id=new_queue_id(),
        raw=raw,
        envelope=Envelope(mail_from, (rcpt,), client_ip, "client.example", time.time() - 3600),
        subject=subject,
        policy_version="v1",
        verdict={"action": action, "tenants": {tenant: verdict}},
        copies=(CopyPlan(tenant, (rcpt,), Action(action), b"", reason="score"),),
        archive=True,
    )


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


pytest_plugins = ["tests.gitops.steps_workflow"]
