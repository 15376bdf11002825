"""`liveprism quarantine …` against a real store (as a non-owner, like the running gateway would allow)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli.quarantine_cmd import parse_since, quarantine_app
from engine.graph.verdict import Hit
from engine.store import open_store
from engine.store.base import Accepted
from engine.store.sqlite import quarantine_id
from tests.support.messages import accepted, copy_plan
from tests.support.processes import invoke

RAW = b"From: spammer@bad.example\r\nSubject: Overdue invoice\r\n\r\nPay now.\r\n"
runner = CliRunner()


def held(tenant: str, rcpt: str, age_days: float, score: float) -> Accepted:
    hit = Hit("invoice-phish", "rule", 6.0, None, "rules/x.yaml:3")
    return accepted(
        copy_plan(tenant, "quarantine", rcpt, headers=b"X-LivePrism-Action: quarantine\r\n", score=score, hits=(hit,)),
        raw=RAW, mail_from="spammer@bad.example", client_ip="203.0.113.9", helo="bad.example",
        received_at=time.time() - age_days * 86_400, subject="Overdue invoice",
        verdict={"action": "quarantine", "score": score},
    )


@pytest.fixture
def state(tmp_path: Path) -> tuple[Path, list[str]]:
    directory = tmp_path / "state"
    msgs = [
        held("acme", "bob@acme.example", 3, 7.5),
        held("beta", "carol@beta.example", 0.1, 9.0),
    ]

    async def fill() -> None:
        store = open_store(directory)
        await store.open()
        for msg in msgs:
            await store.accept(msg)
        await store.close()

    asyncio.run(fill())
    return directory, [quarantine_id(msgs[0].queue_id, "acme"), quarantine_id(msgs[1].queue_id, "beta")]


def test_list_text_json_and_filters(state: tuple[Path, list[str]]) -> None:
    directory, ids = state
    code, out = invoke(quarantine_app, "list", "--state", str(directory))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("ID") and "SUBJECT" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ids
    assert "Overdue invoice" in lines[1] and "7.5" in lines[1] and "spammer@bad.example" in lines[1]

    code, out = invoke(quarantine_app, "list", "--state", str(directory), "--json", "--tenant", "beta")
    assert code == 0
    (entry,) = json.loads(out)
    assert entry["id"] == ids[1] and entry["recipients"] == ["carol@beta.example"] and entry["score"] == 9.0
    assert entry["hits"][0]["id"] == "invoice-phish" and entry["status"] == "held"

    code, out = invoke(quarantine_app, "list", "--state", str(directory), "--since", "24h", "--json")
    assert [e["id"] for e in json.loads(out)] == [ids[1]]
    code, out = invoke(quarantine_app, "list", "--state", str(directory), "--since", "2000-01-01", "--json")
    assert [e["id"] for e in json.loads(out)] == ids
    code, out = invoke(quarantine_app, "list", "--state", str(directory), "--since", "yesterday")
    assert code == 2 and "expected 7d" in out


def test_show_and_show_raw(state: tuple[Path, list[str]]) -> None:
    directory, ids = state
    code, out = invoke(quarantine_app, "show", ids[0], "--state", str(directory))
    assert code == 0
    assert "tenant:      acme" in out and "reason:      score" in out
    assert "id=invoice-phish" in out and "source=rules/x.yaml:3" in out
    assert "Subject: Overdue invoice" in out and "Pay now." not in out
    result = runner.invoke(quarantine_app, ["show", ids[0], "--raw", "--state", str(directory)])
    assert result.exit_code == 0 and result.stdout_bytes == RAW
    code, out = invoke(quarantine_app, "show", "NOPE-acme", "--state", str(directory))
    assert code == 1 and "no quarantine entry NOPE-acme" in out


def test_release_and_delete(state: tuple[Path, list[str]]) -> None:
    directory, ids = state
    code, out = invoke(quarantine_app, "release", ids[0], "--state", str(directory))
    assert code == 0 and out.strip() == f"released {ids[0]} (acme: bob@acme.example)"
    code, out = invoke(quarantine_app, "release", ids[0], "--state", str(directory))
    assert code == 1 and "no longer held" in out
    code, out = invoke(quarantine_app, "delete", ids[1], "--state", str(directory))
    assert code == 0 and out.startswith(f"deleted {ids[1]}")
    code, out = invoke(quarantine_app, "list", "--state", str(directory))
    assert code == 0 and out.strip() == "no quarantined mail"
    code, out = invoke(quarantine_app, "list", "--state", str(directory), "--status", "all", "--json")
    assert [(e["id"], e["status"]) for e in json.loads(out)] == [(ids[0], "released"), (ids[1], "deleted")]

    async def queued() -> int:
        store = open_store(directory, owner=False)
        await store.open()
        summary = await store.queue_summary()
        await store.close()
        return summary.queued

    assert asyncio.run(queued()) == 1  # the release is a delivery the gateway's relay will pick up


def test_state_dir_from_policy_gateway_yaml(
    state: tuple[Path, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, ids = state
    policy = tmp_path / "policies"
    policy.mkdir()
    (policy / "gateway.yaml").write_text("hostname: mxpath.example.com\nstorage: {path: state}\n")
    monkeypatch.chdir(tmp_path)  # storage.path is relative to the working directory
    code, out = invoke(quarantine_app, "list", "--policy", str(policy), "--json")
    assert code == 0, out
    assert [e["id"] for e in json.loads(out)] == ids
    code, out = invoke(quarantine_app, "list", str(policy), "--json")  # DESIGN.md: DIR as a positional argument
    assert code == 0, out
    assert [e["id"] for e in json.loads(out)] == ids
    code, out = invoke(quarantine_app, "show", ids[0], str(policy))
    assert code == 0 and ids[0] in out, out


def test_missing_store_or_gateway_is_an_error(tmp_path: Path) -> None:
    code, out = invoke(quarantine_app, "list", "--state", str(tmp_path / "nothing"))
    assert code == 1 and "no LivePrism store" in out
    assert not (tmp_path / "nothing").exists()  # never created by a review command
    code, out = invoke(quarantine_app, "list", "--policy", str(tmp_path / "no-policy"))
    assert code == 1 and "pass --state" in out


def test_parse_since() -> None:
    now = 1_800_000_000.0
    assert parse_since("7d", now) == now - 7 * 86_400
    assert parse_since("24h", now) == now - 86_400
    assert parse_since("30m", now) == now - 1800
    assert parse_since("2027-01-15T10:00:00+01:00", now) == 1_800_003_600.0
    assert parse_since("2027-01-15T10:00", now) == 1_800_007_200.0  # UTC when no offset is given
