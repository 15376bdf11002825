"""engine.policy.validate and `liveprism validate`: semantic problems at exact FILE:LINE:COL, CLI formats."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from engine.cli.main import app
from tests.support.policies import ACME, GATEWAY, problems_of, write_policy


def rule_file(name: str, *rules: str) -> str:
    """A rule set file; each rule is `id|when-flow-mapping`."""
    lines = [f"name: {name}", "rules:"]
    for rule in rules:
        rule_id, when = rule.split("|", 1)
        lines += [f"  - id: {rule_id}", f"    when: {when}", "    then: {score: 1}"]
    return "\n".join(lines) + "\n"


def test_valid_policy_has_no_problems(tmp_path: Path) -> None:
    assert problems_of(write_policy(tmp_path, {})) == []


# ---------------------------------------------------------------- names and ids


def test_duplicate_tenant_name_reported_at_second_occurrence(tmp_path: Path) -> None:
    write_policy(
        tmp_path, {"tenants/acme2.yaml": "name: acme\ndomains: [acme2.example]\nroutes: [{host: a.example}]\n"}
    )
    assert problems_of(tmp_path) == [
        "tenants/acme2.yaml:1:1: error: duplicate tenant name 'acme': already defined at tenants/acme.yaml:1",
        "tenants/acme2.yaml:1:1: warning: name 'acme' differs from the file name 'acme2': rename one of them",
    ]


def test_duplicate_list_and_rule_set_names(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "lists/a.yaml": "name: a\naction: block\n",
            "lists/b.yaml": "# copy of a\nname: a\naction: allow\n",
            "rules/x.yaml": "name: x\n",
            "rules/y.yaml": "\n\nname: x\n",
        },
    )
    assert problems_of(tmp_path) == [
        "lists/b.yaml:2:1: error: duplicate list name 'a': already defined at lists/a.yaml:1",
        "lists/b.yaml:2:1: warning: name 'a' differs from the file name 'b': rename one of them",
        "rules/y.yaml:3:1: error: duplicate rule set name 'x': already defined at rules/x.yaml:1",
        "rules/y.yaml:3:1: warning: name 'x' differs from the file name 'y': rename one of them",
    ]


def test_duplicate_rule_ids_across_files_and_within_one(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "rules/a.yaml": rule_file("a", "phish|{body: {contains: [x]}}"),
            "rules/b.yaml": rule_file("b", "spam|{body: {contains: [y]}}", "phish|{body: {contains: [z]}}"),
            "rules/c.yaml": rule_file("c", "spam|{body: {contains: [y]}}"),
        },
    )
    assert problems_of(tmp_path) == [
        "rules/b.yaml:6:5: error: duplicate rule id 'phish': already defined at rules/a.yaml:3",
        "rules/c.yaml:3:5: error: duplicate rule id 'spam': already defined at rules/b.yaml:3",
    ]


def test_file_name_differs_from_name_is_a_warning(tmp_path: Path) -> None:
    write_policy(tmp_path, {"lists/blocked.yaml": "action: block\nname: block\n"})
    assert problems_of(tmp_path) == [
        "lists/blocked.yaml:2:1: warning: name 'block' differs from the file name 'blocked': rename one of them"
    ]


# ---------------------------------------------------------------- tenants


def test_domain_owned_by_two_tenants_is_reported_at_both(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "tenants/acme.yaml": "name: acme\ndomains: [acme.example, shared.example]\nroutes: [{host: a.example}]\n",
            "tenants/beta.yaml": "name: beta\ndomains:\n  - beta.example\n  - shared.example\n"
            "routes: [{host: b.example}]\n",
        },
    )
    assert problems_of(tmp_path) == [
        "tenants/acme.yaml:2:25: error: domain 'shared.example' is also owned by tenant 'beta' (tenants/beta.yaml:4)",
        "tenants/beta.yaml:4:5: error: domain 'shared.example' is also owned by tenant 'acme' (tenants/acme.yaml:2)",
    ]


def test_tenant_without_routes(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "tenants/acme.yaml": "name: acme\ndomains: [acme.example]\nroutes: []\n",
            "tenants/beta.yaml": "# no routes key at all\nname: beta\ndomains: [beta.example]\n",
        },
    )
    assert problems_of(tmp_path) == [
        "tenants/acme.yaml:3:1: error: tenant 'acme' has no routes: accepted mail could not be delivered",
        "tenants/beta.yaml:2:1: error: tenant 'beta' has no routes: accepted mail could not be delivered",
    ]


def test_missing_list_and_rule_set_references(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "gateway.yaml": "hostname: mx.example.com\nlists: [global-block]\nrules:\n  - nowhere\n",
            "tenants/acme.yaml": ACME + "lists: [acme-block, content]\nrules: [content, acme-block]\n",
            "lists/acme-block.yaml": "name: acme-block\naction: block\n",
            "rules/content.yaml": "name: content\n",
        },
    )
    assert problems_of(tmp_path) == [
        "gateway.yaml:2:9: error: unknown list 'global-block'",
        "gateway.yaml:4:5: error: unknown rule set 'nowhere'",
        "tenants/acme.yaml:5:21: error: unknown list 'content' (it is a rule set: put it under rules:)",
        "tenants/acme.yaml:6:18: error: unknown rule set 'acme-block' (it is a list: put it under lists:)",
    ]


def test_reference_to_a_broken_file_reports_only_the_file(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "tenants/acme.yaml": ACME + "lists: [acme-block]\n",
            "lists/acme-block.yaml": "name: acme-block\naction: block\nsenders: [nobody]\n",
        },
    )
    assert problems_of(tmp_path) == [
        "lists/acme-block.yaml:3:11: error: senders: invalid address pattern 'nobody': expected user@domain or *@domain"
    ]


# ---------------------------------------------------------------- regexes


def test_regexes_re2_cannot_compile(tmp_path: Path) -> None:
    rules = """\
name: content
rules:
  - id: lookahead
    when: {header: {name: Subject, regex: '(?=invoice)'}}
    then: {score: 1}
  - id: nested
    when:
      all:
        - body: {regex: 'fine'}
        - not:
            body: {regex: '(a)\\1'}
        - attachment: {filename: '[a-'}
    then: {score: 1}
"""
    write_policy(tmp_path, {"rules/content.yaml": rules})
    assert problems_of(tmp_path) == [
        "rules/content.yaml:4:36: error: regex: RE2 cannot compile '(?=invoice)': invalid perl operator: (?=",
        "rules/content.yaml:11:20: error: regex: RE2 cannot compile '(a)\\1': invalid escape sequence: \\1",
        "rules/content.yaml:12:24: error: filename: RE2 cannot compile '[a-': missing ]: [a-",
    ]


# ---------------------------------------------------------------- lists


def test_entry_on_allow_and_block_list_warns_at_the_allow_entry(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "lists/allow.yaml": "name: allow\naction: allow\nsenders: [boss@partner.example]\n"
            "domains:\n  - partner.example\n  - spam.example\nnetworks: [192.0.2.0/24]\n",
            "lists/block.yaml": "name: block\naction: block\ndomains: [spam.example]\nnetworks:\n"
            "  - 198.51.100.0/24\n  - 192.0.2.0/24\n",
            "lists/hold.yaml": "name: hold\naction: quarantine\nsenders: [boss@partner.example]\n",
        },
    )
    assert problems_of(tmp_path) == [
        "lists/allow.yaml:6:5: warning: domain 'spam.example' is also on block list 'block' (lists/block.yaml:3),"
        " which takes precedence",
        "lists/allow.yaml:7:12: warning: network '192.0.2.0/24' is also on block list 'block' (lists/block.yaml:6),"
        " which takes precedence",
    ]


# ---------------------------------------------------------------- secrets


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_secret_tracked_by_git_is_an_error(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "gateway.yaml": "hostname: mx.example.com\ntls: {cert: tls/cert.pem, key: tls/key.pem}\n",
            "tenants/acme.yaml": ACME + "outbound:\n  dkim: {selector: lp1, private_key: keys/acme.pem}\n",
            "tenants/beta.yaml": "name: beta\ndomains: [beta.example]\nroutes: [{host: b.example}]\n"
            "outbound:\n  dkim: {selector: lp1, private_key: 'env:BETA_DKIM'}\n",
            "tls/cert.pem": "certificate\n",
            "tls/key.pem": "secret\n",
            "keys/acme.pem": "secret\n",
        },
    )
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "tls/cert.pem", "tls/key.pem"], check=True)
    # keys/acme.pem exists but is not tracked: fine; env:BETA_DKIM is fine
    assert [p for p in problems_of(tmp_path) if "error" in p] == [
        "gateway.yaml:2:27: error: secret 'tls/key.pem' is tracked by git: remove it from the repository "
        "(git rm --cached) and reference it by a path outside git or as env:NAME"
    ]


def test_secrets_outside_a_git_work_tree_are_not_checked(tmp_path: Path) -> None:
    write_policy(tmp_path, {"gateway.yaml": "hostname: mx.example.com\ntls: {cert: c.pem, key: k.pem}\n"})
    (tmp_path / "k.pem").write_text("secret\n")
    if subprocess.run(["git", "-C", str(tmp_path), "rev-parse"], capture_output=True, check=False).returncode == 0:
        pytest.skip("tmp_path is inside a git work tree")
    assert problems_of(tmp_path) == []


# ---------------------------------------------------------------- keys not carried out yet


def test_settings_not_built_yet_are_refused_not_ignored(tmp_path: Path) -> None:
    write_policy(tmp_path, {
        "gateway.yaml": "hostname: mx.example.com\nlisteners:\n  outbound: {port: 2587}\n"
                        "storage: {url: 'postgresql://db.example/liveprism'}\n",
        "tenants/acme.yaml": ACME + "outbound: {networks: [198.51.100.0/24]}\n",
    })
    assert problems_of(tmp_path) == [
        "gateway.yaml:4:11: error: not supported yet: a server database; remove storage.url to use the embedded store",
    ]


# ---------------------------------------------------------------- outbound

HASH = "$argon2id$v=19$m=65536,t=3,p=4$ZqmiIQhHGkRI6ZUMa51sjA$USXxi5exKdnxFCWcYO/HG9KCskXXVLevQEXeq71yAgo"
TLS_GATEWAY = "hostname: mx.example.com\nlisteners:\n  outbound: {port: 2587}\ntls: {cert: c.pem, key: 'env:K'}\n"
BETA = "name: beta\ndomains: [beta.example]\nroutes: [{host: b.example}]\n"


def test_outbound_users_file_lines_that_are_not_argon2_hashes_are_errors_at_file_line(tmp_path: Path) -> None:
    write_policy(tmp_path, {
        "gateway.yaml": TLS_GATEWAY,
        "tenants/acme.yaml": ACME + "outbound: {auth: {users: ../secrets/acme-users}}\n",
        "tenants/beta.yaml": BETA + "outbound: {auth: {users: beta-users}}\n",
        "../secrets/acme-users": f"# acme's users\nalice:{HASH}\n\nbob:hunter2\ncarol\n"
                                 "dave:$2b$12$abcdefghijklmnopqrstuv\n",
        "beta-users": f"alice:{HASH}\n",
    })
    assert problems_of(tmp_path) == [
        "../secrets/acme-users:4:1: error: user 'bob': not an argon2 hash (plaintext or unknown format);"
        " make one with `liveprism users hash`",
        "../secrets/acme-users:5:1: error: not a `user:hash` line",
        "../secrets/acme-users:6:1: error: user 'dave': not an argon2 hash (plaintext or unknown format);"
        " make one with `liveprism users hash`",
        "tenants/beta.yaml:4:19: error: user 'alice' is also a user of tenant 'acme': a user belongs to one tenant",
    ]
    assert "hunter2" not in " ".join(problems_of(tmp_path))  # a plaintext password is never echoed


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_outbound_users_file_tracked_by_git_is_an_error(tmp_path: Path) -> None:
    write_policy(tmp_path, {
        "gateway.yaml": TLS_GATEWAY,
        "tenants/acme.yaml": ACME + "outbound: {auth: {users: secrets/acme-users}}\n",
        "secrets/acme-users": f"alice:{HASH}\n",
    })
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run(["git", "-C", str(tmp_path), "add", "secrets/acme-users"], check=True)
    assert problems_of(tmp_path) == [
        "tenants/acme.yaml:5:19: error: secret 'secrets/acme-users' is tracked by git: remove it from the repository"
        " (git rm --cached) and reference it by a path outside git or as env:NAME",
    ]


def test_outbound_settings_that_cannot_work(tmp_path: Path) -> None:
    write_policy(tmp_path, {
        "gateway.yaml": "hostname: mx.example.com\nlisteners:\n  inbound: {port: 2525}\n  outbound: {port: 2525}\n",
        "tenants/acme.yaml": ACME + "outbound:\n  auth: {users: 'env:ACME_USERS'}\n"
                             "  sender_domains: [news.beta.example, acme-mail.example]\n",
        "tenants/beta.yaml": BETA + "outbound: {sender_domains: [acme-mail.example]}\n",
    })
    problems = problems_of(tmp_path)
    assert problems == [
        "gateway.yaml:4:14: error: listeners.outbound uses the inbound listener's port 2525",
        "tenants/acme.yaml:6:3: error: outbound.auth needs STARTTLS: set tls.cert and tls.key in gateway.yaml"
        " (AUTH is only offered after STARTTLS, RFC 4954 §4)",
        "tenants/acme.yaml:6:10: warning: environment variable ACME_USERS is not set: SMTP AUTH fails for"
        " tenant 'acme'",
        "tenants/acme.yaml:7:20: error: sending domain news.beta.example is tenant 'beta's (tenants/beta.yaml:2):"
        " no tenant may send as another",
        "tenants/beta.yaml:4:29: error: sending domain acme-mail.example is tenant 'acme's (tenants/acme.yaml:7):"
        " no tenant may send as another",
    ]


def test_outbound_settings_without_an_outbound_listener_warn(tmp_path: Path) -> None:
    write_policy(tmp_path, {"tenants/acme.yaml": ACME + "outbound: {networks: [198.51.100.0/24]}\n"})
    assert problems_of(tmp_path) == [
        "tenants/acme.yaml:5:1: warning: gateway.yaml sets no listeners.outbound: these settings are used by"
        " `explain --direction outbound` only, no mail is accepted from them",
    ]


def test_a_missing_dkim_key_warns_that_outbound_mail_would_wait(tmp_path: Path) -> None:
    write_policy(tmp_path, {
        "gateway.yaml": "hostname: mx.example.com\nlisteners:\n  inbound: {port: 2525}\n  outbound: {port: 2587}\n",
        "tenants/acme.yaml": ACME + "outbound:\n  networks: [198.51.100.0/24]\n"
                             "  dkim: {selector: lp1, private_key: keys/acme.pem}\n",
    })
    assert problems_of(tmp_path) == [
        "tenants/acme.yaml:7:25: warning: DKIM key keys/acme.pem does not exist: tenant 'acme's outbound mail waits"
        " in the queue (4.7.0), never unsigned, until it does (liveprism dkim keygen DIR --tenant acme)",
    ]
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "acme.pem").write_text("a key\n")
    assert problems_of(tmp_path) == []


# ---------------------------------------------------------------- all at once


def test_three_different_errors_in_one_run(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "gateway.yaml": "hostname: mx.example.com\nlisteners: {inbound: {port: 0}}\n",
            "tenants/beta.yaml": "name: beta\ndomains: [acme.example]\nroutes: [{host: b.example}]\n",
            "rules/content.yaml": rule_file("content", "bad|{body: {regex: '(?<=x)'}}"),
        },
    )
    assert problems_of(tmp_path) == [
        "gateway.yaml:2:23: error: port: Input should be greater than or equal to 1",
        "rules/content.yaml:4:19: error: regex: RE2 cannot compile '(?<=x)': invalid perl operator: (?<=",
        "tenants/acme.yaml:2:11: error: domain 'acme.example' is also owned by tenant 'beta' (tenants/beta.yaml:2)",
        "tenants/beta.yaml:2:11: error: domain 'acme.example' is also owned by tenant 'acme' (tenants/acme.yaml:2)",
    ]


# ---------------------------------------------------------------- CLI


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def test_cli_valid_policy_exits_0(tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    write_policy(tmp_path / "policies", {})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate"])  # default directory: ./policies
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "0 errors, 0 warnings in 2 files\n"


def test_cli_warnings_alone_exit_0(tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    write_policy(tmp_path / "policies", {"lists/blocked.yaml": "name: block\naction: block\n"})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "policies"])
    assert result.exit_code == 0
    assert result.stdout == (
        "policies/lists/blocked.yaml:1:1: warning: name 'block' differs from the file name 'blocked': "
        "rename one of them\n"
    )
    assert result.stderr == "0 errors, 1 warning in 3 files\n"


def test_cli_errors_exit_1_with_paths_relative_to_cwd(
    tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_policy(tmp_path / "policies", {"gateway.yaml": "hostname: mx.example.com\nlimits: {max_recipients: 0}\n"})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", str(tmp_path / "policies")])
    assert result.exit_code == 1
    assert result.stdout == (
        "policies/gateway.yaml:2:10: error: max_recipients: Input should be greater than or equal to 1\n"
    )
    assert result.stderr == "1 error, 0 warnings in 2 files\n"


def test_cli_missing_directory_exits_2(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_cli_json_format(tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    write_policy(tmp_path / "p", {"tenants/acme.yaml": "name: acme\ndomains: [acme.example]\n"})
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "p", "--format", "json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "valid": False,
        "problems": [
            {
                "severity": "error",
                "file": "p/tenants/acme.yaml",
                "line": 1,
                "col": 1,
                "message": "tenant 'acme' has no routes: accepted mail could not be delivered",
            }
        ],
    }


def test_cli_json_format_valid(tmp_path: Path, runner: CliRunner) -> None:
    result = runner.invoke(app, ["validate", str(write_policy(tmp_path, {})), "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"valid": True, "problems": []}


def test_cli_github_format(tmp_path: Path, runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    write_policy(
        tmp_path / "p",
        {
            "tenants/acme.yaml": "name: acme\ndomains: [acme.example]\nroutes: []\n",
            "lists/blocked.yaml": "name: block\naction: block\n",
        },
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["validate", "p", "--format", "github"])
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "::warning file=p/lists/blocked.yaml,line=1,col=1::name 'block' differs from the file name 'blocked': "
        "rename one of them",
        "::error file=p/tenants/acme.yaml,line=3,col=1::tenant 'acme' has no routes: accepted mail could not be "
        "delivered",
    ]


# ---------------------------------------------------------------- settings that cannot work


def test_thresholds_must_rise_after_tenant_overrides(tmp_path: Path) -> None:
    write_policy(
        tmp_path,
        {
            "gateway.yaml": GATEWAY + "scoring: {tag_at: 3, quarantine_at: 6, reject_at: 15}\n",
            "tenants/acme.yaml": ACME + "scoring: {quarantine_at: 20}\n",
        },
    )
    assert problems_of(tmp_path) == [
        "tenants/acme.yaml:5:1: error: scoring thresholds must rise: tag_at 3 <= quarantine_at 20 <= reject_at 15"
        " (after tenant overrides)",
    ]


def test_tls_needs_cert_and_key(tmp_path: Path) -> None:
    write_policy(tmp_path, {"gateway.yaml": GATEWAY + "tls: {cert: keys/cert.pem}\n"})
    assert problems_of(tmp_path) == [
        "gateway.yaml:2:1: error: tls needs both cert and key (STARTTLS cannot be offered with one)"
    ]


def test_listed_recipients_without_addresses(tmp_path: Path) -> None:
    write_policy(tmp_path, {"tenants/acme.yaml": ACME + "recipients: {accept: listed}\n"})
    assert problems_of(tmp_path) == [
        "tenants/acme.yaml:5:1: error: recipients: accept: listed with no addresses refuses every recipient"
    ]


def test_routes_pointing_at_the_gateway_itself_are_errors(tmp_path: Path) -> None:
    gateway = (
        "hostname: mx.gw.example\n"
        "mx_hosts: [{name: mx2.gw.example, ipv4: [192.0.2.10]}]\n"
        "listeners: {inbound: {address: 127.0.0.1, port: 2525}, outbound: {address: 0.0.0.0, port: 2587}}\n"
    )
    routes = [
        "{host: mx.gw.example}", "{host: MX2.gw.example.}", "{host: 192.0.2.10}", "{host: localhost, port: 2525}",
        "{host: 127.0.0.5, port: 2587}", "{host: mail.acme.example, port: 2525}", "{host: 127.0.0.1, port: 25}",
    ]
    write_policy(tmp_path, {
        "gateway.yaml": gateway,
        "tenants/acme.yaml": "name: acme\ndomains: [acme.example]\nroutes:\n" + "".join(f"  - {r}\n" for r in routes),
    })
    found = [p for p in problems_of(tmp_path) if "points at this gateway itself" in p]
    assert [p.split(":")[1] for p in found] == ["4", "5", "6", "7", "8"]  # the last two are other hosts
    assert "it names this gateway (mx.gw.example)" in found[0]
    assert "localhost:2525 is this gateway's inbound listener (127.0.0.1:2525)" in found[3]
    assert "127.0.0.5:2587 is this gateway's outbound listener (0.0.0.0:2587)" in found[4]


# ---------------------------------------------------------------- delivery keys


def test_tls_ca_file_must_be_a_readable_ca_bundle(tmp_path: Path) -> None:
    write_policy(tmp_path, {"gateway.yaml": "hostname: mx.example.com\ndelivery: {tls_ca_file: certs/lab-ca.pem}\n"})
    [problem] = problems_of(tmp_path)
    assert problem.startswith("gateway.yaml:2:") and "error: delivery.tls_ca_file certs/lab-ca.pem: not a readable" \
        in problem
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "lab-ca.pem").write_text("not a certificate\n")
    assert len(problems_of(tmp_path)) == 1
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "1", "-subj", "/CN=lab CA", "-keyout", str(tmp_path / "ca.key"),
                    "-out", str(tmp_path / "certs" / "lab-ca.pem")], check=True, capture_output=True)
    assert problems_of(tmp_path) == []


def test_private_next_hops_takes_refuse_or_allow(tmp_path: Path) -> None:
    write_policy(tmp_path, {"gateway.yaml": "hostname: mx.example.com\ndelivery: {private_next_hops: sometimes}\n"})
    [problem] = problems_of(tmp_path)
    assert problem.startswith("gateway.yaml:2:") and "'refuse' or 'allow'" in problem
