"""The filter graph (engine/graph): decisions, stages, multi-tenant replies, open relay, direction,
`explain --json`, and the worked example policy in policies/.

Policies are written to tmp_path as YAML and go through `load_graph`, the path `serve` and
`explain` use.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from engine.cli.main import app
from engine.graph.build.compiler import load_graph
from engine.graph.filter_graph import FilterGraph
from engine.graph.loops import own_trace_ids
from engine.graph.transaction import Evaluation, simulate
from engine.graph.verdict import (
    KIND_ANTIVIRUS,
    KIND_RULE,
    REASON_ALLOW_LIST,
    REASON_BLOCK_LIST,
    REASON_RELAY_DENIED,
    REASON_RULE_ACTION,
    REASON_SCORE,
    REASON_UNKNOWN_USER,
    REASON_VIRUS,
    Decision,
    Hit,
    RcptResult,
    TenantVerdict,
)
from engine.mime.view import parse_message
from engine.policy.models import Action, Direction
from tests.support.corpus import CLEAN, EXAMPLE_MESSAGES
from tests.support.messages import GTUBE, message
from tests.support.policies import write_policy
from tests.support.processes import REPO

EXAMPLE = REPO / "policies"

NEUTRAL_IP = "192.0.2.1"  # on no list
SENDER = "news@sender.example"

# ---------------------------------------------------------------- the test policy

POLICY = {
    "gateway.yaml": """\
        hostname: mx.test.example
        scoring: {tag_at: 3.0, quarantine_at: 6.0, reject_at: 15.0, subject_prefix: "[SPAM] "}
        checks:
          antivirus: {clamd: "tcp://127.0.0.1:3310", on_virus: reject}
        lists: [global-block]
        rules: [base]
        """,
    "tenants/acme.yaml": """\
        name: acme
        domains: [acme.example]
        routes: [{host: mail1.acme.internal, port: 25, priority: 10}, {host: mail2.acme.internal, priority: 20}]
        lists: [acme-allow, acme-block]
        rules: [acme-rules]
        scoring: {quarantine_at: 5.0}
        outbound: {networks: [198.18.0.0/24]}
        """,
    "tenants/globex.yaml": """\
        name: globex
        domains: [globex.example, globex-corp.example]
        routes: [{host: mx.globex.internal}]
        rules: [globex-rules]
        scoring: {subject_prefix: "[SUSPECTED SPAM] "}
        """,
    "tenants/initech.yaml": """\
        name: initech
        domains: [initech.example, support.initech.example]
        routes: [{host: mx.initech.internal}]
        recipients:
          accept: listed
          addresses: [peter@initech.example, "*@support.initech.example"]
        """,
    "lists/global-block.yaml": """\
        name: global-block
        action: block
        senders: [spammer@bad.example, "*@spam.example"]
        domains: [phish.example]
        networks: [203.0.113.0/24, "2001:db8:bad::/48"]
        """,
    "lists/acme-allow.yaml": """\
        name: acme-allow
        action: allow
        senders: [billing@partner.example]
        networks: [198.51.100.0/24]
        """,
    "lists/acme-block.yaml": """\
        name: acme-block
        action: block
        senders: ["*@rival.example"]
        domains: [evil-from.example]
        networks: [192.0.2.128/25]
        """,
    "rules/base.yaml": """\
        name: base
        rules:
          - id: reject-word
            when: {body: {contains: [rejectme]}}
            then: {action: reject, message: "no thanks"}
          - id: tempfail-word
            when: {body: {contains: [laterplease]}}
            then: {action: tempfail}
          - id: quarantine-word
            when: {body: {contains: [holdme]}}
            then: {action: quarantine}
          - id: two-points
            when: {body: {contains: [twopoints]}}
            then: {score: 2.0}
          - id: four-points
            when: {body: {contains: [fourpoints]}}
            then: {score: 4.0}
          - id: five-points
            when: {body: {contains: [fivepoints]}}
            then: {score: 5.0}
          - id: sixteen-points
            when: {body: {contains: [sixteenpoints]}}
            then: {score: 16.0}
          - id: outbound-only
            direction: outbound
            when: {body: {contains: [secretproject]}}
            then: {action: reject}
          - id: both-ways
            direction: both
            when: {body: {contains: [bothways]}}
            then: {score: 4.0}
          - id: inbound-by-default
            when: {body: {contains: [inboundonly]}}
            then: {score: 4.0}
        """,
    "rules/acme-rules.yaml": """\
        name: acme-rules
        rules:
          - id: acme-reject
            when: {body: {contains: [acmeno]}}
            then: {action: reject}
          - id: acme-tempfail
            when: {body: {contains: [acmewait]}}
            then: {action: tempfail, message: "acme is busy"}
          - id: acme-hold
            when: {body: {contains: [acmehold]}}
            then: {action: quarantine}
        """,
    "rules/globex-rules.yaml": """\
        name: globex-rules
        rules:
          - id: globex-reject
            when: {body: {contains: [globexno]}}
            then: {action: reject}
        """,
}


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> FilterGraph:
    result = load_graph(write_policy(tmp_path_factory.mktemp("policy"), POLICY, base=False, dedent=True))
    assert result.graph is not None, [p.format_text() for p in result.problems]
    return result.graph


@pytest.fixture(scope="module")
def example() -> FilterGraph:
    result = load_graph(EXAMPLE)
    assert result.graph is not None, [p.format_text() for p in result.problems]
    return result.graph


def explain(graph: FilterGraph, **kwargs: Any) -> tuple[Decision, tuple[RcptResult, ...]]:
    """A whole transaction as serve runs it (`simulate`): the decision and each RCPT's result."""
    outcome = simulate(graph, **kwargs)
    return outcome.decision, outcome.rcpt_results


def decide(
    graph: FilterGraph,
    raw: bytes,
    tenants: dict[str, list[str]],
    *,
    client_ip: str = NEUTRAL_IP,
    mail_from: str = SENDER,
    direction: Direction = Direction.inbound,
    external_hits: tuple[Hit, ...] = (),
) -> Decision:
    evaluation = Evaluation.begin(graph, client_ip, "client.example", direction)
    evaluation.mail_from = mail_from  # the DATA stage alone: envelope stages are tested on their own
    evaluation.recipients = {tenant: list(rcpts) for tenant, rcpts in tenants.items()}
    return evaluation.data(parse_message(raw), external_hits)


def acme_copy(graph: FilterGraph, raw: bytes, **kwargs: object) -> TenantVerdict:
    decision = decide(graph, raw, {"acme": ["bob@acme.example"]}, **kwargs)  # type: ignore[arg-type]
    return decision.tenants["acme"]


def rule_ids(verdict: TenantVerdict) -> set[str]:
    return {hit.id for hit in verdict.hits if hit.kind == KIND_RULE}


VIRUS = Hit("clamd", KIND_ANTIVIRUS, 0.0, Action.reject, "clamd", "Eicar-Test-Signature found")

# ---------------------------------------------------------------- precedence for one tenant copy


def test_clean_message_is_delivered(graph: FilterGraph) -> None:
    verdict = acme_copy(graph, message())
    assert (verdict.action, verdict.score, verdict.hits) == (Action.deliver, 0.0, ())
    assert verdict.routes == ("mail1.acme.internal:25", "mail2.acme.internal:25")


def test_antivirus_beats_allow_list(graph: FilterGraph) -> None:
    verdict = acme_copy(graph, message(), client_ip="198.51.100.7", external_hits=(VIRUS,))
    assert verdict.action is Action.reject
    assert verdict.reason == REASON_VIRUS
    assert str(verdict.reply) == "550 5.7.1 Eicar-Test-Signature found"
    assert any(hit.id == "acme-allow" for hit in verdict.hits), "the allow list is still reported"


def test_antivirus_on_virus_action_is_taken_as_is(graph: FilterGraph) -> None:
    quarantine_virus = Hit("clamd", KIND_ANTIVIRUS, 0.0, Action.quarantine, "clamd", "Eicar")
    verdict = acme_copy(graph, message("sixteenpoints rejectme"), external_hits=(quarantine_virus,))
    assert (verdict.action, verdict.reason) == (Action.quarantine, REASON_VIRUS)


def test_block_list_beats_allow_list(graph: FilterGraph) -> None:
    # Client on acme-allow (network), header From on acme-block (domain).
    raw = message(sender="Mallory <mallory@evil-from.example>")
    verdict = acme_copy(graph, raw, client_ip="198.51.100.7")
    assert (verdict.action, verdict.reason) == (Action.reject, REASON_BLOCK_LIST)
    # At RCPT too: envelope sender on acme-block, client on acme-allow.
    result = graph.rcpt("198.51.100.7", "someone@rival.example", "bob@acme.example")
    assert str(result.reply).startswith("550 5.7.1") and result.reason == REASON_BLOCK_LIST


def test_allow_list_delivers_even_when_a_reject_rule_matches(graph: FilterGraph) -> None:
    verdict = acme_copy(graph, message("rejectme and sixteenpoints"), mail_from="billing@partner.example")
    assert (verdict.action, verdict.reason) == (Action.deliver, REASON_ALLOW_LIST)
    assert {"reject-word", "sixteen-points"} <= rule_ids(verdict), "rule hits are still reported"
    assert verdict.score == 16.0
    assert verdict.reply is None


@pytest.mark.parametrize(
    ("body", "action", "reason"),
    [
        ("twopoints", Action.deliver, "clean"),
        ("fourpoints", Action.tag, REASON_SCORE),
        ("holdme", Action.quarantine, REASON_RULE_ACTION),
        ("holdme fourpoints", Action.quarantine, REASON_RULE_ACTION),  # rule action beats tag by score
        ("holdme sixteenpoints", Action.reject, REASON_SCORE),  # score reject beats a quarantine action
        ("laterplease holdme", Action.tempfail, REASON_RULE_ACTION),
        ("laterplease rejectme", Action.reject, REASON_RULE_ACTION),
        ("fourpoints twopoints", Action.quarantine, REASON_SCORE),  # 6 >= acme's quarantine_at 5
    ],
)
def test_most_severe_of_rule_actions_and_score(graph: FilterGraph, body: str, action: Action, reason: str) -> None:
    verdict = acme_copy(graph, message(body))
    assert (verdict.action, verdict.reason) == (action, reason)


def test_reject_rule_message_is_the_smtp_reply(graph: FilterGraph) -> None:
    decision = decide(graph, message("rejectme"), {"acme": ["bob@acme.example"]})
    assert str(decision.reply) == "550 5.7.1 no thanks"


def test_tenant_scoring_overrides_apply(graph: FilterGraph) -> None:
    decision = decide(graph, message("fivepoints"), {"acme": ["bob@acme.example"], "globex": ["eve@globex.example"]})
    acme, globex = decision.tenants["acme"], decision.tenants["globex"]
    assert (acme.score, acme.action) == (5.0, Action.quarantine)  # acme: quarantine_at 5.0
    assert (globex.score, globex.action) == (5.0, Action.tag)  # gateway: quarantine_at 6.0


def test_tag_sets_the_subject_prefix(graph: FilterGraph) -> None:
    decision = decide(graph, message("fourpoints"), {"acme": ["bob@acme.example"], "globex": ["eve@globex.example"]})
    assert decision.tenants["acme"].action is Action.tag
    assert decision.tenants["acme"].subject_prefix == "[SPAM] "  # gateway default
    assert decision.tenants["globex"].subject_prefix == "[SUSPECTED SPAM] "  # tenant override
    assert acme_copy(graph, message("holdme")).subject_prefix is None  # only tagged copies


def test_scores_add_up_with_external_hits(graph: FilterGraph) -> None:
    dnsbl = Hit("zen.example-dnsbl.org", "dnsbl", 5.0, None, "checks.dnsbl")
    verdict = acme_copy(graph, message("twopoints"), external_hits=(dnsbl,))
    assert (verdict.score, verdict.action) == (7.0, Action.quarantine)


# ---------------------------------------------------------------- block lists at the earliest stage


@pytest.mark.parametrize("client_ip", ["203.0.113.9", "2001:db8:bad::25", "::ffff:203.0.113.9"])
def test_gateway_network_block_at_connect_and_mail(graph: FilterGraph, client_ip: str) -> None:
    hit = graph.connect(client_ip)
    assert hit is not None and hit.id == "global-block" and hit.action is Action.reject
    assert hit.source == "lists/global-block.yaml:5"
    assert graph.mail(client_ip, SENDER) == hit


def test_connect_passes_unlisted_and_garbage_addresses(graph: FilterGraph) -> None:
    assert graph.connect(NEUTRAL_IP) is None
    assert graph.connect("2001:db8:beef::1") is None
    assert graph.connect("unknown") is None


@pytest.mark.parametrize(
    "sender",
    ["spammer@bad.example", "<Spammer@BAD.example>", "anyone@spam.example", "x@phish.example", "x@mail.phish.example"],
)
def test_gateway_sender_block_at_mail(graph: FilterGraph, sender: str) -> None:
    assert graph.connect(NEUTRAL_IP) is None
    hit = graph.mail(NEUTRAL_IP, sender)
    assert hit is not None and hit.id == "global-block"


@pytest.mark.parametrize("sender", ["", "friend@bad.example.org", "spammer@notbad.example", "x@sub.spam.example"])
def test_gateway_sender_block_does_not_overreach(graph: FilterGraph, sender: str) -> None:
    assert graph.mail(NEUTRAL_IP, sender) is None


def test_explain_stops_a_globally_blocked_sender_at_mail(graph: FilterGraph) -> None:
    decision, rcpts = explain(graph,
        raw=message(), mail_from="spammer@bad.example", rcpts=["bob@acme.example"], client_ip=NEUTRAL_IP
    )
    assert (decision.action, decision.stage, rcpts) == (Action.reject, "mail", ())
    assert str(decision.reply) == "550 5.7.1 rejected by policy (global-block)"


def test_tenant_network_block_at_rcpt_for_that_tenant_only(graph: FilterGraph) -> None:
    blocked = graph.rcpt("192.0.2.200", SENDER, "bob@acme.example")
    assert blocked.reply is not None and blocked.reply.code == 550 and blocked.tenant == "acme"
    assert blocked.reason == REASON_BLOCK_LIST and blocked.hits[0].id == "acme-block"
    assert graph.rcpt("192.0.2.200", SENDER, "eve@globex.example").accepted


def test_tenant_sender_block_at_rcpt_for_that_tenant_only(graph: FilterGraph) -> None:
    blocked = graph.rcpt(NEUTRAL_IP, "boss@rival.example", "bob@acme.example")
    assert blocked.reply is not None and str(blocked.reply).startswith("550 5.7.1")
    assert graph.rcpt(NEUTRAL_IP, "boss@rival.example", "eve@globex.example").accepted


def test_explain_reports_tenant_block_at_rcpt_and_delivers_the_other_tenant(graph: FilterGraph) -> None:
    decision, rcpts = explain(graph,
        raw=message(),
        mail_from="boss@rival.example",
        rcpts=["bob@acme.example", "eve@globex.example"],
        client_ip=NEUTRAL_IP,
    )
    assert [r.accepted for r in rcpts] == [False, True]
    assert decision.reply.code == 250
    assert (decision.tenants["acme"].action, decision.tenants["acme"].stage) == (Action.reject, "rcpt")
    assert decision.tenants["globex"].action is Action.deliver


def test_header_from_on_a_block_list_rejects_at_data(graph: FilterGraph) -> None:
    raw = message(sender="Mallory <mallory@evil-from.example>")
    assert graph.rcpt(NEUTRAL_IP, SENDER, "bob@acme.example").accepted  # envelope is clean
    decision = decide(graph, raw, {"acme": ["bob@acme.example"], "globex": ["eve@globex.example"]})
    acme = decision.tenants["acme"]
    assert (acme.action, acme.reason, acme.stage) == (Action.reject, REASON_BLOCK_LIST, "data")
    assert decision.tenants["globex"].action is Action.deliver  # not on globex's lists
    assert decision.reply.code == 250


# ---------------------------------------------------------------- several tenants in one transaction

BOTH = {"acme": ["bob@acme.example"], "globex": ["eve@globex.example"]}


def test_one_tenant_rejects_the_other_delivers(graph: FilterGraph) -> None:
    decision = decide(graph, message("acmeno"), BOTH)
    assert str(decision.reply) == "250 2.0.0 queued"
    assert decision.tenants["acme"].action is Action.reject
    assert decision.tenants["globex"].action is Action.deliver
    assert decision.tenants["acme"].recipients == ("bob@acme.example",)
    assert decision.tenants["globex"].recipients == ("eve@globex.example",)


def test_every_copy_rejected_gives_5xx(graph: FilterGraph) -> None:
    decision = decide(graph, message("acmeno globexno"), BOTH)
    assert decision.action is Action.reject and decision.reply.code == 550


def test_tempfail_and_reject_give_4xx(graph: FilterGraph) -> None:
    decision = decide(graph, message("acmewait globexno"), BOTH)
    assert decision.action is Action.tempfail
    assert str(decision.reply) == "451 4.7.1 acme is busy"


def test_quarantine_and_reject_give_250(graph: FilterGraph) -> None:
    decision = decide(graph, message("acmehold globexno"), BOTH)
    assert decision.reply.code == 250
    assert decision.tenants["acme"].action is Action.quarantine
    assert decision.tenants["globex"].action is Action.reject


def test_discard_counts_as_accepted(tmp_path: Path) -> None:
    files = dict(POLICY)
    files["rules/globex-rules.yaml"] = """\
        name: globex-rules
        rules:
          - {id: globex-discard, when: {body: {contains: [dropit]}}, then: {action: discard}}
        """
    result = load_graph(write_policy(tmp_path, files, base=False, dedent=True))
    assert result.graph is not None
    decision = decide(result.graph, message("dropit acmeno"), BOTH)
    assert decision.reply.code == 250 and decision.tenants["globex"].action is Action.discard


# ---------------------------------------------------------------- open relay and recipients


def test_foreign_domain_is_relaying_denied(graph: FilterGraph) -> None:
    result = graph.rcpt(NEUTRAL_IP, SENDER, "someone@elsewhere.example")
    assert str(result.reply) == "550 5.7.1 relaying denied"
    assert (result.tenant, result.reason) == (None, REASON_RELAY_DENIED)
    # A subdomain of a tenant domain is not the tenant's.
    assert graph.rcpt(NEUTRAL_IP, SENDER, "bob@mail.acme.example").reason == REASON_RELAY_DENIED


@pytest.mark.parametrize(
    "rcpt",
    [
        "user%other.example@acme.example",  # %-hack
        "@a.example:user@acme.example",  # source route
        "<@a.example,@b.example:user@acme.example>",  # source route, angle brackets
        "other.example!user@acme.example",  # bang path
        '"user@other.example"@acme.example',  # quoted local part with @
        "user@[192.0.2.10]",  # domain literal
        "user@[IPv6:2001:db8::1]",
        "acme.example",  # no @
        "@acme.example",  # empty local part
        "user@",  # empty domain
    ],
)
def test_relay_tricks_are_refused(graph: FilterGraph, rcpt: str) -> None:
    result = graph.rcpt(NEUTRAL_IP, SENDER, rcpt)
    assert str(result.reply) == "550 5.7.1 relaying denied"
    assert result.tenant is None


def test_recipient_addresses_are_normalised(graph: FilterGraph) -> None:
    result = graph.rcpt(NEUTRAL_IP, SENDER, "<Bob@ACME.Example>")
    assert result.accepted and (result.address, result.tenant) == ("bob@acme.example", "acme")


@pytest.mark.parametrize(
    ("rcpt", "reply"),
    [
        ("peter@initech.example", None),
        ("Peter@Initech.example", None),
        ("anyone@support.initech.example", None),  # *@support.initech.example
        ("milton@initech.example", "550 5.1.1 unknown recipient"),
        ("peter@support2.initech.example", "550 5.7.1 relaying denied"),
    ],
)
def test_listed_recipients(graph: FilterGraph, rcpt: str, reply: str | None) -> None:
    result = graph.rcpt(NEUTRAL_IP, SENDER, rcpt)
    assert (str(result.reply) if result.reply else None) == reply
    if reply and reply.startswith("550 5.1.1"):
        assert result.reason == REASON_UNKNOWN_USER


def test_explain_with_no_valid_recipient_rejects_at_rcpt(graph: FilterGraph) -> None:
    decision, rcpts = explain(graph,
        raw=message(), mail_from=SENDER, rcpts=["x@elsewhere.example", "milton@initech.example"], client_ip=NEUTRAL_IP
    )
    assert (decision.action, decision.stage) == (Action.reject, "rcpt")
    assert str(decision.reply) == "550 5.7.1 relaying denied"
    assert [str(r.reply) for r in rcpts] == ["550 5.7.1 relaying denied", "550 5.1.1 unknown recipient"]


# ---------------------------------------------------------------- direction


def test_outbound_only_rule_does_not_fire_inbound(graph: FilterGraph) -> None:
    inbound = acme_copy(graph, message("secretproject"))
    outbound = acme_copy(graph, message("secretproject"), direction=Direction.outbound)
    assert "outbound-only" not in rule_ids(inbound) and inbound.action is Action.deliver
    assert "outbound-only" in rule_ids(outbound) and outbound.action is Action.reject


def test_both_fires_both_ways_and_inbound_is_the_default(graph: FilterGraph) -> None:
    for direction in (Direction.inbound, Direction.outbound):
        assert "both-ways" in rule_ids(acme_copy(graph, message("bothways"), direction=direction))
    assert "inbound-by-default" in rule_ids(acme_copy(graph, message("inboundonly")))
    assert not rule_ids(acme_copy(graph, message("inboundonly"), direction=Direction.outbound))


def test_outbound_rcpt_accepts_any_domain_for_the_sending_tenant(graph: FilterGraph) -> None:
    result = graph.rcpt("198.18.0.7", "bob@acme.example", "friend@elsewhere.example", direction=Direction.outbound,
                        sender_tenant="acme")
    assert result.accepted and result.tenant == "acme"
    refused = graph.rcpt("198.18.0.7", "bob@acme.example", "friend@elsewhere.example", direction=Direction.outbound)
    assert str(refused.reply) == "550 5.7.1 relaying denied"
    trick = graph.rcpt("198.18.0.7", "bob@acme.example", "a%b@elsewhere.example", direction=Direction.outbound,
                       sender_tenant="acme")
    assert trick.reason == REASON_RELAY_DENIED


def test_outbound_sender_is_the_networks_tenant_and_its_domains_only(graph: FilterGraph) -> None:
    assert graph.outbound_sender("198.18.0.7", "bob@acme.example") == "acme"
    assert graph.outbound_sender("198.18.0.7", "") == "acme"  # the null sender (bounces) of a known tenant
    for client_ip, sender, reason in (
        ("192.0.2.1", "bob@acme.example", "not-authorised"),  # a stranger's address
        ("198.18.0.7", "bob@globex.example", "spoofed-sender"),  # another tenant
        ("198.18.0.7", "bob@elsewhere.example", "spoofed-sender"),  # a stranger
    ):
        refusal = graph.outbound_sender(client_ip, sender)
        assert not isinstance(refusal, str) and refusal.id == reason, (client_ip, sender)
    # an SMTP AUTH user is bound to its own tenant, wherever it connects from
    assert graph.outbound_sender("192.0.2.1", "bob@globex.example", auth_tenant="globex") == "globex"
    refusal = graph.outbound_sender("198.18.0.7", "bob@acme.example", auth_tenant="globex")
    assert not isinstance(refusal, str) and refusal.id == "spoofed-sender"


def test_explain_outbound_runs_outbound_rules_for_the_sending_tenant(graph: FilterGraph) -> None:
    decision, rcpts = explain(graph,
        raw=message("secretproject", to="friend@elsewhere.example", sender="Bob <bob@acme.example>"),
        mail_from="bob@acme.example",
        rcpts=["friend@elsewhere.example"],
        client_ip="198.18.0.7",
        direction=Direction.outbound,
    )
    assert [r.tenant for r in rcpts] == ["acme"]
    assert decision.action is Action.reject
    assert "outbound-only" in rule_ids(decision.tenants["acme"])


def test_outbound_header_from_must_be_the_sending_tenants(graph: FilterGraph) -> None:
    def outbound(sender: str, client_ip: str = "198.18.0.7", auth_tenant: str | None = None) -> tuple[str, str]:
        outcome = simulate(graph, raw=message(sender=sender, to="friend@elsewhere.example"),
                           mail_from="bob@acme.example", rcpts=["friend@elsewhere.example"], client_ip=client_ip,
                           direction=Direction.outbound, auth_tenant=auth_tenant)
        return str(outcome.decision.reply), outcome.decision.stage

    assert outbound("Bob <bob@acme.example>")[0].startswith("250 ")
    assert outbound("bob@sub.acme.example")[0].startswith("250 ")  # a subdomain is the tenant's too
    assert outbound("Bob <bob@globex.example>") == (
        "550 5.7.1 header From not allowed: globex.example is not a sending domain of this client", "data")
    assert outbound("bob@acme.example, eve@stranger.example")[0].startswith("550 5.7.1 header From not allowed")
    # an authenticated globex user cannot use acme's domain, even from acme's network
    assert outbound("Bob <bob@acme.example>", auth_tenant="globex") == (
        "550 5.7.1 sender address not allowed: acme.example is not a sending domain of this client", "mail")


# ---------------------------------------------------------------- content edge cases through the graph


def test_lone_surrogates_from_utf7_do_not_crash_evaluation(tmp_path: Path) -> None:
    files = dict(POLICY)
    files["rules/globex-rules.yaml"] = """\
        name: globex-rules
        rules:
          - {id: subject-regex, when: {header: {name: Subject, regex: "(?i)invoice"}}, then: {score: 4.0}}
          - {id: body-regex, when: {body: {regex: "pay(ment)?"}}, then: {score: 1.0}}
          - {id: exe-name, when: {attachment: {filename: '\\.exe$'}}, then: {score: 1.0}}
        """
    result = load_graph(write_policy(tmp_path, files, base=False, dedent=True))
    assert result.graph is not None
    raw = (
        b"From: a@sender.example\r\nSubject: =?utf-7?Q?+2D0-?= Invoice\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
        b"Content-Type: text/plain; charset=utf-7\r\n\r\npayment +2D0-\r\n--b\r\n"
        b'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="=?utf-7?Q?+2D0-?=.exe"'
        b"\r\n\r\nMZ\r\n--b--\r\n"
    )
    verdict = decide(result.graph, raw, {"globex": ["eve@globex.example"]}).tenants["globex"]
    assert rule_ids(verdict) == {"subject-regex", "body-regex", "exe-name"}


def test_not_rules_hold_on_messages_without_their_leaves(tmp_path: Path) -> None:
    files = dict(POLICY)
    files["rules/globex-rules.yaml"] = """\
        name: globex-rules
        rules:
          - id: no-message-id
            when: {not: {header: {name: Message-ID, regex: "."}}}
            then: {score: 1.0}
          - id: html-without-text
            when: {all: [{body: {contains: [holdme]}}, {not: {body: {contains: [unsubscribe]}}}]}
            then: {score: 1.0}
        """
    result = load_graph(write_policy(tmp_path, files, base=False, dedent=True))
    assert result.graph is not None
    raw = b"From: a@sender.example\r\nSubject: hi\r\n\r\nnothing here\r\n"
    verdict = decide(result.graph, raw, {"globex": ["eve@globex.example"]}).tenants["globex"]
    assert rule_ids(verdict) == {"no-message-id"}
    assert "no-message-id" not in rule_ids(decide(result.graph, message(), BOTH).tenants["globex"])


# ---------------------------------------------------------------- explain --json


def _rule_line(rule_id: str, file: Path) -> int:
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if re.match(rf"\s*-\s*id:\s*{re.escape(rule_id)}\s*$", line):
            return number
    raise AssertionError(f"rule {rule_id} not found in {file}")


def test_explain_json_shape_with_gtube(tmp_path: Path) -> None:
    eml = tmp_path / "gtube.eml"
    eml.write_bytes(message(f"This is the GTUBE:\n{GTUBE}\n", to="alice@acme.example"))
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "explain",
            str(EXAMPLE),
            "--message",
            str(eml),
            "--mail-from",
            SENDER,
            "--rcpt",
            "alice@acme.example",
            "--rcpt",
            "bob@globex.example",
            "--client-ip",
            NEUTRAL_IP,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert {"action", "smtp_reply", "policy_version", "tenants"} <= set(data)
    assert data["action"] == "reject"
    assert data["smtp_reply"] == "550 5.7.1 GTUBE test message rejected by LivePrism"
    assert isinstance(data["policy_version"], str) and data["policy_version"]
    assert set(data["tenants"]) == {"acme", "globex"}
    source = f"rules/global-content.yaml:{_rule_line('gtube', EXAMPLE / 'rules' / 'global-content.yaml')}"
    for name, tenant in data["tenants"].items():
        assert {"action", "score", "route", "hits"} <= set(tenant), name
        assert tenant["action"] == "reject"
        assert isinstance(tenant["score"], float)
        assert all(isinstance(route, str) and ":" in route for route in tenant["route"])
        for hit in tenant["hits"]:
            assert {"id", "kind", "score", "action", "source"} <= set(hit)
        gtube = [hit for hit in tenant["hits"] if hit["id"] == "gtube"]
        assert gtube == [{"id": "gtube", "kind": "rule", "score": 0.0, "action": "reject", "source": source,
                          "detail": "GTUBE test message rejected by LivePrism"}]


def test_explain_json_clean_message(tmp_path: Path) -> None:
    eml = tmp_path / "clean.eml"
    eml.write_bytes(message(to="peter@initech.example"))
    result = CliRunner().invoke(
        app,
        [
            "explain",
            str(EXAMPLE),
            "--message",
            str(eml),
            "--mail-from",
            SENDER,
            "--rcpt",
            "peter@initech.example",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["action"] == "deliver" and data["smtp_reply"].startswith("250 ")
    assert data["tenants"]["initech"]["hits"] == [] and data["tenants"]["initech"]["route"] == ["127.0.0.1:2626"]


# ---------------------------------------------------------------- the worked example in policies/

def _global_rule_ids() -> list[str]:
    text = (EXAMPLE / "rules" / "global-content.yaml").read_text()
    return re.findall(r"^\s*-\s*id:\s*([a-z0-9-]+)\s*$", text, re.M)


def test_every_global_example_rule_has_a_message() -> None:
    assert sorted(EXAMPLE_MESSAGES) == sorted(_global_rule_ids())


@pytest.mark.parametrize("rule_id", sorted(EXAMPLE_MESSAGES))
def test_example_global_rule_fires(example: FilterGraph, rule_id: str) -> None:
    raw, expected = EXAMPLE_MESSAGES[rule_id]
    # globex: no allow list and no rule set of its own, so only the global rules speak.
    decision = decide(example, raw, {"globex": ["eve@globex.example"]}, mail_from="someone@sender.example")
    assert rule_ids(decision.tenants["globex"]) == expected


def test_example_clean_realistic_message_fires_nothing(example: FilterGraph) -> None:
    raw = CLEAN
    decision = decide(
        example,
        raw,
        {"acme": ["bob@acme.example"], "globex": ["eve@globex.example"], "initech": ["peter@initech.example"]},
    )
    for name, verdict in decision.tenants.items():
        assert (verdict.action, verdict.hits) == (Action.deliver, ()), name
    assert decision.reply.code == 250


def test_example_acme_invoice_phish_only_for_acme(example: FilterGraph) -> None:
    raw = message("Please note our updated bank details for all future payments.\n", subject="Overdue invoice")
    decision = decide(example, raw, {"acme": ["bob@acme.example"], "globex": ["eve@globex.example"]})
    assert "invoice-phish" in rule_ids(decision.tenants["acme"])
    assert "invoice-phish" not in rule_ids(decision.tenants["globex"])
    assert decision.tenants["acme"].action is Action.quarantine  # 6.0 >= acme's quarantine_at 5.0


# ---------------------------------------------------------------- the transaction object (engine/graph/transaction.py)


def test_tempfail_after_another_copys_250_is_held_in_explain_as_in_serve(graph: FilterGraph) -> None:
    decision, _ = explain(graph, raw=message("acmewait"), mail_from=SENDER, client_ip=NEUTRAL_IP,
                                rcpts=["bob@acme.example", "eve@globex.example"])
    assert decision.reply.code == 250
    acme = decision.tenants["acme"]
    assert (acme.action, acme.reason) == (Action.quarantine, "tempfail-held")
    assert {v.tenant for v in decision.copies} == {"acme", "globex"}


def test_recipients_keep_their_case_and_duplicates_are_one_recipient(graph: FilterGraph) -> None:
    evaluation = Evaluation.begin(graph, NEUTRAL_IP, "client.example")
    assert evaluation.mail(SENDER).code == 250
    answers = [evaluation.rcpt(rcpt).answer for rcpt in ("Bob@acme.example", "<BOB@ACME.example>", "bob@acme.example")]
    assert [str(answer) for answer in answers] == ["250 2.1.5 OK"] * 3
    decision = evaluation.data(parse_message(message()))
    assert decision.tenants["acme"].recipients == ("Bob@acme.example",)


def test_a_refusing_check_hit_refuses_the_transaction_before_data(graph: FilterGraph) -> None:
    evaluation = Evaluation.begin(graph, NEUTRAL_IP)
    listed = Hit("dnsbl:zen.example", "dnsbl", 5.0, Action.reject, "gateway.yaml:12")
    assert evaluation.add_hits([Hit("spf:pass", "spf")]) is None
    refusal = evaluation.add_hits([listed])
    assert refusal is not None and str(refusal) == "550 5.7.1 rejected by policy (dnsbl:zen.example)"
    assert evaluation.mail(SENDER) == refusal  # a refusal is final
    assert not evaluation.rcpt("bob@acme.example").accepted
    assert evaluation.finish().stage == "connect" and evaluation.refusal_hit == listed


def test_check_hits_handed_in_before_data_count_in_the_verdict(graph: FilterGraph) -> None:
    evaluation = Evaluation.begin(graph, NEUTRAL_IP)
    evaluation.add_hits([Hit("spf:softfail", "spf", 3.5)])
    evaluation.mail(SENDER)
    evaluation.rcpt("eve@globex.example")
    verdict = evaluation.data(parse_message(message())).tenants["globex"]
    assert verdict.score == 3.5 and verdict.action is Action.tag and verdict.hits[0].id == "spf:softfail"


def test_the_recipient_limit_counts_accepted_rcpt_commands(tmp_path: Path) -> None:
    files = dict(POLICY)
    limit = "hostname: mx.test.example\n        limits: {max_recipients: 2}"
    files["gateway.yaml"] = files["gateway.yaml"].replace("hostname: mx.test.example", limit)
    loaded = load_graph(write_policy(tmp_path, files, base=False, dedent=True))
    assert loaded.graph is not None
    evaluation = Evaluation.begin(loaded.graph, NEUTRAL_IP)
    evaluation.mail(SENDER)
    replies = [str(evaluation.rcpt(r).answer) for r in ("a@acme.example", "nobody@nowhere.example",
                                                          "b@acme.example", "c@acme.example")]
    assert replies == ["250 2.1.5 OK", "550 5.7.1 relaying denied", "250 2.1.5 OK", "452 4.5.3 too many recipients"]


def test_internationalised_domains_are_matched_as_a_labels(tmp_path: Path) -> None:
    """x@münchen.example and x@xn--mnchen-3ya.example are one mailbox (policy domains are A-labels)."""
    files = dict(POLICY)
    files["tenants/muenchen.yaml"] = """\
        name: muenchen
        domains: [münchen.example]
        routes: [{host: mail.muenchen.internal}]
        """
    loaded = load_graph(write_policy(tmp_path, files, base=False, dedent=True))
    assert loaded.graph is not None
    evaluation = Evaluation.begin(loaded.graph, NEUTRAL_IP)
    evaluation.mail(SENDER)
    assert evaluation.rcpt("Anna@MÜNCHEN.example").accepted
    assert evaluation.rcpt("anna@xn--mnchen-3ya.example").accepted
    assert evaluation.recipients == {"muenchen": ["Anna@xn--mnchen-3ya.example"]}  # one mailbox, case kept


def test_postmaster_without_a_domain_goes_to_the_configured_mailbox(tmp_path: Path) -> None:
    files = dict(POLICY)
    files["gateway.yaml"] = files["gateway.yaml"].replace(
        "hostname: mx.test.example", "hostname: mx.test.example\n        postmaster: hostmaster@acme.example")
    loaded = load_graph(write_policy(tmp_path, files, base=False, dedent=True))
    assert loaded.graph is not None
    evaluation = Evaluation.begin(loaded.graph, NEUTRAL_IP)
    evaluation.mail(SENDER)
    assert evaluation.rcpt("<Postmaster>").accepted  # RFC 5321 §4.5.1
    assert evaluation.rcpt("postmaster@MX.test.example").accepted
    assert evaluation.recipients == {"acme": ["hostmaster@acme.example"]}


def test_postmaster_is_refused_when_none_is_configured(graph: FilterGraph) -> None:
    evaluation = Evaluation.begin(graph, NEUTRAL_IP)
    evaluation.mail(SENDER)
    result = evaluation.rcpt("postmaster")
    assert str(result.answer) == "550 5.1.1 no postmaster mailbox is configured (gateway.yaml postmaster)"


# ---------------------------------------------------------------- mail loops (issue 7 item 2)


def _own_trace(queue_id: str) -> bytes:
    return (b"Received: from mail1.acme.example ([192.0.2.7])\r\n\tby mx.test.example (LivePrism) with ESMTP id "
            + queue_id.encode() + b";\r\n\tTue, 1 Dec 2026 10:00:00 +0000\r\n")


def test_a_message_carrying_two_of_our_traces_is_a_loop_that_explain_shows(graph: FilterGraph) -> None:
    raw = _own_trace("Q2") + _own_trace("Q1") + CLEAN
    decision, _ = explain(graph, raw=raw, mail_from=SENDER, rcpts=["bob@acme.example"], client_ip=NEUTRAL_IP)
    assert (decision.reply.code, decision.reply.status) == (554, "5.4.6")
    assert "already passed through mx.test.example 2 times" in decision.reply.text
    verdict = decision.tenants["acme"]
    assert (verdict.action, verdict.reason) == (Action.reject, "mail-loop")
    assert [hit.id for hit in verdict.hits] == ["mail-loop"]
    once = explain(graph, raw=_own_trace("Q1") + CLEAN, mail_from=SENDER, rcpts=["bob@acme.example"],
                   client_ip=NEUTRAL_IP)[0]
    assert once.reply.code == 250  # one pass is legitimate (a tenant's outbound mail to another tenant)


def test_a_loop_beats_an_allow_list(graph: FilterGraph) -> None:
    raw = b"Received: from a by b; Tue, 1 Dec 2026 10:00:00 +0000\r\n" * 51 + CLEAN
    decision = decide(graph, raw, {"acme": ["bob@acme.example"]}, mail_from="billing@partner.example")
    allowed = decide(graph, CLEAN, {"acme": ["bob@acme.example"]}, mail_from="billing@partner.example")
    assert allowed.tenants["acme"].reason == "allow-list"
    assert decision.reply.code == 554 and decision.tenants["acme"].reason == "mail-loop"
    fine = decide(graph, raw[raw.index(b"\r\n") + 2 :], {"acme": ["bob@acme.example"]})
    assert fine.reply.code == 250


def test_a_copy_returned_to_its_recipients_is_a_loop_at_its_first_return(graph: FilterGraph) -> None:
    evaluation = Evaluation.begin(graph, NEUTRAL_IP, "client.example")
    evaluation.mail_from = SENDER
    evaluation.recipients = {"acme": ["bob@acme.example"]}
    decision = evaluation.data(parse_message(_own_trace("Q1") + CLEAN), returned_ids=["Q1"])
    assert decision.reply.code == 554 and "as Q1" in decision.reply.text
    assert own_trace_ids([_own_trace("Q1").decode()[10:]], "mx.test.example") == ("Q1",)
    assert own_trace_ids(["from x by other.example (LivePrism) with ESMTP id Q9"], "mx.test.example") == ()
