"""engine.policy.loader: YAML and schema problems at exact FILE:LINE:COL, positions, content hash."""

from __future__ import annotations

import gc
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from engine.policy.loader import LoadedFile, Problem, load_policy
from engine.policy.models import NotCondition, RuleSet
from engine.policy.yaml_positions import LIBYAML_AVAILABLE, parse_yaml_libyaml, parse_yaml_ruamel
from tests.support.policies import ACME, GATEWAY, fingerprint, problem_texts, write_policy
from tests.support.processes import REPO

# ---------------------------------------------------------------- valid input


def test_minimal_policy_loads_without_problems(tmp_path: Path) -> None:
    source = load_policy(write_policy(tmp_path, {}))
    assert source.problems == ()
    assert source.gateway is not None
    assert source.gateway.model.hostname == "mx.example.com"
    assert [t.model.name for t in source.tenants] == ["acme"]
    assert source.files == ("gateway.yaml", "tenants/acme.yaml")


def test_positions_cover_keys_and_items_in_block_and_flow_style(tmp_path: Path) -> None:
    source = load_policy(write_policy(tmp_path, {}))
    acme = source.tenants[0]
    assert acme.path == "tenants/acme.yaml"
    assert acme.positions[("name",)] == (1, 1)
    assert acme.positions[("domains", 0)] == (2, 11)
    assert acme.positions[("routes", 0)] == (4, 5)
    assert acme.positions[("routes", 0, "port")] == (4, 33)
    assert acme.position(("routes", 0, "port")) == (4, 33)
    # a missing path falls back to the nearest existing ancestor, then to (1, 1)
    assert acme.position(("routes", 0, "tls")) == (4, 5)
    assert acme.position(("nothing", 3)) == (1, 1)
    assert acme.source(("routes", 0, "host")) == "tenants/acme.yaml:4"


def test_rule_positions_use_yaml_keys_including_not(tmp_path: Path) -> None:
    rules = """\
name: content
rules:
  - id: no-exe
    when:
      not:
        attachment: {extension: [exe]}
    then: {score: 1}
"""
    source = load_policy(write_policy(tmp_path, {"rules/content.yaml": rules}))
    assert source.problems == ()
    loaded: LoadedFile[RuleSet] = source.rulesets[0]
    assert isinstance(loaded.model.rules[0].when, NotCondition)
    assert loaded.positions[("rules", 0, "when", "not", "attachment")] == (6, 9)
    assert loaded.source(("rules", 0)) == "rules/content.yaml:3"


def test_yml_suffix_is_loaded_and_other_files_ignored(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "tenants/beta.yml": "name: beta\ndomains: [beta.example]\nroutes: [{host: mx.beta.example}]\n",
            "tenants/README.md": "not policy\n",
            "tenants/.beta.yaml.swp": "junk",
            "notes.yaml": "ignored: true\n",
        },
    )
    source = load_policy(tmp_path)
    assert source.problems == ()
    assert [t.path for t in source.tenants] == ["tenants/acme.yaml", "tenants/beta.yml"]


def test_content_hash_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    first = load_policy(write_policy(tmp_path / "a", {})).content_hash
    second = load_policy(write_policy(tmp_path / "b", {})).content_hash
    changed = load_policy(write_policy(tmp_path / "c", {"gateway.yaml": "hostname: mx2.example.com\n"})).content_hash
    assert first == second
    assert first != changed
    assert len(first) == 64


# ---------------------------------------------------------------- file-level problems


def test_missing_gateway_is_reported_at_gateway_yaml_1_1(tmp_path: Path) -> None:
    source = load_policy(write_policy(tmp_path, {"tenants/acme.yaml": ACME}, base=False))
    assert source.gateway is None
    assert problem_texts(source.problems) == ["gateway.yaml:1:1: error: gateway.yaml is missing: it is required"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty: expected a mapping of keys"),
        ("- hostname\n", "the file is a list: expected a mapping of keys"),
        ("just text\n", "the file is a string: expected a mapping of keys"),
    ],
)
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str, message: str) -> None:
    source = load_policy(write_policy(tmp_path, {"gateway.yaml": text}))
    assert problem_texts(source.problems) == [f"gateway.yaml:1:1: error: {message}"]


# ---------------------------------------------------------------- YAML syntax


def test_tab_indentation(tmp_path: Path) -> None:
    text = "name: acme\ndomains:\n\t- acme.example\n"
    source = load_policy(write_policy(tmp_path, {"tenants/acme.yaml": text}))
    assert problem_texts(source.problems) == [
        "tenants/acme.yaml:3:1: error: tab character: YAML indentation must use spaces"]
    assert source.tenants == ()


def test_duplicate_key_reported_at_second_occurrence(tmp_path: Path) -> None:
    text = "name: acme\ndomains: [acme.example]\nroutes: [{host: a.example}]\nname: other\n"
    source = load_policy(write_policy(tmp_path, {"tenants/acme.yaml": text}))
    assert problem_texts(source.problems) == ["tenants/acme.yaml:4:1: error: duplicate key 'name' (first at line 1)"]


def test_duplicate_key_in_flow_mapping(tmp_path: Path) -> None:
    text = "name: acme\ndomains: [acme.example]\nroutes: [{host: a.example, port: 25, port: 26}]\n"
    source = load_policy(write_policy(tmp_path, {"tenants/acme.yaml": text}))
    assert problem_texts(source.problems) == ["tenants/acme.yaml:3:38: error: duplicate key 'port' (first at line 3)"]


def test_unclosed_quote_points_at_the_opening_quote(tmp_path: Path) -> None:
    text = "name: acme\ndomains: ['acme.example]\nroutes: [{host: a.example}]\n"
    source = load_policy(write_policy(tmp_path, {"tenants/acme.yaml": text}))
    assert problem_texts(source.problems) == ["tenants/acme.yaml:2:11: error: unclosed quote"]


def test_bad_indentation(tmp_path: Path) -> None:
    text = "hostname: mx.example.com\n  limits: {}\n"
    source = load_policy(write_policy(tmp_path, {"gateway.yaml": text}))
    assert problem_texts(source.problems) == ["gateway.yaml:2:9: error: mapping values are not allowed here"]


# ---------------------------------------------------------------- schema problems


def test_unknown_top_level_key_suggests_the_closest(tmp_path: Path) -> None:
    text = "hostnme: mx.example.com\nlimits: {max_recipients: 10}\n"
    source = load_policy(write_policy(tmp_path, {"gateway.yaml": text}))
    assert problem_texts(source.problems) == [
        "gateway.yaml:1:1: error: missing required key 'hostname'",
        "gateway.yaml:1:1: error: unknown key 'hostnme'; did you mean 'hostname'?",
    ]


def test_unknown_nested_key_suggests_the_closest(tmp_path: Path) -> None:
    text = "hostname: mx.example.com\nlimits:\n  max_recipient: 10\n"
    source = load_policy(write_policy(tmp_path, {"gateway.yaml": text}))
    assert problem_texts(source.problems) == [
        "gateway.yaml:3:3: error: unknown key 'max_recipient'; did you mean 'max_recipients'?"
    ]


def test_unknown_condition_key_suggests_a_condition(tmp_path: Path) -> None:
    rules = """\
name: content
rules:
  - id: phish
    when:
      any:
        - body: {contains: [gift card]}
        - heder: {name: Subject, regex: invoice}
    then: {score: 1}
"""
    source = load_policy(write_policy(tmp_path, {"rules/content.yaml": rules}))
    assert problem_texts(source.problems) == [
        "rules/content.yaml:7:11: error: unknown condition 'heder'; did you mean 'header'? "
        "(a condition is one of: any, all, not, header, body, attachment, mime, check)"
    ]


def test_unknown_key_inside_a_condition_suggests_the_field(tmp_path: Path) -> None:
    rules = """\
name: content
rules:
  - id: phish
    when:
      header: {nmae: Subject, regex: invoice}
    then: {score: 1}
"""
    source = load_policy(write_policy(tmp_path, {"rules/content.yaml": rules}))
    assert problem_texts(source.problems) == [
        "rules/content.yaml:5:7: error: missing required key 'name'",
        "rules/content.yaml:5:16: error: unknown key 'nmae'; did you mean 'name'?",
    ]


def test_two_condition_keys_in_one_mapping(tmp_path: Path) -> None:
    rules = """\
name: content
rules:
  - id: phish
    when: {header: {name: Subject, regex: x}, body: {regex: y}}
    then: {score: 1}
"""
    source = load_policy(write_policy(tmp_path, {"rules/content.yaml": rules}))
    assert problem_texts(source.problems) == [
        "rules/content.yaml:4:47: error: unknown key 'body': a condition has exactly one key; "
        "combine conditions with any: or all:"
    ]


def test_port_out_of_range(tmp_path: Path) -> None:
    text = "hostname: mx.example.com\nlisteners:\n  inbound: {port: 70000}\n"
    source = load_policy(write_policy(tmp_path, {"gateway.yaml": text}))
    assert problem_texts(source.problems) == [
        "gateway.yaml:3:13: error: port: Input should be less than or equal to 65535"]


def test_route_port_out_of_range(tmp_path: Path) -> None:
    text = "name: acme\ndomains: [acme.example]\nroutes:\n  - host: a.example\n    port: 0\n"
    source = load_policy(write_policy(tmp_path, {"tenants/acme.yaml": text}))
    assert problem_texts(source.problems) == [
        "tenants/acme.yaml:5:5: error: port: Input should be greater than or equal to 1"]


def test_invalid_domain_network_and_address_point_at_the_item(tmp_path: Path) -> None:
    tenant = """\
name: acme
domains:
  - acme.example
  - not a domain
routes: [{host: a.example}]
outbound: {networks: [192.0.2.0/24, 10.0.0.1/8]}
"""
    block = """\
name: block
action: block
senders: [ok@bad.example, nobody]
"""
    source = load_policy(write_policy(tmp_path, {"tenants/acme.yaml": tenant, "lists/block.yaml": block}))
    assert problem_texts(source.problems) == [
        "lists/block.yaml:3:27: error: senders: invalid address pattern 'nobody': expected user@domain or *@domain",
        "tenants/acme.yaml:4:5: error: domains: invalid domain 'not a domain': expected a name like example.com",
        "tenants/acme.yaml:6:37: error: networks: invalid network '10.0.0.1/8': 10.0.0.1/8 has host bits set",
    ]


@pytest.mark.parametrize("empty", ["{}", "", "[]"])
def test_empty_when_points_at_when(tmp_path: Path, empty: str) -> None:
    rules = f"name: content\nrules:\n  - id: r\n    when: {empty}\n    then: {{score: 1}}\n"
    source = load_policy(write_policy(tmp_path, {"rules/content.yaml": rules}))
    assert problem_texts(source.problems) == [
        "rules/content.yaml:4:5: error: `when` is empty: give a condition "
        "(any, all, not, header, body, attachment, mime, check)"
    ]


def test_union_member_errors_are_merged(tmp_path: Path) -> None:
    text = "hostname: mx.example.com\ndns:\n  nameservers: [192.0.2.53, resolver]\n"
    source = load_policy(write_policy(tmp_path, {"gateway.yaml": text}))
    assert problem_texts(source.problems) == [
        "gateway.yaml:3:29: error: nameservers: Input is not a valid IPv4 address or Input is not a valid IPv6 address"
    ]


def test_all_problems_of_all_files_in_one_run(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "gateway.yaml": "hostname: mx.example.com\nlimits: {max_recipients: 0}\n",
            "tenants/acme.yaml": "name: acme\ndomains: [acme.example]\nroutes:\n\t- {host: a}\n",
            "lists/block.yaml": "name: block\naction: deny\n",
        },
    )
    source = load_policy(tmp_path)
    assert problem_texts(source.problems) == [
        "gateway.yaml:2:10: error: max_recipients: Input should be greater than or equal to 1",
        "lists/block.yaml:2:1: error: action: Input should be 'block', 'allow' or 'quarantine'",
        "tenants/acme.yaml:4:1: error: tab character: YAML indentation must use spaces",
    ]
    assert source.gateway is None
    assert source.tenants == ()
    assert source.lists == ()


def test_gateway_yml_is_accepted_and_a_second_gateway_file_warned(tmp_path: Path) -> None:
    write_policy(tmp_path, {"gateway.yaml": GATEWAY, "gateway.yml": "hostname: other.example.com\n"})
    source = load_policy(tmp_path)
    assert source.gateway is not None
    assert source.gateway.path == "gateway.yaml"
    assert problem_texts(source.problems) == ["gateway.yml:1:1: warning: ignored: gateway.yaml is used"]
    (tmp_path / "gateway.yaml").unlink()
    only_yml = load_policy(tmp_path)
    assert only_yml.problems == ()
    assert only_yml.gateway is not None
    assert only_yml.gateway.model.hostname == "other.example.com"


def test_non_utf8_file(tmp_path: Path) -> None:
    write_policy(tmp_path, {})
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists/latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    source = load_policy(tmp_path)
    assert problem_texts(source.problems) == [
        "lists/latin1.yaml:1:1: error: not UTF-8 text: invalid continuation byte at byte 9"
    ]


def test_merge_keys_load_and_resolve_to_the_merging_mapping(tmp_path: Path) -> None:
    tenant = """\
name: acme
domains: [acme.example]
routes:
  - &primary {host: mail1.acme.internal, port: 0}
  - <<: *primary
    host: mail2.acme.internal
"""
    source = load_policy(write_policy(tmp_path, {"tenants/acme.yaml": tenant}))
    assert problem_texts(source.problems) == [
        "tenants/acme.yaml:4:42: error: port: Input should be greater than or equal to 1",
        "tenants/acme.yaml:5:5: error: port: Input should be greater than or equal to 1",
    ]


# ---------------------------------------------------------------- libyaml fast path = ruamel path

needs_libyaml = pytest.mark.skipif(not LIBYAML_AVAILABLE, reason="PyYAML's C extension is not installed")
POLICIES = REPO / "policies"


def same_plain(a: Any, b: Any) -> bool:
    """Equal, with equal types all the way down (1, 1.0 and True differ) and in the same key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(same_plain(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same_plain(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


@needs_libyaml
@pytest.mark.parametrize(
    "text",
    [
        ACME,
        "name: acme\ndomains:\n- acme.example\n-   beta.example\nroutes:\n  - host: a\n    port: 25\n",
        "# comment\n\n---\nk: {a: 1, b: [x, {c: d}], e: {}}\nj: []\n...\n",
        "\ufeffk: 1\r\nj:\r\n  - 'a'\r\n  - \"b\"\r\n",
        "k: [a: 1, b]\nj: {a, b: }\n? complex\n: value\n",
        "ints: [5, +5, -5, 0x1A, 0o17, 017, 1_000, 0b101]\nfloats: [1.0, .5, -.inf, .NaN, 1e3, 6.8e+5]\n",
        "words: [yes, no, on, off, y, n, True, FALSE, Null, ~, '', 12:30, 1:2:3, 0o8, 1e, '5', \"true\"]\n",
        "dates: [2001-12-14, 2001-12-14t21:59:43.10-05:00, 2001-12-14 21:59:43.10, 2001-1-1]\nempty:\n",
        "unicode: [ключ, 日本語, 😀x, é]\nключ: {😀: a\u00a0b}\n\"dq\\u263A\": '\\u263A'\n",
        "lit: |\n  a\n\n  b\nfold: >-\n  a\n  b\nplain: a\n  continued\nq: 'it''s\n\n  x'\nd: \"a\\\n  b\"\n",
        "anchored: &a text\nalias: *a\nseq:\n  - &b 5\n  - *b\nnonspecific: ! 5\n",
        'regex: "(?i)\\\\b(gift|card)\\\\b"\nhash: a#b\ncomment: a # c\ncolon: a:b\nold_mac: 1\rnext: 2\r',
    ],
)
def test_libyaml_fast_path_gives_the_ruamel_result(text: str) -> None:
    fast = parse_yaml_libyaml(text)
    problems: list[Problem] = []
    slow = parse_yaml_ruamel("f.yaml", text, problems)
    assert problems == []
    assert fast is not None and slow is not None
    assert same_plain(fast[0], slow[0])
    assert fast[1] == slow[1]


@needs_libyaml
@pytest.mark.parametrize(
    "text",
    [
        "",  # empty, and not a mapping: the ruamel path words the problem
        "- a\n",
        "name: a\nname: b\n",  # duplicate key
        "k: {a: 1, a: 2}\n",
        "k: !!str 5\n",  # tags
        "k: !custom [1]\n",
        "--- !!map\nk: 1\n",
        "k: &a [1]\nj: *a\n",  # alias of a collection
        "base: &b {host: a}\nroute:\n  <<: *b\n  port: 25\n",  # merge key
        "1: a\n",  # non-text keys
        "null: a\n",
        "[a]: 1\n",
        "k: a\tb\n",  # tab: ruamel rejects it, libyaml does not
        "%YAML 1.1\n---\nk: yes\n",  # a directive may change the YAML version
        "k: 'a\u2028b'\nj: 1\n",  # a line break for libyaml only
        "k: 2024-13-45\n",  # resolves to a timestamp that is no date
        "k: 'open\n",  # syntax errors
        "a: b: c\n",
        "k: 1\n---\nk: 2\n",
        "k: " + "[" * 101 + "]" * 101 + "\n",  # ruamel's recursion limit decides, as before
    ],
)
def test_libyaml_fast_path_hands_over_to_ruamel(text: str) -> None:
    assert parse_yaml_libyaml(text) is None


@needs_libyaml
def test_example_policy_and_broken_files_load_the_same_on_both_paths(tmp_path: Path) -> None:
    # every file of the example policy takes the fast path
    assert all(parse_yaml_libyaml(path.read_text(encoding="utf-8")) is not None for path in POLICIES.rglob("*.yaml"))
    shutil.copytree(POLICIES, tmp_path / "policy")
    write_policy(
        tmp_path / "policy",
        {
            "tenants/broken.yaml": "name: broken\ndomains: [a.example, a.example]\n\t- x\n",
            "lists/dup.yaml": "name: dup\nname: again\naction: block\n",
            "rules/bad.yaml": "name: bad\nrules:\n  - id: r\n    when: {heder: {name: S, regex: x}}\n",
        },
        base=False,
    )
    fast = load_policy(tmp_path / "policy")
    slow = load_policy(tmp_path / "policy", parser="ruamel")
    assert fast.gateway is not None and fast.tenants and fast.lists and fast.rulesets
    assert problem_texts(fast.problems) == [
        "lists/dup.yaml:2:1: error: duplicate key 'name' (first at line 1)",
        "rules/bad.yaml:3:5: error: missing required key 'then'",
        "rules/bad.yaml:4:12: error: unknown condition 'heder'; did you mean 'header'? "
        "(a condition is one of: any, all, not, header, body, attachment, mime, check)",
        "tenants/broken.yaml:3:1: error: tab character: YAML indentation must use spaces",
    ]
    assert fingerprint(fast) == fingerprint(slow)


@pytest.mark.parametrize("enabled", [True, False])
def test_load_policy_pauses_the_garbage_collector_and_restores_it(tmp_path: Path, enabled: bool) -> None:
    was = gc.isenabled()
    try:
        (gc.enable if enabled else gc.disable)()
        load_policy(write_policy(tmp_path, {}))
        assert gc.isenabled() is enabled
    finally:
        (gc.enable if was else gc.disable)()


def test_duplicate_key_names_the_line_of_the_first_occurrence(tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "gateway.yaml").write_text("hostname: mx.example.com\n")
    (tmp_path / "lists" / "dup.yaml").write_text("name: dup\naction: block\naction: allow\n")
    problems = [p.format_text() for p in load_policy(tmp_path).problems]
    assert problems == ["lists/dup.yaml:3:1: error: duplicate key 'action' (first at line 2)"]
