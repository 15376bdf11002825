"""`liveprism plan` on a temporary git repository: semantic diff, corpus blast radius, stored mail."""

from __future__ import annotations

import json
from pathlib import Path

from tests.gitops.conftest import StoredMail
from tests.support.processes import run_liveprism

NEW_RULE = """
  - id: lunch-invitation
    description: Lunch invitations are rejected (a test change)
    when:
      header: {name: Subject, regex: '(?i)\\blunch\\b'}
    then: {action: reject}
"""


def change_policy(repo: Path) -> None:
    """Add a rule (line 14 of acme-content.yaml), remove a list entry, raise acme's quarantine threshold."""
    rules = repo / "policies" / "rules" / "acme-content.yaml"
    rules.write_text(rules.read_text() + NEW_RULE)
    allow = repo / "policies" / "lists" / "acme-allow.yaml"
    allow.write_text(allow.read_text().replace("senders: [billing@partner.example]", "senders: []"))
    acme = repo / "policies" / "tenants" / "acme.yaml"
    acme.write_text(acme.read_text().replace("quarantine_at: 5.0", "quarantine_at: 12.0"))


def test_plan_reports_added_rule_removed_entry_and_flipped_messages(policy_repo: Path) -> None:
    change_policy(policy_repo)
    result = run_liveprism("plan", "policies", "--base", "main", "--format", "json", cwd=policy_repo)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    changes = {(c["section"], c["name"], c["kind"]): c for c in plan["changes"]}
    added = changes[("rule", "lunch-invitation", "added")]
    assert added["source"] == "policies/rules/acme-content.yaml:14"
    allow = changes[("list", "acme-allow", "changed")]
    assert allow["details"] == ["senders: -1 (billing@partner.example)"]
    acme = changes[("tenant", "acme", "changed")]
    assert "effective_scoring.quarantine_at: 5.0 -> 12.0" in acme["details"]

    flips = {f["name"]: f for f in plan["corpus"]["changed"]}
    assert flips["clean.eml"] == {"name": "clean.eml", "old": "deliver", "new": "reject",
                                  "causes": ["+lunch-invitation"], "tenant": None}
    assert flips["partner-invoice.eml"]["old"] == "deliver"
    assert flips["partner-invoice.eml"]["new"] == "tag"  # no longer allow-listed; score 5 >= tag 3
    assert "-acme-allow" in flips["partner-invoice.eml"]["causes"]
    assert flips["invoice-phish.eml"]["old"] == "quarantine" and flips["invoice-phish.eml"]["new"] == "tag"
    assert "gtube.eml" not in flips and "sextortion.eml" not in flips  # unchanged messages are not listed
    assert plan["corpus"]["replayed"] == 9


def test_plan_text_and_markdown(policy_repo: Path) -> None:
    change_policy(policy_repo)
    text = run_liveprism("plan", "policies", "--base", "main", cwd=policy_repo)
    assert text.returncode == 0, text.stderr
    assert "  clean.eml: deliver -> reject (+lunch-invitation)" in text.stdout.splitlines()
    assert "rule added: lunch-invitation  policies/rules/acme-content.yaml:14" in text.stdout
    markdown = run_liveprism("plan", "policies", "--base", "main", "--format", "markdown", cwd=policy_repo)
    assert "| rule `lunch-invitation` | added | `policies/rules/acme-content.yaml:14` |" in markdown.stdout
    assert "3 of 9 corpus messages change verdict or route" in markdown.stdout


def test_plan_replays_the_quarantine_and_the_archive(policy_repo: Path, stored_mail: StoredMail) -> None:
    change_policy(policy_repo)
    result = run_liveprism("plan", "policies", "--base", "main", "--format", "json", "--state", str(stored_mail.state),
                     cwd=policy_repo)
    assert result.returncode == 0, result.stderr
    store = json.loads(result.stdout)["store"]
    assert store["held"] == 1 and store["archived"] == 2
    assert [f["name"] for f in store["released"]] == [f"quarantine {stored_mail.held_id}"]
    assert [f["name"] for f in store["rejected"]] == [f"archive {stored_mail.archived_queue_id}"]
    assert store["summary"] == ("this change would have released 1 of 1 held messages and rejected 1 delivered "
                                "ones (of 2 archived)")


def test_plan_without_change_and_bad_ref(policy_repo: Path) -> None:
    same = run_liveprism("plan", "policies", "--base", "main", cwd=policy_repo)
    assert same.returncode == 0
    assert "policy changes: none" in same.stdout and "0 of 9 corpus messages change verdict or route" in same.stdout
    bad = run_liveprism("plan", "policies", "--base", "no-such-branch", cwd=policy_repo)
    assert bad.returncode == 2 and "unknown git ref 'no-such-branch'" in bad.stderr


def test_plan_shows_route_changes_and_the_messages_that_move(policy_repo: Path) -> None:
    tenant = policy_repo / "policies" / "tenants" / "globex.yaml"
    tenant.write_text(tenant.read_text().replace(
        "{host: 127.0.0.1, port: 2626, priority: 10, tls: opportunistic}",
        "{host: mx.globex.example, port: 25, priority: 10, tls: required}").replace(
        "domains: [globex.example, globex-corp.example]", "domains: [globex.example, globex-corp.example, globex.de]"))
    result = run_liveprism("plan", "policies", "--base", "main", cwd=policy_repo)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "      domains: +1 (globex.de)" in lines
    assert "      routes: +1 (mx.globex.example:25 (priority 10, tls required))" in lines
    assert "      routes: -1 (127.0.0.1:2626 (priority 10, tls opportunistic))" in lines
    assert "  globex-order.eml: deliver -> deliver [globex route 127.0.0.1:2626 -> mx.globex.example:25]" in lines
