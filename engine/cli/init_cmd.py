"""`liveprism init DIR`: scaffold a policy repository that passes `validate` and `test` as created.

Writes policies/ (gateway, one tenant, a block list, content rules), tests/features/ (scenarios
for them), tests/corpus/ (two sample messages for `plan`), .github/workflows/policy.yml (validate
-> test -> plan on pull requests, deploy on main) and a README; `git init` when DIR is not in a
git work tree yet. Refuses (exit 1) to overwrite any existing file; nothing is written then.
"""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from engine.gitops.plan.gitref import git_root


def _liveprism_requirement() -> str:
    try:
        return f"liveprism=={version('liveprism')}"
    except PackageNotFoundError:
        return "liveprism"


GATEWAY = """\
# Global settings of the gateway (DESIGN.md "Policy format"). Every key but hostname is optional.
hostname: mx.example.net
listeners:
  inbound: {address: 0.0.0.0, port: 25}
scoring: {tag_at: 3.0, quarantine_at: 6.0, reject_at: 15.0}
lists: [global-block]        # applied to every tenant
rules: [global-content]      # applied to every tenant
"""

TENANT = """\
# One tenant per file: its domains and its own mail servers (lowest priority tried first).
name: example
domains: [example.org]
routes:
  - {host: mail.example.org, port: 25, priority: 10, tls: opportunistic}
recipients: {accept: any}
"""

BLOCK_LIST = """\
name: global-block
description: Senders refused for every tenant (before DATA).
action: block
senders: ["*@spam.example"]
domains: [bad.example]
networks: [203.0.113.0/24]
"""

RULES = """\
name: global-content
description: Content rules for every tenant; scores add up against the thresholds.
rules:
  - id: gtube
    description: The GTUBE test string is always rejected
    direction: both
    when:
      body: {contains: ["XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"]}
    then: {action: reject, message: "GTUBE test message rejected"}

  - id: dangerous-attachment
    description: Executable attachments
    when:
      attachment: {extension: [exe, scr, js, vbs, bat, cmd]}
    then: {score: 8.0}
"""

FEATURE = """\
Feature: The example tenant's mail
  Run with `liveprism test` (or `python -m pytest`): each scenario sends one message through the
  policy in policies/, exactly as the gateway would.

  Scenario: clean mail is delivered to the tenant's server
    Given a message from "alice@example.com" to "bob@example.org"
    When it is received
    Then it is delivered to "mail.example.org"

  Scenario: GTUBE is rejected
    Given the message in "tests/corpus/gtube.eml"
    When it is received
    Then it is rejected with 550
    And rule "gtube" matched

  Scenario: an executable attachment is quarantined
    Given a message from "alice@example.com" to "bob@example.org"
    And an attachment "setup.exe"
    When it is received
    Then it is quarantined
    And the score is at least 8

  Scenario Outline: blocked senders are refused before DATA
    Given a message from "<sender>" to "bob@example.org"
    When it is received
    Then it is rejected with 550

    Examples:
      | sender              |
      | offers@spam.example |
      | x@bad.example       |

  Scenario: mail for a domain of no tenant is relaying denied
    Given a message from "alice@example.com" to "someone@elsewhere.example"
    When it is received
    Then the reply mentions "relaying denied"
"""

CLEAN = """\
From: Alice <alice@example.com>\r
To: Bob <bob@example.org>\r
Subject: Lunch on Friday?\r
Date: Mon, 30 Nov 2026 09:00:00 +0000\r
Message-ID: <clean@corpus.example>\r
\r
Shall we meet at noon?\r
"""

GTUBE = """\
From: tester@example.com\r
To: bob@example.org\r
Subject: GTUBE\r
Date: Mon, 30 Nov 2026 09:00:00 +0000\r
Message-ID: <gtube@corpus.example>\r
\r
XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X\r
"""

README = """\
# Mail policy (LivePrism)

The policy of our LivePrism mail gateway, as code. A change is a pull request:

1. edit `policies/` (gateway.yaml, tenants/, lists/, rules/) and add a scenario to `tests/features/`;
2. check locally: `liveprism validate policies` and `liveprism test .`;
3. see what it changes: `liveprism plan policies --base origin/main` (semantic diff, and which messages
   of `tests/corpus/` change verdict: add real examples there, one `.eml` each, with an optional
   `NAME.envelope` JSON sidecar `{"mail_from": ..., "rcpts": [...], "client_ip": ...}`);
4. open the pull request: `.github/workflows/policy.yml` validates (annotations), runs the scenarios
   (JUnit) and posts the plan as a comment; merging to main deploys (`serve --git-remote`, or
   `POST /reload` on the admin API).

Held mail becomes policy with `liveprism quarantine promote ID --block-sender` (or `--block-domain`,
`--block-network`, `--rule-from subject|body`), which edits the YAML in place and prints the diff.
"""


def workflow(requirement: str) -> str:
    """The policy pipeline of a policy repository: the engine repository's policy.yml, installing
    `requirement` from the package index (a test keeps the two identical)."""
    return POLICY_WORKFLOW.replace("REQUIREMENT", requirement)


POLICY_WORKFLOW = """\
# The policy pipeline (DESIGN.md "GitOps"): a policy change is a pull request.
#   pull request touching policies/ or tests/: validate (annotations) -> test (JUnit) -> plan (job summary + PR comment)
#   push to main: deploy. The gateway picks the change up by itself when it runs with
#     `liveprism serve --git-remote URL --branch main` (git sync); otherwise set the repository variable
#     LIVEPRISM_RELOAD_URL (e.g. https://gw.example/reload) and the secret LIVEPRISM_ADMIN_TOKEN, and the deploy
#     job pulls on the gateway's side by calling the admin API: POST /reload with "Authorization: Bearer TOKEN".
name: policy
on:
  pull_request:
    paths: ["policies/**", "tests/**"]
  push:
    branches: [main]
    paths: ["policies/**"]
permissions:
  contents: read
jobs:
  check:
    if: github.event_name == 'pull_request'
    runs-on: ubuntu-latest
    permissions:
      contents: read
      pull-requests: write
    steps:
      - uses: actions/checkout@v4
        with: {fetch-depth: 0}
      - uses: actions/setup-python@v5
        with: {python-version: "3.11"}
      - name: install liveprism
        run: python -m pip install --quiet 'REQUIREMENT'
      - name: validate (errors as annotations on the PR)
        run: liveprism validate policies --format github
      - name: test (Gherkin scenarios, JUnit report)
        run: liveprism test . --junitxml reports/junit.xml --cucumberjson reports/cucumber.json
      - name: keep the test reports
        if: always()
        uses: actions/upload-artifact@v4
        with:
          name: policy-test-reports
          path: reports/
      - name: plan (semantic diff and blast radius against the base branch)
        env:
          BASE_REF: ${{ github.base_ref }}
        run: |
          liveprism plan policies --base "origin/$BASE_REF" --format markdown > plan.md
          cat plan.md >> "$GITHUB_STEP_SUMMARY"
      - name: comment the plan on the pull request
        env:
          GH_TOKEN: ${{ github.token }}
          PR: ${{ github.event.pull_request.number }}
        run: gh pr comment "$PR" --body-file plan.md --edit-last || gh pr comment "$PR" --body-file plan.md
  deploy:
    if: github.event_name == 'push'
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with: {python-version: "3.11"}
      - name: validate what is deployed
        run: python -m pip install --quiet 'REQUIREMENT' && liveprism validate policies --format github
      - name: ask the gateway to reload (skipped when it syncs from git by itself)
        env:
          RELOAD_URL: ${{ vars.LIVEPRISM_RELOAD_URL }}
          TOKEN: ${{ secrets.LIVEPRISM_ADMIN_TOKEN }}
        run: |
          if [ -z "$RELOAD_URL" ]; then
            echo "LIVEPRISM_RELOAD_URL is not set: the gateway picks main up with serve --git-remote"
            exit 0
          fi
          curl --fail-with-body --silent --show-error -X POST -H "Authorization: Bearer $TOKEN" "$RELOAD_URL"
"""


def scaffold_files() -> dict[str, str]:
    """Relative path -> content of every file `init` writes."""
    return {
        "policies/gateway.yaml": GATEWAY,
        "policies/tenants/example.yaml": TENANT,
        "policies/lists/global-block.yaml": BLOCK_LIST,
        "policies/rules/global-content.yaml": RULES,
        "tests/features/example.feature": FEATURE,
        "tests/corpus/clean.eml": CLEAN,
        "tests/corpus/gtube.eml": GTUBE,
        ".github/workflows/policy.yml": workflow(_liveprism_requirement()),
        "README.md": README,
    }


def run_init(directory: Path) -> int:
    """Write the scaffold into `directory`; 1 (nothing written) when a file already exists."""
    files = scaffold_files()
    existing = [rel for rel in files if (directory / rel).exists()]
    if existing:
        print(f"error: {directory} already has {', '.join(existing)}; nothing written", file=sys.stderr)
        return 1
    for rel, content in files.items():
        path = directory / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode())
    print(f"created a policy repository in {directory}:")
    for rel in files:
        print(f"  {rel}")
    directory.mkdir(parents=True, exist_ok=True)
    if git_root(directory) is None:
        result = subprocess.run(["git", "init", "-q", "-b", "main", str(directory)], capture_output=True, text=True,
                                check=False)
        print("initialised a git repository (branch main)" if result.returncode == 0
              else f"note: git init failed: {result.stderr.strip()}")
    print(f"next: cd {directory} && liveprism validate policies && liveprism test .")
    return 0
