"""The check modules' pure parts, the Checks models, `validate` of check settings and the
`check` rule condition (no network: the real peers are in tests/e2e/test_checks_*.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import ValidationError

from engine.checks import clamd, dnsbl
from engine.dns.resolver import DnsAnswer
from engine.graph.content import ContentIndex
from engine.mime.view import parse_message
from engine.policy import models as m
from tests.support.policies import ACME, problems_of, write_policy

# ---------------------------------------------------------------- DNSBL


def test_query_names_ipv4_ipv6_mapped() -> None:
    assert dnsbl.query_name("192.0.2.99", "bl.example") == "99.2.0.192.bl.example"
    assert dnsbl.query_name("::ffff:192.0.2.99", "bl.example") == "99.2.0.192.bl.example"
    # RFC 5782 §2.4: 2001:db8:1:2:3:4:567:89ab
    assert dnsbl.query_name("2001:db8:1:2:3:4:567:89ab", "bl.example") == (
        "b.a.9.8.7.6.5.0.4.0.0.0.3.0.0.0.2.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.bl.example"
    )
    assert dnsbl.query_name("unknown", "bl.example") is None


def answer(status: str, *records: str) -> DnsAnswer:
    return DnsAnswer("q", "A", status, records)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("dns", "returns", "expected"),
    [
        (answer("nxdomain"), [], "clean"),
        (answer("nodata"), [], "clean"),
        (answer("ok", "127.0.0.2"), [], "listed"),
        (answer("ok", "127.0.0.4", "127.0.0.2"), ["127.0.0.2"], "listed"),
        (answer("ok", "127.0.0.4"), ["127.0.0.2"], "clean"),
        (answer("ok", "127.255.255.254"), [], "error"),  # refused by the operator
        (answer("ok", "127.255.255.252", "127.0.0.2"), [], "error"),
        (answer("ok", "198.51.100.7"), [], "error"),  # NXDOMAIN rewriting resolver
        (answer("timeout"), [], "error"),
        (answer("servfail"), [], "error"),
    ],
)
def test_classify(dns: DnsAnswer, returns: list[str], expected: str) -> None:
    from ipaddress import IPv4Address

    assert dnsbl.classify(dns, [IPv4Address(r) for r in returns])[0] == expected


def test_link_domains_registrable_deduplicated_and_bounded() -> None:
    raw = (
        b"From: a@b.example\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        b'<a href="https://a.shop.co.uk/x">1</a> <a href="HTTP://user@b.shop.co.uk">2</a> '
        b'<a href="http://192.0.2.1/">ip</a> www.Other.example and http://co.uk/ text'
    )
    assert dnsbl.link_domains(raw, 10) == ("shop.co.uk", "other.example")
    assert dnsbl.link_domains(raw, 0) == ()
    assert dnsbl.link_domains(b"\xff\xfe garbage", 5) == ()


def test_link_domains_from_the_view_match_a_full_parse() -> None:
    from email.message import EmailMessage

    def build(html_cte: str | None, text_cte: str) -> bytes:
        msg = EmailMessage()
        msg["From"] = "a@b.example"
        msg["List-Unsubscribe"] = "<https://unsubscribe.example/x>"
        msg.set_content("plain www.plain-link.example and https://shared.example/", cte=text_cte)
        if html_cte is not None:
            long_path = "p" * 90
            msg.add_alternative(f'<a href="https://very-long-name-for-a-domain.example/{long_path}">x</a>'
                                '<a href="http://shared.example/">y</a>', subtype="html", cte=html_cte)
        return msg.as_bytes()

    for html_cte, text_cte in [("7bit", "7bit"), ("quoted-printable", "quoted-printable"), (None, "base64"),
                               ("base64", "7bit")]:
        raw = build(html_cte, text_cte)
        assert dnsbl.link_domains(raw, 10, parse_message(raw)) == dnsbl.link_domains(raw, 10), (html_cte, text_cte)
        assert "unsubscribe.example" not in dnsbl.link_domains(raw, 10, parse_message(raw))


# ---------------------------------------------------------------- clamd


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("stream: OK\0", ("clean", "", "")),
        ("stream: Win.Test.EICAR_HDB-1 FOUND\0", ("virus", "Win.Test.EICAR_HDB-1", "")),
        ("INSTREAM size limit exceeded. ERROR\0", ("error", "", clamd.REASON_SIZE_LIMIT)),
        ("stream: Can't allocate memory ERROR\0", ("error", "", clamd.REASON_CLAMD_ERROR)),
        ("what?", ("error", "", clamd.REASON_PROTOCOL)),
    ],
)
def test_clamd_replies(reply: str, expected: tuple[str, str, str]) -> None:
    assert clamd.parse_reply(reply) == expected


# ---------------------------------------------------------------- models


def test_checks_off_by_default_and_validated() -> None:
    checks = m.Checks()
    assert not (checks.spf.enabled or checks.dkim.enabled or checks.dmarc.enabled or checks.arc.enabled)
    with pytest.raises(ValidationError, match="unknown result softfial"):
        m.Checks.model_validate({"spf": {"scores": {"softfial": 1}}})
    with pytest.raises(ValidationError, match="expected tcp://HOST:PORT or unix:///path"):
        m.Checks.model_validate({"antivirus": {"clamd": "127.0.0.1:3310"}})
    with pytest.raises(ValidationError, match="unknown check 'spam'"):
        m.Rule.model_validate({"id": "x", "when": {"check": "spam"}, "then": {"score": 1}})
    with pytest.raises(ValidationError, match="invalid check result"):
        m.Tenant.model_validate({"name": "a", "domains": ["a.example"], "checks": {"spf": {"score": 1}}})


# ---------------------------------------------------------------- validate


def test_validate_arc_trust_needs_arc_and_dmarc(tmp_path: Path) -> None:
    gateway = "hostname: mx.example.com\nchecks:\n  arc: {enabled: true, trusted_sealers: [lists.example]}\n"
    write_policy(tmp_path, {"gateway.yaml": gateway})
    assert problems_of(tmp_path) == [
        "gateway.yaml:3:24: error: checks.arc.trusted_sealers needs arc and dmarc enabled (a trusted chain"
        " overrides DMARC failures)"
    ]


def test_validate_rules_and_overrides_name_running_checks(tmp_path: Path) -> None:
    gateway = "hostname: mx.example.com\nchecks:\n  dnsbl: [{zone: bl.example}]\n  antivirus: {clamd: 'tcp://127.0.0.1:3310'}\n"
    rules = (
        "name: r\nrules:\n"
        "  - {id: a, when: {check: dnsbl, result: [bl.example]}, then: {score: 1}}\n"
        "  - {id: b, when: {check: dnsbl, result: [other.example]}, then: {score: 1}}\n"
        "  - {id: c, when: {any: [{check: spf, result: [fail]}]}, then: {score: 1}}\n"
        "  - {id: d, when: {check: virus}, then: {score: 1}}\n"
    )
    tenant = ACME + "rules: [r]\nchecks:\n  dnsbl:bl.example: {score: 0}\n  uribl:x.example: {score: 0}\n"
    write_policy(tmp_path, {"gateway.yaml": gateway, "rules/r.yaml": rules, "tenants/acme.yaml": tenant})
    assert problems_of(tmp_path) == [
        "rules/r.yaml:4:20: error: rule 'b' tests dnsbl zone other.example, which gateway.yaml checks.dnsbl does"
        " not have: it could never match",
        "rules/r.yaml:5:27: error: rule 'c' tests check 'spf', which gateway.yaml checks does not run: it could"
        " never match",
        "tenants/acme.yaml:8:3: error: override of check 'uribl', which gateway.yaml checks does not run",
    ]


# ---------------------------------------------------------------- check condition


def test_check_condition_matches_check_results() -> None:
    rules = [
        m.Rule.model_validate({"id": "spf-bad", "when": {"check": "spf", "result": ["fail", "softfail"]},
                               "then": {"score": 1}}),
        m.Rule.model_validate({"id": "any-dnsbl", "when": {"check": "dnsbl"}, "then": {"score": 1}}),
        m.Rule.model_validate({"id": "dmarc-fail", "when": {"check": "dmarc", "result": ["fail"]},
                               "then": {"score": 1}}),
        m.Rule.model_validate({"id": "no-spf-pass", "when": {"not": {"check": "spf", "result": ["pass"]}},
                               "then": {"score": 1}}),
        m.Rule.model_validate({"id": "both", "when": {"all": [{"check": "virus"}, {"body": {"contains": ["hi"]}}]},
                               "then": {"score": 1}}),
    ]
    index = ContentIndex([rule.when for rule in rules])
    view = parse_message(b"Subject: x\r\n\r\nhi there\r\n")
    assert index.matching_rules(view) == [3]
    assert index.matching_rules(view, frozenset({"spf:softfail", "dnsbl:bl.example"})) == [0, 1, 3]
    assert index.matching_rules(view, frozenset({"spf:pass", "dmarc:reject"})) == [2]
    assert index.matching_rules(view, frozenset({"spf:pass", "virus:Eicar"})) == [4]


# ---------------------------------------------------------------- in the graph


def test_tenant_overrides_and_check_rules_in_the_verdict(tmp_path: Path) -> None:
    from engine.graph.build.compiler import load_graph
    from engine.graph.transaction import simulate
    from engine.graph.verdict import KIND_ANTIVIRUS, Hit

    gateway = "hostname: mx.example.com\nchecks:\n  spf: {enabled: true}\n  dnsbl: [{zone: bl.example}]\n" \
              "  antivirus: {clamd: 'tcp://127.0.0.1:3310'}\nrules: [r]\n"
    rules = "name: r\nrules:\n  - {id: spf-softfail-hold, when: {check: spf, result: [softfail]}, " \
            "then: {action: quarantine}}\n"
    beta = "name: beta\ndomains: [beta.example]\nroutes: [{host: mail.beta.example}]\nlists: [allow]\n" \
           "checks:\n  spf:fail: {score: 20}\n  dnsbl:*: {action: reject}\n"
    allow = "name: allow\naction: allow\nsenders: ['*@friend.example']\n"
    write_policy(tmp_path, {"gateway.yaml": gateway, "rules/r.yaml": rules, "tenants/beta.yaml": beta,
                            "lists/allow.yaml": allow})
    result = load_graph(tmp_path)
    assert result.graph is not None, result.problems
    graph = result.graph
    def verdicts(*hits: Hit, sender: str = "a@sender.example") -> dict[str, tuple[str, float]]:
        raw = f"From: {sender}\r\nSubject: hi\r\n\r\nhello\r\n".encode()
        outcome = simulate(graph, raw=raw, mail_from=sender, rcpts=["x@acme.example", "y@beta.example"],
                           client_ip="192.0.2.1", external_hits=hits)
        return {name: (v.action.value, v.score) for name, v in outcome.decision.tenants.items()}

    spf_fail = Hit("spf:fail", "check", 3.0)
    assert verdicts(spf_fail) == {"acme": ("tag", 3.0), "beta": ("reject", 20.0)}  # beta's own score
    listed = Hit("dnsbl:bl.example", "check", 5.0)
    assert verdicts(listed) == {"acme": ("tag", 5.0), "beta": ("reject", 5.0)}  # beta's own action (dnsbl:*)
    assert verdicts(Hit("spf:softfail", "check", 1.0)) == {"acme": ("quarantine", 1.0), "beta": ("quarantine", 1.0)}
    virus = Hit("virus:Eicar", KIND_ANTIVIRUS, 0.0, m.Action.reject, "", "virus found")
    # a virus overrides beta's allow list; without it the allow list delivers
    assert verdicts(virus, sender="a@friend.example")["beta"] == ("reject", 0.0)
    assert verdicts(sender="a@friend.example")["beta"] == ("deliver", 0.0)


def test_dkim_rsa_speedup_answers_as_dkimpy() -> None:
    import hashlib

    import dkim.crypto
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa, utils

    from engine.dkim import dkimpy_patch

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    public = dkim.crypto.parse_public_key(der)
    cases = []
    for name, algorithm in (("sha256", hashes.SHA256()), ("sha1", hashes.SHA1())):
        digest = hashlib.new(name, b"the signed headers")
        signature = key.sign(digest.digest(), padding.PKCS1v15(), utils.Prehashed(algorithm))
        broken = bytes([signature[0] ^ 1]) + signature[1:]
        cases += [(digest, signature), (digest, broken), (hashlib.new(name, b"other"), signature),
                  (digest, signature + b"\0"), (digest, b"\0" * 8)]
    original, fast = dkim.crypto.RSASSA_PKCS1_v1_5_verify, dkimpy_patch.rsassa_pkcs1_v1_5_verify
    answers = [(original(h, s, public), fast(h, s, public)) for h, s in cases]
    assert [a for a, _ in answers] == [b for _, b in answers]
    assert [a for a, _ in answers].count(True) == 2


@pytest.mark.parametrize(
    "message",
    [
        b"From: a@b.example\r\nSubject: x\r\n\r\nbody\r\nline 2\r\n",
        b"From: a@b.example\nSubject: x\n\nbody\nline 2\n",
        b"From: a@b.example\r\nSubject: x\r\n  folded\r\n\tagain\r\n\r\nmixed\nends\r\nand\rlone CR\r\n",
        b"From: a@b.example\r\nSubject: no body\r\n",
        b"From: a@b.example\r\nSubject: no end",
        b"From: a@b.example\r\n\r\n",
        b"From sender@b.example Tue Dec  1 10:00:00 2026\nFrom: a@b.example\n\nx",
        b"\r\nonly a body\r\n",
        b"",
        b"From: a\r\n\r\n\r\n\r\n",
        b"From: a\r\r\n\r\nx\r\r\n",
        b"From: a\r\nTo: b\nSubject: lone LF in the header\r\n\r\nbody\r\n",
        b"\r\nFrom: a\r\n\r\nbody",
        b"\rFrom: a\r\n\r\nbody",
        b"From: a\r\n\tfold\r\nX-\x7f: bad name\r\n\r\nbody",
        b"From: a\r\nNo colon here\r\n\r\nbody",
        b"From: a\r\n: empty name\r\n\r\nbody",
        b"From: a\r\nname with space: x\r\n\r\nbody",
        b"From sender@b.example Tue Dec  1\r\nFrom: a\r\n\r\nx\nlf body\r\n",
        b" leading fold\r\nFrom: a\r\n\r\nx",
        b"From: a\r\nSubject: x\r\n\r\n\r\n",
    ],
)
def test_rfc822_parse_speedup_answers_as_dkimpy(message: bytes) -> None:
    """The same fields and body, or the same exception type (bad names, a leading fold)."""
    from engine.dkim import dkimpy_patch

    def outcome(parse: Callable[[bytes], object]) -> object:
        try:
            return parse(message)
        except Exception as exc:  # the exception type is the answer compared
            return type(exc)

    assert outcome(dkimpy_patch.rfc822_parse) == outcome(dkimpy_patch._RFC822_PARSE)


@pytest.mark.parametrize("message", [b"Bad header line\r\n\r\nx", b" leading continuation\r\n\r\nx"])
def test_rfc822_parse_speedup_fails_as_dkimpy(message: bytes) -> None:
    from engine.dkim import dkimpy_patch

    with pytest.raises(Exception) as original:
        dkimpy_patch._RFC822_PARSE(message)
    with pytest.raises(type(original.value)):
        dkimpy_patch.rfc822_parse(message)
