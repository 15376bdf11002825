"""`liveprism quarantine promote`: in-place YAML edits that leave every other byte as it was."""

from __future__ import annotations

import re
from pathlib import Path

import re2
from typer.testing import CliRunner

from engine.cli.quarantine_cmd import quarantine_app
from engine.gitops.yaml_edit import Edited, EditRefused, append_block, append_scalar
from tests.gitops.conftest import StoredMail
from tests.support.policies import git
from tests.support.processes import run_liveprism

runner = CliRunner()


def promote(repo: Path, stored: StoredMail, *args: str) -> tuple[int, str]:
    result = runner.invoke(
        quarantine_app,
        ["promote", stored.held_id, "--state", str(stored.state), "--policy", str(repo / "policies"), *args],
    )
    return result.exit_code, result.output


def only_changed_lines(before: str, after: str) -> list[tuple[str, str]]:
    """Pairs of differing lines, asserting the files have the same number of lines."""
    old, new = before.splitlines(keepends=True), after.splitlines(keepends=True)
    assert len(old) == len(new)
    return [(a, b) for a, b in zip(old, new, strict=True) if a != b]


def test_block_sender_goes_into_the_gateway_list_when_the_tenant_has_none(
    policy_repo: Path, stored_mail: StoredMail
) -> None:
    path = policy_repo / "policies" / "lists" / "global-block.yaml"
    before = path.read_bytes()
    code, out = promote(policy_repo, stored_mail, "--block-sender")
    assert code == 0, out
    after = path.read_bytes()
    # acme's only list is an allow list: the entry goes into the gateway's block list, a flow list
    assert only_changed_lines(before.decode(), after.decode()) == [(
        'senders: [spammer@bad.example, "*@spam.example"]\n',
        'senders: [spammer@bad.example, "*@spam.example", accounts@vendor-billing.example]\n',
    )]
    assert "+senders: [spammer@bad.example" in out and "-senders: [spammer@bad.example" in out
    assert run_liveprism("validate", str(policy_repo / "policies")).returncode == 0
    code, out = promote(policy_repo, stored_mail, "--block-sender")
    assert code == 1 and "already in senders" in out
    assert path.read_bytes() == after


def test_block_domain_and_network_into_a_named_list(policy_repo: Path, stored_mail: StoredMail) -> None:
    path = policy_repo / "policies" / "lists" / "globex-block.yaml"
    before = path.read_text()
    assert promote(policy_repo, stored_mail, "--block-domain", "--list", "globex-block")[0] == 0
    assert promote(policy_repo, stored_mail, "--block-network", "--list", "globex-block")[0] == 0
    assert only_changed_lines(before, path.read_text()) == [
        ("domains: [newsletter-spam.example]\n", "domains: [newsletter-spam.example, vendor-billing.example]\n"),
        ("networks: [192.0.2.128/25]\n", "networks: [192.0.2.128/25, 198.18.5.5]\n"),
    ]
    code, out = promote(policy_repo, stored_mail, "--block-domain", "--list", "acme-nope")
    assert code == 1 and "no list named acme-nope" in out


def test_rule_from_subject_with_scenario_and_commit(policy_repo: Path, stored_mail: StoredMail) -> None:
    path = policy_repo / "policies" / "rules" / "acme-content.yaml"
    before = path.read_text()
    code, out = promote(policy_repo, stored_mail, "--rule-from", "subject", "--scenario", "--commit")
    assert code == 0, out
    after = path.read_text()
    assert after.startswith(before)  # appended after the last rule: nothing before it moved
    ident = "promoted-" + stored_mail.held_id.lower()
    added = after[len(before):]
    assert added == (
        "\n"
        f"  - id: {ident}\n"
        f'    description: "Promoted from quarantine {stored_mail.held_id} (subject: Overdue invoice 2291)"\n'
        "    when:\n"
        "      header: {name: Subject, regex: '(?i)Overdue invoice 2291'}\n"
        "    then: {action: reject}\n"
    )
    assert re2.compile("(?i)Overdue invoice 2291").search("overdue INVOICE 2291")
    assert f"committed on branch promote/{stored_mail.held_id}" in out
    assert git("rev-parse", "--abbrev-ref", "HEAD", cwd=policy_repo) == f"promote/{stored_mail.held_id}"
    committed = git("show", "--name-only", "--format=%s", "HEAD", cwd=policy_repo).splitlines()
    assert committed[0].startswith(f"Promote quarantine {stored_mail.held_id}: added rule {ident}")
    assert "policies/rules/acme-content.yaml" in committed
    assert f"tests/features/quarantine-{stored_mail.held_id}.feature" in committed
    # the new scenario passes; the one old scenario that expected this message to be held now fails:
    # exactly what a reviewer must see before merging
    result = run_liveprism("test", str(policy_repo))
    assert result.returncode == 1, result.stdout[-3000:]
    assert f"tests/features/quarantine-{stored_mail.held_id}.feature ." in result.stdout
    assert "FAILED tests/features/corpus.feature::test_each_corpus_message_gets_its_expected_action" \
           "[invoice-phish.eml-quarantined]" in result.stdout
    assert re.search(r"\b1 failed, \d+ passed\b", result.stdout)


def test_rule_from_body_escapes_re2_specials(policy_repo: Path, stored_mail: StoredMail) -> None:
    code, out = promote(policy_repo, stored_mail, "--rule-from", "body", "--rules", "global-content",
                        "--action", "quarantine")
    assert code == 0, out
    text = (policy_repo / "policies" / "rules" / "global-content.yaml").read_text()
    pattern = re.search(r"body: \{regex: '(.*)'\}", text.splitlines()[-2])
    assert pattern is not None
    assert pattern.group(1) == (
        "(?i)your invoice is overdue\\. Please make the wire transfer to our new account today\\.")
    assert run_liveprism("validate", str(policy_repo / "policies")).returncode == 0


def test_unknown_entry_and_option_errors(policy_repo: Path, stored_mail: StoredMail) -> None:
    result = runner.invoke(quarantine_app, ["promote", "NOPE-acme", "--state", str(stored_mail.state),
                                            "--block-sender"])
    assert result.exit_code == 1 and "no quarantine entry NOPE-acme" in result.output
    code, out = promote(policy_repo, stored_mail, "--block-sender", "--block-domain")
    assert code == 2 and "exactly one" in out


# ---------------------------------------------------------------- the edits themselves

BLOCK_STYLE = """\
# yaml-language-server: $schema=../../schemas/list.schema.json
name: partners-block   # trailing comment
action: block
senders:
  - 'quoted@single.example'    # kept as written
  - "*@double.example"
  -   odd-indent@x.example
# a comment between keys
domains: [ a.example,b.example ]   # flow, odd spacing
networks: []
"""


def test_block_list_edit_keeps_every_other_byte() -> None:
    result = append_scalar(BLOCK_STYLE, "senders", "*@new.example")
    assert isinstance(result, Edited)
    lines = BLOCK_STYLE.splitlines(keepends=True)
    assert result.text.splitlines(keepends=True) == [*lines[:7], '  - "*@new.example"\n', *lines[7:]]
    assert result.line == 8


def test_flow_list_edits_keep_spacing_and_comments() -> None:
    domains = append_scalar(BLOCK_STYLE, "domains", "c.example")
    assert isinstance(domains, Edited)
    assert "domains: [ a.example,b.example, c.example ]   # flow, odd spacing\n" in domains.text
    assert domains.text.replace("b.example, c.example ]", "b.example ]") == BLOCK_STYLE
    empty = append_scalar(BLOCK_STYLE, "networks", "2001:db8::/32")
    assert isinstance(empty, Edited) and empty.text == BLOCK_STYLE.replace("networks: []", "networks: [2001:db8::/32]")
    missing = append_scalar("name: x\naction: block\n", "senders", "a@b.example")
    assert isinstance(missing, Edited) and missing.text == "name: x\naction: block\nsenders: [a@b.example]\n"


def test_edits_are_refused_not_guessed() -> None:
    assert append_scalar(BLOCK_STYLE, "senders", "QUOTED@single.example") == EditRefused(
        "QUOTED@single.example is already in senders")
    assert isinstance(append_scalar("name: [unclosed\n", "senders", "a@b"), EditRefused)
    assert isinstance(append_block(BLOCK_STYLE, "domains", ["- id: x"], "x"), EditRefused)


def test_multi_line_flow_list_gets_a_new_item_line() -> None:
    text = 'name: a\naction: block\nnetworks: [\n  1.1.1.1,   # one\n  "2.2.2.2"  # two\n]\n'
    result = append_scalar(text, "networks", "3.3.3.3")
    assert isinstance(result, Edited)
    assert result.text == 'name: a\naction: block\nnetworks: [\n  1.1.1.1,   # one\n  "2.2.2.2",  # two\n' \
                          '  3.3.3.3\n]\n'
