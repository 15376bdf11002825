"""The reload path: incremental loading (same result as load_policy, only changed files parsed),
LivePolicy.reload bookkeeping, the `admin` settings model, the admin HTTP API and the metrics."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from engine import metrics
from engine.admin.server import AdminContext, build_app
from engine.graph.build.incremental import IncrementalLoader
from engine.graph.build.live import LivePolicy, ReloadResult
from engine.graph.transaction import simulate
from engine.graph.verdict import Decision, Hit, Reply, TenantVerdict
from engine.policy.loader import PolicySource, load_policy
from engine.policy.models import Action, AdminSettings
from engine.policy.validate import validate_policy
from tests.support.policies import GATEWAY, copy_example, fingerprint, write_policy

# ---------------------------------------------------------------- IncrementalLoader


def test_incremental_load_equals_load_policy_and_parses_only_changed_files(tmp_path: Path) -> None:
    root = copy_example(tmp_path / "policy")
    loader = IncrementalLoader()
    assert fingerprint(loader.load(root)) == fingerprint(load_policy(root))
    files = loader.last.files
    assert loader.last.parsed == files

    assert fingerprint(loader.load(root)) == fingerprint(load_policy(root))
    assert loader.last.parsed == 0  # nothing changed: nothing parsed

    rules = root / "rules" / "global-content.yaml"
    rules.write_text(rules.read_text() + "\n# a comment\n")
    assert fingerprint(loader.load(root)) == fingerprint(load_policy(root))
    assert loader.last.parsed == 1


@pytest.mark.parametrize(
    ("rel", "text"),
    [
        ("tenants/broken.yaml", "name: [unclosed\n"),  # YAML syntax error
        ("tenants/acme.yaml", "name: acme\ndomains: [acme.example]\nroutes: 3\n"),  # schema error
        ("lists/latin1.yaml", "name: x\naction: block\nsenders: [\xe9@x.example]\n"),  # not UTF-8 (below)
        ("tenants/crlf.yaml", "name: crlf\r\ndomains: [crlf.example]\r\nroutes: [{host: h.example}]\r\n"),
        ("gateway.yml", GATEWAY),  # a second gateway file: ignored with a warning
    ],
)
def test_incremental_load_reports_like_load_policy(tmp_path: Path, rel: str, text: str) -> None:
    root = write_policy(tmp_path, {})
    loader = IncrementalLoader()
    loader.load(root)
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("latin-1") if "latin1" in rel else text.encode())
    assert fingerprint(loader.load(root)) == fingerprint(load_policy(root))


def test_incremental_load_refuses_a_symlink_out_of_the_directory_like_load_policy(tmp_path: Path) -> None:
    root = write_policy(tmp_path / "policy", {})
    (tmp_path / "elsewhere.yaml").write_text("name: evil\ndomains: [evil.example]\n")
    (root / "tenants" / "evil.yaml").symlink_to(tmp_path / "elsewhere.yaml")
    incremental = IncrementalLoader().load(root)
    assert fingerprint(incremental) == fingerprint(load_policy(root))
    assert any("outside the policy directory" in p.message for p in incremental.problems)


def test_incremental_load_without_gateway(tmp_path: Path) -> None:
    root = write_policy(tmp_path, {"tenants/acme.yaml": "name: acme\n"}, base=False)
    assert fingerprint(IncrementalLoader().load(root)) == fingerprint(load_policy(root))


# ---------------------------------------------------------------- LivePolicy.reload


def live_policy(root: Path) -> LivePolicy:
    result, _ = IncrementalLoader().load_graph(root)
    assert result.graph is not None
    return LivePolicy(root, result.graph)


def test_reload_keeps_serving_on_invalid_policy_and_records_the_problems(tmp_path: Path) -> None:
    root = copy_example(tmp_path / "policy")
    live = live_policy(root)
    served = live.graph
    swapped: list[str] = []
    live.on_reload.append(lambda graph: swapped.append(graph.version))

    async def scenario() -> tuple[ReloadResult, ReloadResult, ReloadResult]:
        unchanged = await live.reload("api")
        (root / "tenants" / "globex.yaml").write_text("name: globex\ndomains: [globex.example]\nroutes: nope\n")
        rejected = await live.reload("api")
        (root / "tenants" / "globex.yaml").unlink()
        applied = await live.reload("watch")
        return unchanged, rejected, applied

    unchanged, rejected, applied = asyncio.run(scenario())
    assert unchanged.applied and unchanged.served == served.version and unchanged.hooks == {"unchanged": True}
    assert not rejected.applied and rejected.served == served.version
    assert rejected.attempt.version and rejected.attempt.version != served.version
    problems = rejected.attempt.problems
    assert problems and all(p.startswith("tenants/globex.yaml:3:") for p in problems)
    assert applied.applied and live.graph.version == applied.served != served.version
    assert swapped == [applied.served]  # the invalid policy never reached a callback
    assert (live.attempts, live.failures) == (3, 1)
    assert live.status()["last_attempt"]["trigger"] == "watch"


# ---------------------------------------------------------------- admin settings


def test_admin_token_must_be_a_reference() -> None:
    assert AdminSettings(token="env:LP_TOKEN").address == "127.0.0.1"
    assert AdminSettings(token="./secrets/admin-token").port == 8025
    with pytest.raises(ValidationError, match="never written inline"):
        AdminSettings(token="s3cr3t-token")
    with pytest.raises(ValidationError, match="env:NAME"):
        AdminSettings(token="env:")


def test_validate_refuses_an_inline_admin_token_at_its_line(tmp_path: Path) -> None:
    root = write_policy(tmp_path, {"gateway.yaml": GATEWAY + "admin:\n  port: 8025\n  token: hunter2\n"})
    problems = [p.format_text() for p in validate_policy(load_policy(root))]
    assert len(problems) == 1 and problems[0].startswith("gateway.yaml:4:3: error: token: ")


# ---------------------------------------------------------------- admin API and metrics


def decision() -> Decision:
    verdict = TenantVerdict(
        tenant="acme", recipients=("bob@acme.example",), action=Action.tag, score=4.0,
        hits=(Hit("probe-rule", "rule", 4.0),), routes=(), reason="score", stage="data",
    )
    return Decision(Action.tag, Reply(250, "2.0.0", "ok"), {"acme": verdict}, policy_version="v1")


def test_admin_api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = copy_example(tmp_path / "policy")
    (root / "gateway.yaml").write_text((root / "gateway.yaml").read_text() + "admin: {token: env:LP_UNIT_TOKEN}\n")
    live = live_policy(root)
    ready: list[str] = []

    async def reload(trigger: str) -> ReloadResult:
        return await live.reload(trigger)

    async def not_ready() -> list[str]:
        return ready

    context = AdminContext(policy=live, reload=reload, ready=not_ready, workers=lambda: {"0": live.graph.version},
                           git=lambda: None)
    metrics.TransactionObserver().observe(decision(), "inbound", 0.02)

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with TestClient(TestServer(build_app(context))) as client:
            seen["healthz"] = (await client.get("/healthz")).status
            seen["ready"] = (await client.get("/readyz")).status
            ready.append("relay: the delivery process is not running")
            response = await client.get("/readyz")
            seen["not_ready"] = (response.status, await response.json())
            seen["no_env"] = (await client.post("/reload", headers={"Authorization": "Bearer x"})).status
            monkeypatch.setenv("LP_UNIT_TOKEN", "right")
            seen["missing"] = (await client.post("/reload")).status
            seen["wrong"] = (await client.post("/reload", headers={"Authorization": "Bearer wrong"})).status
            response = await client.post("/reload", headers={"Authorization": "Bearer right"})
            seen["ok"] = (response.status, await response.json())
            (root / "tenants" / "globex.yaml").write_text("name: [\n")
            response = await client.post("/reload", headers={"Authorization": "Bearer right"})
            seen["bad"] = (response.status, await response.json())
            seen["policy"] = await (await client.get("/policy")).json()
            seen["metrics"] = await (await client.get("/metrics")).text()
        return seen

    seen = asyncio.run(scenario())
    assert seen["healthz"] == 200 and seen["ready"] == 200
    assert seen["not_ready"] == (503, {"ready": False, "reasons": ["relay: the delivery process is not running"]})
    assert (seen["no_env"], seen["missing"], seen["wrong"]) == (503, 401, 403)
    assert seen["ok"][0] == 200 and seen["ok"][1]["applied"] and seen["ok"][1]["version"] == live.graph.version
    status, body = seen["bad"]
    assert status == 422 and not body["applied"] and body["version"] == live.graph.version
    assert body["problems"][0].startswith("tenants/globex.yaml:2:1: error: ")
    assert seen["policy"]["last_attempt"]["problems"] == body["problems"]
    assert seen["policy"]["version"] == live.graph.version and seen["policy"]["workers"] == {"0": live.graph.version}

    families = {family.name: family for family in text_string_to_metric_families(seen["metrics"])}
    messages = [s for s in families["liveprism_messages"].samples if s.name == "liveprism_messages_total"]
    assert any(s.labels == {"direction": "inbound", "tenant": "acme", "action": "tag", "reason": "score"}
               and s.value >= 1 for s in messages)
    hits = [s for s in families["liveprism_hits"].samples if s.name == "liveprism_hits_total"]
    assert any(s.labels == {"id": "probe-rule", "kind": "rule"} for s in hits)
    info = families["liveprism_policy_info"].samples[0]
    assert info.labels["version"] == live.graph.version and info.value == 1
    assert families["liveprism_reload_attempts"].samples[0].value == 2
    assert families["liveprism_reload_failures"].samples[0].value == 1
    latency = [s for s in families["liveprism_accept_latency_seconds"].samples if s.name.endswith("_count")]
    assert latency[0].value >= 1


# ---------------------------------------------------------------- incremental compile


MESSAGES = [
    b"From: a@example.com\r\nSubject: URGENT payment today\r\n\r\nPlease verify your password here.\r\n",
    b"From: a@example.com\r\nSubject: Quarterly report\r\n\r\nmeeting budget report wire transfer\r\n",
    b"From: a@example.com\r\nSubject: new rule probe\r\n\r\nlayered index probe gift card\r\n",
    b"From: a@example.com\r\nSubject: hello\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
    b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=x.pdf.exe\r\n\r\n"
    b"MZ\r\n--b--\r\n",
]
EXTRA_RULES = """name: extra
rules:
  - id: layered-probe
    when: {any: [{header: {name: Subject, regex: 'rule probe'}}, {body: {contains: [layered]}}]}
    then: {score: 2.0}
  - id: not-a-probe
    when: {not: {body: {contains: [nothing-like-this]}}}
    then: {score: 0.5}
"""


def test_layered_content_index_matches_a_fresh_compile(tmp_path: Path) -> None:
    from engine.graph.build.compiler import compile_policy
    from engine.mime.view import parse_message

    root = copy_example(tmp_path / "policy")
    loader = IncrementalLoader()

    def both() -> tuple[Any, Any]:
        result, _ = loader.load_graph(root)
        assert result.graph is not None, result.problems
        return result.graph, compile_policy(load_policy(root))

    edits = [
        lambda: None,
        lambda: (root / "rules" / "extra.yaml").write_text(EXTRA_RULES),  # a new file
        lambda: (root / "tenants" / "acme.yaml").write_text(
            (root / "tenants" / "acme.yaml").read_text().replace("rules: [", "rules: [extra, ")),
        lambda: (root / "rules" / "global-content.yaml").write_text(  # an edited file (fewer rules)
            (root / "rules" / "global-content.yaml").read_text().split("\n  - id: double-extension")[0] + "\n"),
        lambda: (root / "rules" / "extra.yaml").write_text(EXTRA_RULES.replace("score: 2.0", "action: reject")),
    ]
    layered_seen = False
    for edit in edits:
        edit()
        incremental, fresh = both()
        layered_seen = layered_seen or loader.indexes.layered
        assert incremental.version == fresh.version
        assert [r.id for r in incremental.rules] == [r.id for r in fresh.rules]
        for raw in MESSAGES:
            view = parse_message(raw)
            assert incremental._content.matching_rules(view) == fresh._content.matching_rules(view)
            args: dict[str, Any] = {"raw": raw, "mail_from": "a@example.com", "rcpts": ["bob@acme.example"],
                                    "client_ip": "192.0.2.1"}
            assert simulate(incremental, **args).decision == simulate(fresh, **args).decision
    assert layered_seen, "no edit went through the layered index"


def test_a_write_during_the_load_never_labels_old_content_with_the_new_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version must be the hash of what was parsed: a write landing between the read and the
    hash makes the loader read again."""
    import engine.graph.build.incremental as incremental

    root = copy_example(tmp_path / "policy")
    acme = root / "tenants" / "acme.yaml"
    original = acme.read_text()
    real_load_files = incremental.IncrementalLoader._load_files
    writes = iter([original.replace("acme.example", "acme-renamed.example")])

    def load_files_then_write(self: Any, directory: Path, files: list[str]) -> PolicySource:
        source = real_load_files(self, directory, files)
        text = next(writes, None)
        if text is not None:  # once: right after the texts were read, before the hash is taken
            acme.write_text(text)
        return source

    monkeypatch.setattr(incremental.IncrementalLoader, "_load_files", load_files_then_write)
    source = IncrementalLoader().load(root)
    assert source.content_hash == load_policy(root).content_hash
    assert fingerprint(source) == fingerprint(load_policy(root))
