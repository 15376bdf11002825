"""Operating the gateway, end to end: reload under load, admin API, git sync, symlink deploys, workers.

Real peers only: `liveprism serve` processes (with their relay and worker children), the
`liveprism sink` mailbox, a load generator in its own process (tests/e2e/smtp_load.py),
git with a bare repository on disk, and HTTP to the admin listener.
"""

from __future__ import annotations

import email
import json
import os
import re
import smtplib
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import messages
from tests.support.gateway import TOKEN, TOKEN_ENV, AdminGateway, admin_settings, send
from tests.support.peers import start_sink
from tests.support.policies import commit, remote_and_clone, route, write_policy
from tests.support.processes import LOCALHOST, REPO, free_port, liveprism, stop, wait_for

PROBE_TAG = """name: probe
rules:
  - id: probe-flip
    when: {header: {name: Subject, regex: '^probe'}}
    then: {action: tag}
"""
PROBE_DELIVER = PROBE_TAG.replace("then: {action: tag}", "then: {score: 0.5}")
PROBE_INVALID = PROBE_TAG.replace("then: {action: tag}", "then: {action: explode}")


def start_ops_gateway(tmp_path: Path, procs: list[Any], sink_port: int, *, args: list[str] = (),  # type: ignore[assignment]
                      policy: Path | None = None) -> AdminGateway:
    port, admin_port = free_port(), free_port()
    root = policy or tmp_path / "policy"
    write_policy(root, port=port, extra_gateway=admin_settings(admin_port),
                 tenants={"acme": {"domains": ["acme.example"], "routes": [route(sink_port)], "rules": ["probe"]}})
    write_atomically(root / "rules" / "probe.yaml", PROBE_TAG)
    gateway = AdminGateway(root, tmp_path / "state", port, admin_port=admin_port, args=list(args))
    procs.append(gateway)
    return gateway.start()


def write_atomically(path: Path, text: str) -> None:
    """Write a temporary file and rename it over `path`: a watcher never sees half a file."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def send_probe(port: int, subject: str) -> tuple[int, str]:
    """A message with this subject (the probe rule looks at it); (code, text) of DATA or of the refusal."""
    raw = messages.message("hello\r\n", raw=True, sender="alice@example.com", to=None, subject=subject, date=None,
                           message_id=None, content_type=None)
    result: tuple[int, str] = send(port, "alice@example.com", ["bob@acme.example"], raw)["final"]
    return result


# ---------------------------------------------------------------- reload under load


@pytest.mark.parametrize("workers", ["1", "2"])
def test_fifty_reloads_under_continuous_load_lose_nothing_and_never_serve_invalid(
    tmp_path: Path, procs: list[Any], workers: str
) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_ops_gateway(tmp_path, procs, box.port, args=["--workers", workers])
    assert wait_for(lambda: gateway.http("GET", "/readyz")[0] == 200, timeout=60), gateway.http("GET", "/readyz")
    probe = gateway.policy / "rules" / "probe.yaml"
    stop_file, out_file = tmp_path / "stop-load", tmp_path / "load.json"
    load = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "e2e" / "smtp_load.py"), str(gateway.port),
         "bob@acme.example", str(stop_file), str(out_file), "4"],
        cwd=REPO,
    )
    try:
        expected: dict[str, str] = {}  # policy version -> the action it gives the probe
        invalid_seen = 0
        for round_number in range(50):
            text, action = (PROBE_DELIVER, "deliver") if round_number % 2 else (PROBE_TAG, "tag")
            if round_number % 5 == 2:  # an invalid policy in between: rejected, never served
                served_before = gateway.policy_status()["version"]
                write_atomically(probe, PROBE_INVALID)
                status, body = gateway.http("POST", "/reload", TOKEN)
                assert status == 422 and not body["applied"], body
                assert body["version"] == served_before
                assert any(re.match(r"rules/probe\.yaml:\d+:\d+: error: ", line) for line in body["problems"]), body
                last = gateway.policy_status()["last_attempt"]
                assert not last["applied"] and last["problems"] == body["problems"]
                expected.setdefault("invalid:" + body["attempted"], "never")
                invalid_seen += 1
            write_atomically(probe, text)
            status, body = gateway.http("POST", "/reload", TOKEN)
            assert status == 200 and body["applied"], body
            assert expected.setdefault(body["version"], action) == action, (expected, body)
            assert set(body["workers"].values()) == {body["version"]}, body  # every process converged
        assert len([v for v in expected.values() if v != "never"]) == 2 and invalid_seen == 10
    finally:
        stop_file.write_text("stop")
        load.wait(timeout=120)
    result = json.loads(out_file.read_text())
    assert result["failed"] == [], result["failed"][:5]
    accepted = result["accepted"]
    assert len(accepted) >= 100, f"too little load to prove anything: {len(accepted)}"
    assert wait_for(lambda: len(box.messages()) >= len(accepted), timeout=180), (len(box.messages()), len(accepted))
    delivered = [email.message_from_bytes(raw) for raw in box.messages()]
    subjects = Counter(str(message["Subject"]).removeprefix("[SPAM] ") for message in delivered)
    assert set(subjects) == set(accepted) and max(subjects.values()) == 1, "a message was lost or duplicated"
    versions_seen: Counter[str] = Counter()
    for message in delivered:
        version = str(message["X-LivePrism-Policy"])
        verdict = str(message["X-LivePrism-Verdict"])
        versions_seen[version] += 1
        assert expected.get(version) in ("tag", "deliver"), f"served a policy never applied: {version}"
        assert f"action={expected[version]};" in verdict, (version, verdict)
        assert (message["X-Spam-Flag"] == "YES") == (expected[version] == "tag")
    assert len(versions_seen) == 2, versions_seen  # the load really ran across the reloads
    print(f"workers={workers}: {len(accepted)} transactions across 60 reload attempts, versions {dict(versions_seen)}")


# ---------------------------------------------------------------- admin API, SIGHUP, liveprism reload


def test_admin_api_tokens_policy_diagnostics_sighup_and_reload_command(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_ops_gateway(tmp_path, procs, box.port)
    assert gateway.http("GET", "/healthz")[0] == 200
    assert wait_for(lambda: gateway.http("GET", "/readyz")[0] == 200, timeout=30), gateway.http("GET", "/readyz")
    assert gateway.http("POST", "/reload")[0] == 401
    assert gateway.http("POST", "/reload", "wrong-token")[0] == 403
    status, body = gateway.http("POST", "/reload", TOKEN)
    assert status == 200 and body["applied"] and body["version"] == gateway.policy_status()["version"]

    # liveprism reload: exit 1 with FILE:LINE:COL for an invalid policy, nothing served changes
    before = gateway.policy_status()["version"]
    write_atomically(gateway.policy / "rules" / "probe.yaml", PROBE_INVALID)
    env = {**os.environ, TOKEN_ENV: TOKEN}
    done = subprocess.run(liveprism("reload", str(gateway.policy)), cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 1, done
    assert re.search(r"rules/probe\.yaml:\d+:\d+: error: action: ", done.stdout), done.stdout
    assert gateway.policy_status()["version"] == before
    assert send_probe(gateway.port, "probe one")[0] == 250

    # SIGHUP takes the same path: the fixed policy is served
    write_atomically(gateway.policy / "rules" / "probe.yaml", PROBE_DELIVER)
    assert gateway.proc is not None
    os.kill(gateway.proc.pid, 1)
    assert wait_for(lambda: gateway.policy_status()["version"] != before, timeout=60)
    after = gateway.policy_status()["version"]
    done = subprocess.run(liveprism("reload", str(gateway.policy)), cwd=REPO, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and f"applied: policy {after}" in done.stdout, done
    done = subprocess.run(liveprism("reload", str(gateway.policy)), cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, TOKEN_ENV: "wrong"}, timeout=300)
    assert done.returncode == 2 and "403" in done.stderr, done


# ---------------------------------------------------------------- workers


def test_two_workers_converge_on_reload_and_one_scrape_covers_both(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_ops_gateway(tmp_path, procs, box.port, args=["--workers", "2"])
    assert wait_for(lambda: gateway.http("GET", "/readyz")[0] == 200, timeout=60), gateway.http("GET", "/readyz")
    first = gateway.policy_status()
    assert set(first["workers"]) == {"0", "1"} and set(first["workers"].values()) == {first["version"]}

    write_atomically(gateway.policy / "rules" / "probe.yaml", PROBE_DELIVER)
    assert gateway.http("POST", "/reload")[0] == 401
    assert gateway.http("POST", "/reload", TOKEN + "x")[0] == 403
    status, body = gateway.http("POST", "/reload", TOKEN)
    assert status == 200 and body["applied"], body
    new = body["version"]
    assert new != first["version"] and body["workers"] == {"0": new, "1": new}

    # Both processes answer SMTP, and both decide by the new version (the log says which process).
    sent = 0
    for _ in range(20):
        sent_now = 0
        for number in range(10):
            code, _ = send_probe(gateway.port, f"probe {sent + number}")
            assert code == 250
            sent_now += 1
        sent += sent_now
        lines = [line for line in gateway.log().splitlines() if "liveprism.txn" in line and f"policy={new}" in line]
        if any("[worker 1 " in line for line in lines) and any("[worker" not in line for line in lines):
            break
    assert any("[worker 1 " in line for line in lines), "worker 1 took no connection"
    assert any("[worker" not in line for line in lines), "the parent took no connection"
    assert not any("policy=" + first["version"] in line for line in lines)

    with smtplib.SMTP(LOCALHOST, gateway.port, local_hostname="client.test.example", timeout=60) as smtp:
        smtp.ehlo()
        smtp.mail("alice@example.com")
        assert smtp.rcpt("someone@nowhere.example")[0] == 550  # no open relay

    # One scrape covers every process.
    status, text = gateway.http("GET", "/metrics")
    assert status == 200
    families = {family.name: family for family in text_string_to_metric_families(text)}
    messages = sum(s.value for s in families["liveprism_messages"].samples if s.name == "liveprism_messages_total")
    assert messages == sent
    workers = {s.labels["worker"]: s.labels["version"] for s in families["liveprism_worker_policy_info"].samples}
    assert workers == {"0": new, "1": new}
    info = families["liveprism_policy_info"].samples[0]
    assert info.labels["version"] == new and info.value == 1
    sessions = sum(s.value for s in families["liveprism_smtp_sessions"].samples if s.name.endswith("_total"))
    assert sessions >= sent
    assert families["liveprism_reload_attempts"].samples[0].value >= 1
    replies = {s.labels["code_class"]: s.value for s in families["liveprism_smtp_replies"].samples
               if s.name.endswith("_total")}
    assert replies["2xx"] >= sent * 4  # greeting-less count: EHLO, MAIL, RCPT, DATA end (+QUIT)
    assert replies["5xx"] == 1
    refusals = {(s.labels["stage"], s.labels["reason"]): s.value for s in families["liveprism_refusals"].samples
                if s.name.endswith("_total")}
    assert refusals == {("rcpt", "relaying-denied"): 1}
    queue = {s.labels["state"]: s.value for s in families["liveprism_queue_deliveries"].samples}
    assert set(queue) == {"queued", "inflight"} and "liveprism_archive_messages" in families
    assert wait_for(lambda: len(box.messages()) == sent, timeout=60)


# ---------------------------------------------------------------- git sync and symlink deploys


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, Path]:
    """A bare repository (the "remote") and a clone to push from, on main."""
    return remote_and_clone(tmp_path)


def test_git_sync_applies_pushes_never_serves_or_retries_a_broken_commit(
    tmp_path: Path, procs: list[Any], repo: tuple[Path, Path]
) -> None:
    bare, work = repo
    box = start_sink(tmp_path, procs)
    port, admin_port = free_port(), free_port()
    policy = work / "policies"
    write_policy(policy, port=port, extra_gateway=admin_settings(admin_port),
                 tenants={"acme": {"domains": ["acme.example"], "routes": [route(box.port)], "rules": ["probe"]}})
    subprocess.run(["rm", "-rf", str(policy / ".git")], check=True)  # write_policy makes it a repo of its own
    (policy / "rules" / "probe.yaml").write_text(PROBE_DELIVER)
    first = commit(work, "policy", push="main")
    gateway = AdminGateway(tmp_path / "unused", tmp_path / "state", port, admin_port=admin_port,
                         args=["--git-remote", str(bare), "--branch", "main", "--git-path", "policies",
                               "--interval", "1"])
    procs.append(gateway)
    gateway.start()
    status = gateway.policy_status()
    assert status["git"]["applied"] == first and status["version"].endswith(f"+git.{first[:12]}")
    assert send_probe(gateway.port, "probe before")[0] == 250

    # a pushed rule goes live
    (policy / "rules" / "probe.yaml").write_text(PROBE_DELIVER.replace("then: {score: 0.5}", "then: {action: reject}"))
    second = commit(work, "reject probes", push="main")
    assert wait_for(lambda: gateway.policy_status()["git"]["applied"] == second, timeout=60), gateway.log()
    assert send_probe(gateway.port, "probe after")[0] == 550

    # a broken commit: never served, diagnostics shown, not retried while the branch stays
    (policy / "rules" / "probe.yaml").write_text(PROBE_INVALID)
    broken = commit(work, "broken", push="main")
    assert wait_for(lambda: gateway.policy_status()["git"]["attempted"] == broken, timeout=60), gateway.log()
    status = gateway.policy_status()
    assert status["git"]["applied"] == second and status["git"]["attempt_result"] == "rejected"
    assert status["version"].endswith(f"+git.{second[:12]}")
    assert any(re.match(r"rules/probe\.yaml:\d+:\d+: error: ", p) for p in status["git"]["problems"]), status
    rejections = f"commit {broken[:12]} of main rejected"
    wait_for(lambda: False, timeout=4)  # four more sync intervals
    assert gateway.log().count(rejections) == 1, gateway.log()
    assert send_probe(gateway.port, "probe still rejected")[0] == 550
    _, text = gateway.http("GET", "/metrics")
    families = {family.name: family for family in text_string_to_metric_families(text)}
    sync_info = families["liveprism_git_sync_info"].samples[0].labels
    assert sync_info == {"applied": second, "attempted": broken, "attempt_result": "rejected"}

    # the branch moves on: the fix is applied
    (policy / "rules" / "probe.yaml").write_text(PROBE_DELIVER)
    fixed = commit(work, "fix", push="main")
    assert wait_for(lambda: gateway.policy_status()["git"]["applied"] == fixed, timeout=60), gateway.log()
    assert send_probe(gateway.port, "probe fixed")[0] == 250


def test_symlink_deploys_and_sync_command_are_picked_up(
    tmp_path: Path, procs: list[Any], repo: tuple[Path, Path]
) -> None:
    bare, work = repo
    box = start_sink(tmp_path, procs)
    port, admin_port = free_port(), free_port()
    releases = tmp_path / "releases"
    for name, probe in (("1", PROBE_DELIVER), ("2", PROBE_DELIVER.replace("then: {score: 0.5}",
                                                                           "then: {action: reject}"))):
        write_policy(releases / name, port=port, extra_gateway=admin_settings(admin_port),
                     tenants={"acme": {"domains": ["acme.example"], "routes": [route(box.port)], "rules": ["probe"]}})
        (releases / name / "rules" / "probe.yaml").write_text(probe)
    link = tmp_path / "policies"
    link.symlink_to("releases/1")
    gateway = AdminGateway(link, tmp_path / "state", port, admin_port=admin_port)
    procs.append(gateway)
    gateway.start()
    assert send_probe(gateway.port, "probe one")[0] == 250
    subprocess.run(["ln", "-sfn", "releases/2", str(link)], check=True)
    assert wait_for(lambda: gateway.policy_status()["directory"] == str((releases / "2").resolve()), timeout=30)
    assert send_probe(gateway.port, "probe two")[0] == 550

    # `liveprism sync` into a deploy dir; the gateway serving DEPLOY/current follows its swaps
    policy = work / "policies"
    subprocess.run(["cp", "-r", str(releases / "1"), str(policy)], check=True)
    subprocess.run(["rm", "-rf", str(policy / ".git")], check=True)
    good = commit(work, "policy", push="main")
    deploy = tmp_path / "deploy"
    sync = liveprism("sync", "--git-remote", str(bare), "--into", str(deploy))
    done = subprocess.run(sync, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and f"applied: commit {good[:12]}" in done.stdout, done
    stop(gateway.proc)  # type: ignore[arg-type]
    gateway.policy = deploy / "current"
    gateway.start()
    assert gateway.policy_status()["version"].endswith(f"+git.{good[:12]}")
    assert send_probe(gateway.port, "probe three")[0] == 250
    (policy / "rules" / "probe.yaml").write_text(PROBE_INVALID)
    broken = commit(work, "broken", push="main")
    for _ in range(2):  # rejected, then not retried (exit 1 both times); current unchanged
        done = subprocess.run(sync, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 1 and broken[:12] in done.stderr, done
    assert "not retried" in done.stderr
    (policy / "rules" / "probe.yaml").write_text(PROBE_DELIVER.replace("then: {score: 0.5}", "then: {action: reject}"))
    fixed = commit(work, "reject probes", push="main")
    done = subprocess.run(sync, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done
    assert wait_for(lambda: gateway.policy_status()["version"].endswith(f"+git.{fixed[:12]}"), timeout=30)
    assert send_probe(gateway.port, "probe four")[0] == 550
