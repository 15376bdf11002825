"""Hostile policy files: YAML alias bombs, oversized files, symlinks leading out of the policy dir.

Every case is refused with a Problem at FILE:LINE:COL, by both YAML paths alike, without
expanding or reading what it refuses; ordinary aliases and symlinks inside the directory work.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli.main import app
from engine.policy.files import MAX_POLICY_FILE_BYTES, content_hash, policy_files
from engine.policy.loader import PolicySource, load_policy
from engine.policy.problem import Problem
from engine.policy.validate import validate_policy
from engine.policy.yaml_positions import (
    LIBYAML_AVAILABLE,
    MAX_ALIAS_NODES,
    MAX_ALIAS_REFERENCES,
    parse_yaml_libyaml,
    parse_yaml_ruamel,
)
from tests.support.policies import problem_texts, write_policy

PARSERS = ("auto", "ruamel")


def bomb(levels: int = 9) -> str:
    """Billion laughs: nine aliases of the level below on each of `levels` lines (9**levels leaves)."""
    lines = ["name: bomb", "action: block", "a: &a [x,x,x,x,x,x,x,x,x]"]
    names = "abcdefghijklmnopqrstuvwxyz"
    for level in range(1, levels):
        below, this = names[level - 1], names[level]
        lines.append(f"{this}: &{this} [" + ",".join([f"*{below}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- alias bombs


# Nodes each level stands for once expanded: a = the sequence + 9 scalars, then 1 + 9 * below.
# The aliases of b..e add 9 * (10 + 91 + 820 + 7381) = 74,718 nodes; the first *e in f's line
# would add 66,430 more, crossing MAX_ALIAS_NODES (100,000): that alias (line 8, col 8) is reported.
BOMB_PROBLEM = (
    "lists/bomb.yaml:8:8: error: alias *e expands to 66,430 nodes; the aliases of one file may expand to"
    " at most 100,000 nodes in all (a limit against YAML alias bombs)"
)


@pytest.mark.parametrize("parser", PARSERS)
def test_alias_bomb_is_refused_at_the_alias_that_crosses_the_limit(tmp_path: Path, parser: str) -> None:
    assert MAX_ALIAS_NODES == 100_000
    text = bomb()
    assert len(text.encode()) < 400  # 368 bytes in the report; 9**9 = 387,420,489 leaves once expanded
    source = load_policy(write_policy(tmp_path, {"lists/bomb.yaml": text}), parser)  # type: ignore[arg-type]
    assert problem_texts(source.problems) == [BOMB_PROBLEM]
    assert source.lists == () and source.gateway is not None and source.tenants


def test_alias_bomb_is_refused_by_validate(tmp_path: Path) -> None:
    root = write_policy(tmp_path, {"lists/bomb.yaml": bomb()})
    result = CliRunner().invoke(app, ["validate", str(root)])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [f"{root}/{BOMB_PROBLEM}"]


@pytest.mark.skipif(not LIBYAML_AVAILABLE, reason="PyYAML's C extension is not installed")
def test_the_fast_path_hands_aliases_of_collections_to_the_limited_path() -> None:
    assert parse_yaml_libyaml(bomb()) is None
    problems: list[Problem] = []
    assert parse_yaml_ruamel("lists/bomb.yaml", bomb(), problems) is None
    assert problem_texts(tuple(problems)) == [BOMB_PROBLEM]


@pytest.mark.parametrize("parser", PARSERS)
def test_alias_bomb_loads_in_bounded_memory(tmp_path: Path, parser: str) -> None:
    """Peak RSS of a process that loads the bomb: unbounded expansion took 1.2 GB and more."""
    root = write_policy(tmp_path, {"lists/bomb.yaml": bomb()})
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))  # a regression fails, not the machine\n"
        "from pathlib import Path\n"
        "from engine.policy.loader import load_policy\n"
        "source = load_policy(Path(sys.argv[1]), sys.argv[2])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "print(*(p.format_text() for p in source.problems), sep='\\n')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(root), parser], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak_kib, *problems = done.stdout.splitlines()
    assert problems == [BOMB_PROBLEM]
    assert int(peak_kib) < 512 * 1024, f"peak RSS {int(peak_kib) // 1024} MiB"  # unbounded: 1.6 GB and more


def many_aliases(count: int) -> str:
    senders = ", ".join(["*s"] * count)
    return f"name: many\naction: block\ndescription: &s spam@bad.example\nsenders: [{senders}]\n"


@pytest.mark.parametrize("parser", PARSERS)
def test_too_many_alias_references_are_refused_at_the_first_one_over(tmp_path: Path, parser: str) -> None:
    text = many_aliases(MAX_ALIAS_REFERENCES + 1)
    source = load_policy(write_policy(tmp_path, {"lists/many.yaml": text}), parser)  # type: ignore[arg-type]
    col = len("senders: [") + 1 + MAX_ALIAS_REFERENCES * len("*s, ")
    assert problem_texts(source.problems) == [
        f"lists/many.yaml:4:{col}: error: too many aliases: at most 10,000 per file"
        " (a limit against YAML alias bombs)"
    ]


@pytest.mark.skipif(not LIBYAML_AVAILABLE, reason="PyYAML's C extension is not installed")
def test_scalar_aliases_up_to_the_limit_load_alike_on_both_paths(tmp_path: Path) -> None:
    text = many_aliases(MAX_ALIAS_REFERENCES)
    assert parse_yaml_libyaml(text) is not None  # scalar aliases keep the fast path
    assert parse_yaml_libyaml(many_aliases(MAX_ALIAS_REFERENCES + 1)) is None  # the ruamel path reports
    root = write_policy(tmp_path, {"lists/many.yaml": text})
    fast, slow = load_policy(root), load_policy(root, "ruamel")
    assert fast.problems == slow.problems == ()
    assert fast.lists[0].model.senders == slow.lists[0].model.senders
    assert len(fast.lists[0].model.senders) == MAX_ALIAS_REFERENCES
    assert dict(fast.lists[0].positions) == dict(slow.lists[0].positions)


ORDINARY_RULES = """\
name: content
rules:
  - id: lure-inbound
    when: &lure
      any:
        - header: {name: Subject, regex: '(?i)overdue invoice'}
        - body: {contains: [wire transfer, &card gift card]}
    then: {score: 6}
  - id: lure-outbound
    direction: outbound
    when: *lure
    then: &mild {score: 2}
  - id: card-only
    when: {body: {contains: [*card]}}
    then: *mild
"""


@pytest.mark.parametrize("parser", PARSERS)
def test_an_ordinary_policy_with_a_few_aliases_loads(tmp_path: Path, parser: str) -> None:
    source = load_policy(write_policy(tmp_path, {"rules/content.yaml": ORDINARY_RULES}), parser)  # type: ignore[arg-type]
    assert source.problems == ()
    rules = source.rulesets[0].model.rules
    assert [rule.id for rule in rules] == ["lure-inbound", "lure-outbound", "card-only"]
    assert rules[1].when == rules[0].when
    assert rules[1].then == rules[2].then
    # an aliased collection's items are located where the anchored original is written
    positions = source.rulesets[0].positions
    assert positions[("rules", 1, "when", "any", 1)] == positions[("rules", 0, "when", "any", 1)] == (7, 11)
    assert validate_policy(source) == ()


# ---------------------------------------------------------------- file size


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path: Path) -> None:
    root = write_policy(tmp_path, {})
    with (root / "tenants" / "huge.yaml").open("wb") as stream:
        stream.truncate(MAX_POLICY_FILE_BYTES + 1)  # sparse: no disk used
    source = load_policy(root)
    assert problem_texts(source.problems) == [
        "tenants/huge.yaml:1:1: error: file too large: a policy file may hold at most 16 MiB"
    ]
    assert [t.path for t in source.tenants] == ["tenants/acme.yaml"]
    assert source.content_hash  # still hashed, in chunks


# ---------------------------------------------------------------- symlinks


SECRET = "name: root-password-hunter2\n"


def outside_file(tmp_path: Path) -> Path:
    outside = tmp_path / "outside" / "secret.yaml"
    outside.parent.mkdir(parents=True)
    outside.write_text(SECRET)
    return outside


def load(root: Path) -> tuple[PolicySource, list[str]]:
    source = load_policy(root)
    return source, problem_texts(validate_policy(source))


def test_a_symlinked_policy_file_leading_outside_is_refused_unread(tmp_path: Path) -> None:
    outside = outside_file(tmp_path)
    root = write_policy(tmp_path / "policy", {})
    (root / "tenants" / "evil.yaml").symlink_to(outside)
    source, problems = load(root)
    assert problems == [
        f"tenants/evil.yaml:1:1: error: symlink to {outside}, outside the policy directory:"
        " policy files must lie inside it"
    ]
    assert "hunter2" not in "".join(problems)
    assert [t.path for t in source.tenants] == ["tenants/acme.yaml"]
    # the content hash does not read it either: changing the target changes nothing
    before = content_hash(root, policy_files(root))
    outside.write_text(SECRET + "domains: [x.example]\n")
    assert content_hash(root, policy_files(root)) == before


def test_a_kind_directory_symlinked_outside_is_refused(tmp_path: Path) -> None:
    outside = outside_file(tmp_path)
    root = write_policy(tmp_path / "policy", {})
    (root / "lists").symlink_to(outside.parent)
    _, problems = load(root)
    assert problems == [
        f"lists/secret.yaml:1:1: error: symlink to {outside}, outside the policy directory:"
        " policy files must lie inside it"
    ]


def test_a_relative_symlink_climbing_out_is_refused(tmp_path: Path) -> None:
    outside_file(tmp_path)
    root = write_policy(tmp_path / "policy", {})
    (root / "tenants" / "evil.yaml").symlink_to(Path("..", "..", "outside", "secret.yaml"))
    _, problems = load(root)
    assert len(problems) == 1 and problems[0].startswith("tenants/evil.yaml:1:1: error: symlink to ")


def test_symlinks_inside_the_policy_directory_keep_working(tmp_path: Path) -> None:
    root = write_policy(
        tmp_path / "policy",
        {"shared/beta.yaml": "name: beta\ndomains: [beta.example]\nroutes: [{host: mx.beta.example}]\n"},
    )
    (root / "tenants" / "beta.yaml").symlink_to(Path("..", "shared", "beta.yaml"))
    (root / "tenants" / "acme-again.yml").symlink_to(root / "tenants" / "acme.yaml")  # absolute, inside
    source, problems = load(root)
    assert [t.path for t in source.tenants] == ["tenants/acme-again.yml", "tenants/acme.yaml", "tenants/beta.yaml"]
    assert not any("symlink" in p for p in problems), problems


def test_a_policy_directory_that_is_itself_a_symlink_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # deploys switch releases with `ln -sfn releases/N policies`
    release = write_policy(tmp_path / "releases" / "2", {})
    (release / "shared").mkdir()
    (release / "shared" / "block.yaml").write_text("name: block\naction: block\ndomains: [bad.example]\n")
    (release / "lists").mkdir()
    (release / "lists" / "block.yaml").symlink_to(Path("..", "shared", "block.yaml"))  # relative, inside
    (tmp_path / "policies").symlink_to(Path("releases", "2"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "policies"])
    assert result.exit_code == 0, result.stdout
    assert result.stdout == ""
    source, problems = load(Path("policies"))
    assert problems == []
    assert [f.path for f in source.lists] == ["lists/block.yaml"] and source.tenants


def test_validate_names_the_refused_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outside = outside_file(tmp_path)
    root = write_policy(tmp_path / "policy", {})
    os.symlink(outside, root / "tenants" / "evil.yaml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["validate", "policy", "--format", "github"])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"::error file=policy/tenants/evil.yaml,line=1,col=1::symlink to {outside}, outside the policy"
        " directory: policy files must lie inside it"
    ]


# ---------------------------------------------------------------- Problem.format


def test_problem_format_is_the_one_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    problem = Problem("error", "rules/a,b.yaml", 3, 7, "100% wrong\nsecond line")
    assert problem.format() == problem.format_text() == "rules/a,b.yaml:3:7: error: 100% wrong\nsecond line"
    assert problem.format("github") == "::error file=rules/a%2Cb.yaml,line=3,col=7::100%25 wrong%0Asecond line"
    monkeypatch.chdir(tmp_path)
    assert problem.format("text", tmp_path / "p").startswith("p/rules/a,b.yaml:3:7: error: ")
    assert problem.format("text", Path("/elsewhere")).startswith("/elsewhere/rules/a,b.yaml:3:7:")
    assert Problem("warning", "x.yaml", 1, 1, "m").format("github", Path("p")) == (
        "::warning file=p/x.yaml,line=1,col=1::m"
    )
