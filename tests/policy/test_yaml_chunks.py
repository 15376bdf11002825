"""Loading a large rule or list file in pieces (`engine.policy.yaml_chunks`) gives exactly what the
whole-file loader gives, or declines; and a hot reload through pieces equals a fresh load + compile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.graph.build.compiler import compile_policy, list_entries
from engine.graph.build.incremental import IncrementalLoader
from engine.graph.lists import ListIndex
from engine.graph.transaction import simulate
from engine.mime.view import parse_message
from engine.policy import yaml_chunks
from engine.policy.loader import LoadedFile, load_file, load_policy
from engine.policy.models import PolicyList, PolicyModel, RuleSet
from engine.policy.problem import Problem
from engine.policy.validate import validate_policy
from tests.support.policies import fingerprint, write_policy

RULE = "  - id: rule-{n}\n    when: {{header: {{name: Subject, regex: 'subject-{n}$'}}}}\n    then: {{score: 1.0}}\n"


def whole_and_chunked(tmp_path: Path, text: str, model: type[PolicyModel]) -> tuple[Any, Any, list[Problem]]:
    rel = "rules/x.yaml" if model is RuleSet else "lists/x.yaml"
    path = tmp_path / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    problems: list[Problem] = []
    whole = load_file(tmp_path, rel, model, problems)
    kept: dict[Any, Any] = {}
    chunked = yaml_chunks.load_chunked(rel, text, model, {}, kept)
    return whole, chunked, problems


def assert_same(whole: LoadedFile[Any] | None, chunked: LoadedFile[Any] | None) -> None:
    """Chunked declines, or it gives the whole-file result exactly (model, fields set, positions)."""
    if chunked is None:
        return
    assert whole is not None, "pieces loaded a file the whole-file loader refuses"
    assert chunked.model == whole.model
    assert chunked.model.model_fields_set == whole.model.model_fields_set
    assert dict(chunked.positions) == dict(whole.positions)
    assert len(chunked.positions) == len(whole.positions)
    for path, position in whole.positions.items():
        assert chunked.positions[path] == position
        assert chunked.position(path) == whole.position(path)


@pytest.fixture
def small_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cut files of any size, so that short adversarial texts go through the pieces."""
    monkeypatch.setattr(yaml_chunks, "MIN_CHUNKED_BYTES", 0)


RULES = "name: x\nrules:\n" + "".join(RULE.format(n=n) for n in range(3))


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize(
    "text",
    [
        RULES,
        RULES.rstrip("\n"),  # no final newline
        "name: x\nrules:\n" + "".join(RULE.format(n=n).replace("\n  ", "\n") for n in range(3)),  # items at column 0
        "name: x\nrules:   # the rules\n\n# first\n" + RULE.format(n=1)
        + "\n# between\n   # indented\n" + RULE.format(n=2),
        "name: x\nrules:\n  -\n    id: a\n    when: {body: {contains: [x]}}\n    then: {score: 1}\n" + RULE.format(n=2),
        "name: x\nrules:\n  - id: a\n    description: |\n      - id: inside\n      text\n"
        "    when: {body: {contains: [x]}}\n    then: {score: 1}\n" + RULE.format(n=2),
        "name: x\ndescription: after\nrules:\n" + RULE.format(n=1) + "description2: x\n",  # unknown key after
    ],
)
def test_pieces_equal_the_whole_file(tmp_path: Path, text: str) -> None:
    whole, chunked, problems = whole_and_chunked(tmp_path, text, RuleSet)
    assert_same(whole, chunked)
    if not problems:
        assert chunked is not None


@pytest.mark.usefixtures("small_pieces")
@pytest.mark.parametrize(
    "text",
    [
        # a quoted scalar running over an item line: not two items
        "name: x\nrules:\n  - id: a\n    description: \"x\n  - id: b\"\n    when: {body: {contains: [x]}}\n"
        "    then: {score: 1}\n",
        # `rules:` at column 0 inside a quoted text, and the real key empty
        "name: x\ndescription: \"a\nrules:\n  - id: b\n\"\nrules:\n",
        # anchors and aliases across items
        "name: x\nrules:\n  - id: a\n    when: &w {body: {contains: [x]}}\n    then: {score: 1}\n"
        "  - id: b\n    when: *w\n    then: {score: 1}\n",
        "name: x\nrules:\n  - id: a\n    description: &d text\n    when: {body: {contains: [x]}}\n"
        "    then: {score: 1}\n  - id: b\n    description: *d\n    when: {body: {contains: [x]}}\n"
        "    then: {score: 1}\n",
        # the key twice, a line less indented than the items, a document marker, a tab, a directive
        RULES + "rules:\n" + RULE.format(n=7),
        "name: x\nrules:\n  - id: a\n when: {body: {contains: [x]}}\n  - id: b\n",
        RULES + "---\nname: y\n",
        RULES.replace("then: {score: 1.0}", "then:\t{score: 1.0}", 1),
        "%YAML 1.2\n---\n" + RULES,
        # schema errors, duplicate keys, an empty item, a flow sequence
        RULES.replace("score: 1.0", "score: high", 1),
        RULES.replace("    then:", "    when: {body: {contains: [y]}}\n    then:", 1),
        "name: x\nrules:\n  -\n" + RULE.format(n=1),
        "name: x\nrules: [{id: a, when: {body: {contains: [x]}}, then: {score: 1}}]\n",
        "name: Not A Name\nrules:\n" + RULE.format(n=1),
    ],
)
def test_pieces_decline_or_agree_on_hard_cases(tmp_path: Path, text: str) -> None:
    whole, chunked, problems = whole_and_chunked(tmp_path, text, RuleSet)
    assert_same(whole, chunked)
    if problems:
        assert chunked is None


FRAGMENTS = [
    RULE.format(n=1), RULE.format(n=2), RULE.format(n=3),
    "  - id: q\n    description: 'it''s\n      long'\n    when: {body: {contains: [a]}}\n    then: {score: 1}\n",
    "  - id: b\n    description: >\n      folded\n\n      text\n    when: {body: {regex: 'a|b'}}\n"
    "    then: {action: reject}\n",
    "# comment\n", "\n", "   # indented comment\n",
    "  - id: s\n    when:\n      any:\n        - header: {name: From, contains: ['x@y']}\n"
    "        - body: {contains: [z]}\n    then: {score: 2}\n",
    "  - id: \"quoted\n  - id: inside\"\n    when: {body: {contains: [x]}}\n    then: {score: 1}\n",
    "  - id: anchored\n    when: &a {body: {contains: [x]}}\n    then: {score: 1}\n",
    "  - id: aliased\n    when: *a\n    then: {score: 1}\n",
    "description: late\n", "rules:\n", " - id: shallow\n", "  - [a, b]\n", "  -\n", "  - 3\n",
]


@pytest.mark.usefixtures("small_pieces")
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12))
def test_pieces_of_generated_rule_files(tmp_path: Path, fragments: list[str]) -> None:
    whole, chunked, problems = whole_and_chunked(tmp_path, "name: x\nrules:\n" + "".join(fragments), RuleSet)
    assert_same(whole, chunked)
    if problems:
        assert chunked is None


ENTRIES = ["a@b.example", "'*@c.example'", "\"*@*.d.example\"", "x.example", "192.0.2.0/24", "2001:db8::/32",
           "# note", "", "not an address", "'unclosed", "{flow: map}", "&anchor e@f.example", "*anchor"]


@pytest.mark.usefixtures("small_pieces")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(["senders", "domains", "networks"]),
                          st.lists(st.sampled_from(ENTRIES), max_size=30)), min_size=1, max_size=4))
def test_pieces_of_generated_list_files(tmp_path: Path, sections: list[tuple[str, list[str]]]) -> None:
    text = "name: x\naction: block\n"
    for field, values in sections:
        text += f"{field}:\n" + "".join(f"  - {value}\n" if value and not value.startswith("#") else f"{value}\n"
                                         for value in values)
    whole, chunked, problems = whole_and_chunked(tmp_path, text, PolicyList)
    assert_same(whole, chunked)
    if problems:
        assert chunked is None


def big_list(count: int, offset: int = 0) -> list[str]:
    values = []
    for n in range(offset, offset + count):
        kind = n % 4
        network = f"10.{n >> 8 & 255}.{n & 255}.0/24"
        choices = [f"user{n}@host{n}.example", f"'*@w{n}.example'", f"d{n}.example", network]
        values.append(choices[kind])
    return values


def list_text(values: list[str], name: str = "big-block") -> str:
    senders = [v for v in values if "@" in v]
    networks = [v for v in values if "/" in v]
    domains = [v for v in values if v not in senders and v not in networks]
    return (f"name: {name}\naction: block\nsenders:\n" + "".join(f"  - {v}\n" for v in senders)
            + "domains:\n" + "".join(f"  - {v}\n" for v in domains)
            + "networks:\n" + "".join(f"  - {v}\n" for v in networks))


def big_policy(tmp_path: Path, rules: int = 900, entries: int = 6000) -> Path:
    body = "name: bulk\nrules:\n" + "".join(RULE.format(n=n) for n in range(rules))
    root = write_policy(tmp_path, {
        "rules/bulk.yaml": body,
        "lists/big-block.yaml": list_text(big_list(entries)),
        "lists/more-block.yaml": list_text(big_list(entries // 2, offset=entries - 100), name="more-block"),
    })
    gateway = root / "gateway.yaml"
    text = gateway.read_text()
    text = text.replace("rules: [", "rules: [bulk, ") if "rules: [" in text else text + "rules: [bulk]\n"
    text = text.replace("lists: [", "lists: [big-block, more-block, ") if "lists: [" in text else (
        text + "lists: [big-block, more-block]\n")
    gateway.write_text(text)
    return root


def test_a_big_file_is_cut_and_an_edit_reuses_the_other_pieces(tmp_path: Path) -> None:
    root = big_policy(tmp_path)
    rules = root / "rules" / "bulk.yaml"
    assert len(rules.read_text()) > yaml_chunks.MIN_CHUNKED_BYTES
    loader = IncrementalLoader()
    source = loader.load(root)
    bulk = next(f for f in source.rulesets if f.path == "rules/bulk.yaml")
    assert isinstance(bulk.positions, yaml_chunks.ChunkedPositions)
    before = list(bulk.model.rules)
    rules.write_text(rules.read_text().replace("subject-5$", "subject-five$"))
    edited = next(f for f in loader.load(root).rulesets if f.path == "rules/bulk.yaml")
    reused = [a is b for a, b in zip(before, edited.model.rules, strict=True)]
    assert reused.count(False) == 1 and not reused[5]  # only the edited rule is new


def probes() -> list[dict[str, Any]]:
    senders = ["user4@host4.example", "x@w5.example", "x@sub.d6.example", "user5900@host5900.example",
               "nobody@nowhere.example", "new@inserted.example", "user8@host8.example"]
    ips = ["10.0.7.9", "10.22.3.1", "192.0.2.1", "10.0.3.200"]
    return [{"mail_from": s, "client_ip": ip, "rcpts": ["bob@acme.example"]} for s in senders for ip in ips]


MESSAGE = b"From: a@example.com\r\nSubject: subject-7\r\n\r\nhello\r\n"


def assert_graphs_agree(incremental: Any, fresh: Any) -> None:
    assert incremental.version == fresh.version
    assert [(r.id, r.source) for r in incremental.rules] == [(r.id, r.source) for r in fresh.rules]
    view = parse_message(MESSAGE)
    assert incremental._content.matching_rules(view) == fresh._content.matching_rules(view)
    for probe in probes():
        assert incremental._lists.match_address(probe["mail_from"]) == fresh._lists.match_address(probe["mail_from"])
        assert incremental._lists.match_ip(probe["client_ip"]) == fresh._lists.match_ip(probe["client_ip"])
        got = simulate(incremental, raw=MESSAGE, **probe)
        want = simulate(fresh, raw=MESSAGE, **probe)
        assert got.decision == want.decision


def test_reloads_through_pieces_equal_a_fresh_load_and_compile(tmp_path: Path) -> None:
    root = big_policy(tmp_path)
    rules, block = root / "rules" / "bulk.yaml", root / "lists" / "big-block.yaml"
    loader = IncrementalLoader()
    edits = [
        lambda: None,
        lambda: rules.write_text(rules.read_text() + RULE.format(n="new")),  # a rule added at the end
        lambda: rules.write_text(rules.read_text().replace("subject-7$", "subject-7")),  # one rule edited
        lambda: rules.write_text(rules.read_text().replace(RULE.format(n=3), "")),  # one removed
        lambda: block.write_text(block.read_text().replace("senders:\n", "senders:\n  - new@inserted.example\n")),
        lambda: block.write_text(block.read_text().replace("  - d6.example\n", "")),  # an entry removed
        lambda: block.write_text(block.read_text().replace("10.0.7.0/24", "10.0.7.0/25")),  # one changed
        lambda: block.write_text(block.read_text() + "  - 10.0.3.0/24\n"),  # a duplicate of more-block's
    ]
    layered = False
    for edit in edits:
        edit()
        result, source = loader.load_graph(root)
        assert fingerprint(source) == fingerprint(load_policy(root))
        fresh = compile_policy(load_policy(root))
        assert result.graph is not None, result.problems
        layered = layered or loader.indexes.layered
        assert_graphs_agree(result.graph, fresh)
    assert layered


def test_a_broken_edit_of_a_big_file_is_reported_like_the_whole_file_loader(tmp_path: Path) -> None:
    root = big_policy(tmp_path)
    rules = root / "rules" / "bulk.yaml"
    loader = IncrementalLoader()
    loader.load(root)
    broken = [
        rules.read_text().replace("subject-9$'}}", "subject-9$'}"),  # unclosed flow mapping
        rules.read_text().replace("score: 1.0}\n  - id: rule-12", "score: one}\n  - id: rule-12"),
        rules.read_text().replace("  - id: rule-14\n", "  - id: rule-14\n    id: again\n"),
        rules.read_text() + "  - id: bomb\n    when: &a {body: {contains: [x]}}\n    then: *a\n",
        rules.read_text().replace("subject-20$", "(unclosed"),  # parses; `validate` refuses it
        rules.read_text().replace("rule-21\n", "rule-21\n    when: {check: spf}\n  - id: rule-21b\n"),
        rules.read_text().replace("rule-30\n", "rule-1\n"),  # a duplicate id
    ]
    for text in broken:
        assert text != rules.read_text()
        rules.write_text(text)
        result, source = loader.load_graph(root)
        assert fingerprint(source) == fingerprint(load_policy(root))
        assert result.graph is None
        assert result.problems == validate_policy(load_policy(root))
        assert any(p.severity == "error" and p.file == "rules/bulk.yaml" for p in result.problems)


def test_list_index_update_equals_a_fresh_build(tmp_path: Path) -> None:
    root = big_policy(tmp_path, rules=10, entries=400)
    before = [f for f in load_policy(root).lists]
    block = root / "lists" / "big-block.yaml"
    block.write_text(block.read_text().replace("senders:\n", "senders:\n  - user8@host8.example\n"))
    after = [f for f in load_policy(root).lists]
    old = [e for f in before for e in list_entries(f)]
    new = [e for f in after for e in list_entries(f)]
    changed_old = [e for e in old if e.rank[0] == "lists/big-block.yaml"]
    changed_new = [e for e in new if e.rank[0] == "lists/big-block.yaml"]
    kept = [e for e in old if e.rank[0] != "lists/big-block.yaml"]
    updated = ListIndex(old).updated(changed_old, changed_new)
    fresh = ListIndex(sorted([*kept, *changed_new], key=lambda e: e.rank))
    for table in ("_addresses", "_local_wildcards", "_domain_suffixes"):
        assert dict(getattr(updated, table)) == dict(getattr(fresh, table))
    assert {k: dict(v) for k, v in updated._networks.items()} == {k: dict(v) for k, v in fresh._networks.items()}
    assert updated._prefixes == fresh._prefixes
    assert updated.match_address("user8@host8.example") == fresh.match_address("user8@host8.example")
    assert len(updated.match_address("user8@host8.example")) == 2
