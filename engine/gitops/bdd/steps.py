"""The step vocabulary (pytest-bdd) a policy scenario is written in.

Given — the policy, the message and its envelope, the client, DNS answers, check results;
When  — `it is received` (inbound listener) / `it is sent outbound` (outbound listener);
Then  — the action, the route, the reply, the rules and lists that matched, the score.
Every `Then` that fails prints the verdict trace with each hit's FILE:LINE.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
from pytest_bdd import given, parsers, then, when

from engine.gitops.bdd.world import Attachment, Scenario, ScenarioFailure, guess_type
from engine.graph.verdict import KIND_ANTIVIRUS, KIND_LIST, KIND_RULE, Hit, RcptResult, TenantVerdict
from engine.policy.models import Action, Direction

ACTION_WORDS = {
    "delivered": Action.deliver,
    "tagged": Action.tag,
    "quarantined": Action.quarantine,
    "discarded": Action.discard,
    "rejected": Action.reject,
    "tempfailed": Action.tempfail,
}
_ACTIONS = "|".join(ACTION_WORDS)


@pytest.fixture
def liveprism_scenario(request: pytest.FixtureRequest) -> Scenario:
    """The state of the running scenario; paths are relative to the repository root (rootdir)."""
    config = request.config
    policy = str(config.getini("liveprism_policy") or "policies")
    return Scenario(root=repository_root(request.node.path, policy, config.rootpath), policy=policy)


def repository_root(feature: Path, policy: str, rootdir: Path) -> Path:
    """The nearest directory above `feature` holding `policy`/gateway.yaml; else pytest's rootdir."""
    for directory in feature.parents:
        if (directory / policy / "gateway.yaml").is_file() or (directory / policy / "gateway.yml").is_file():
            return directory
    return rootdir


def _split(addresses: str) -> list[str]:
    return [a.strip() for a in addresses.replace(";", ",").split(",") if a.strip()]


def _rows(datatable: Sequence[Sequence[str]]) -> list[list[str]]:
    """Table rows without a header row (a first row whose first cell is `name`/`address`)."""
    rows = [list(row) for row in datatable]
    if rows and rows[0] and rows[0][0].strip().lower() in ("name", "header", "address", "recipient"):
        rows = rows[1:]
    return rows


# ---------------------------------------------------------------- Given: policy and envelope


@given(parsers.parse('the policy in "{policy}"'))
def given_policy(liveprism_scenario: Scenario, policy: str) -> None:
    liveprism_scenario.policy = policy
    liveprism_scenario.graph = None


@given(parsers.parse('a message from "{sender}" to "{rcpts}"'))
def given_message(liveprism_scenario: Scenario, sender: str, rcpts: str) -> None:
    liveprism_scenario.mail_from = sender
    liveprism_scenario.rcpts = _split(rcpts)


@given(parsers.parse('a message from "{sender}" to these recipients:'))
def given_message_table(liveprism_scenario: Scenario, sender: str, datatable: list[list[str]]) -> None:
    liveprism_scenario.mail_from = sender
    liveprism_scenario.rcpts = [row[0].strip() for row in _rows(datatable) if row and row[0].strip()]


@given(parsers.parse('a message with the null sender to "{rcpts}"'))
def given_bounce(liveprism_scenario: Scenario, rcpts: str) -> None:
    liveprism_scenario.mail_from = ""
    liveprism_scenario.rcpts = _split(rcpts)


@given(parsers.parse('the message in "{path}"'))
def given_message_file(liveprism_scenario: Scenario, path: str) -> None:
    file = liveprism_scenario.path(path)
    if not file.is_file():
        raise ScenarioFailure(f"no message file {file}")
    liveprism_scenario.message_file = file


@given(parsers.parse("the client address {address}"))
def given_client(liveprism_scenario: Scenario, address: str) -> None:
    liveprism_scenario.client_ip = address.strip().strip('"')


@given(parsers.parse('the client authenticated as a user of tenant "{tenant}"'))
def given_authenticated(liveprism_scenario: Scenario, tenant: str) -> None:
    """Outbound: the client logged in with SMTP AUTH as a user of `tenant` (it sends as that tenant only)."""
    if tenant not in liveprism_scenario.policy_graph().tenants:
        raise ScenarioFailure(f"no tenant {tenant!r} in the policy")
    liveprism_scenario.auth_tenant = tenant


@given(parsers.parse('the HELO name "{helo}"'))
def given_helo(liveprism_scenario: Scenario, helo: str) -> None:
    liveprism_scenario.helo = helo


# ---------------------------------------------------------------- Given: content


@given(parsers.parse('the subject "{subject}"'))
def given_subject(liveprism_scenario: Scenario, subject: str) -> None:
    liveprism_scenario.subject = subject


@given(parsers.parse('the header "{name}" is "{value}"'))
def given_header(liveprism_scenario: Scenario, name: str, value: str) -> None:
    liveprism_scenario.headers.append((name, value))


@given("the headers:")
def given_headers(liveprism_scenario: Scenario, datatable: list[list[str]]) -> None:
    for row in _rows(datatable):
        if len(row) < 2:
            raise ScenarioFailure(f"a header row needs a name and a value: {row}")
        liveprism_scenario.headers.append((row[0].strip(), row[1].strip()))


@given(parsers.parse('the body contains "{text}"'))
def given_body_contains(liveprism_scenario: Scenario, text: str) -> None:
    liveprism_scenario.body_lines.append(text)


@given("the body:")
def given_body(liveprism_scenario: Scenario, docstring: str) -> None:
    liveprism_scenario.body_lines = docstring.splitlines()


@given(parsers.parse('an attachment "{filename}"'))
def given_attachment(liveprism_scenario: Scenario, filename: str) -> None:
    liveprism_scenario.attachments.append(Attachment(filename, b"scenario attachment\n", guess_type(filename)))


@given(parsers.parse('an attachment "{filename}" of type "{content_type}"'))
def given_typed_attachment(liveprism_scenario: Scenario, filename: str, content_type: str) -> None:
    liveprism_scenario.attachments.append(Attachment(filename, b"scenario attachment\n", content_type))


@given(parsers.parse('a forwarded message with an attachment "{filename}"'))
def given_forwarded_attachment(liveprism_scenario: Scenario, filename: str) -> None:
    liveprism_scenario.attachments.append(
        Attachment(filename, b"scenario attachment\n", guess_type(filename), forwarded=True)
    )


# ---------------------------------------------------------------- Given: DNS and checks


@given(parsers.parse('DNS answers {rdtype} "{value}" for "{name}"'))
def given_dns(liveprism_scenario: Scenario, rdtype: str, value: str, name: str) -> None:
    liveprism_scenario.resolver.add(name, rdtype, value)


@given(parsers.parse('DNS fails with {status} for {rdtype} "{name}"'))
def given_dns_failure(liveprism_scenario: Scenario, status: str, rdtype: str, name: str) -> None:
    if status not in ("timeout", "servfail", "error"):
        raise ScenarioFailure(f"DNS failure must be timeout, servfail or error, not {status!r}")
    liveprism_scenario.resolver.fail(name, rdtype, status)  # type: ignore[arg-type]


@given(parsers.parse('the antivirus finds "{name}"'))
def given_virus(liveprism_scenario: Scenario, name: str) -> None:
    antivirus = liveprism_scenario.policy_graph().gateway.checks.antivirus
    if antivirus is None:
        raise ScenarioFailure("the policy has no checks.antivirus: a virus cannot be found")
    liveprism_scenario.external_hits.append(
        Hit(f"virus:{name}", KIND_ANTIVIRUS, 0.0, antivirus.on_virus, "checks.antivirus", name)
    )


# ---------------------------------------------------------------- When


@when("it is received")
def when_received(liveprism_scenario: Scenario) -> None:
    liveprism_scenario.run(Direction.inbound)


@when("it is sent outbound")
def when_sent_outbound(liveprism_scenario: Scenario) -> None:
    liveprism_scenario.run(Direction.outbound)


# ---------------------------------------------------------------- Then: the action


@then(parsers.re(rf"it is (?P<word>{_ACTIONS})"))
def then_action(liveprism_scenario: Scenario, word: str) -> None:
    decision = liveprism_scenario.result().decision
    if decision.action is not ACTION_WORDS[word]:
        raise liveprism_scenario.fail(f"expected it to be {word}, but the decision is {decision.action.value}")


@then(parsers.re(rf"it is not (?P<word>{_ACTIONS})"))
def then_not_action(liveprism_scenario: Scenario, word: str) -> None:
    decision = liveprism_scenario.result().decision
    if decision.action is ACTION_WORDS[word]:
        raise liveprism_scenario.fail(f"expected it not to be {word}")


@then(parsers.parse('it is delivered to "{route}"'))
def then_delivered_to(liveprism_scenario: Scenario, route: str) -> None:
    decision = liveprism_scenario.result().decision
    delivered = [v for v in decision.tenants.values() if v.action in (Action.deliver, Action.tag)]
    if not delivered:
        raise liveprism_scenario.fail(f"expected delivery to {route}, but nothing is delivered")
    if not any(_route_matches(route, verdict.routes) for verdict in delivered):
        routes = "; ".join(f"{v.tenant}: {', '.join(v.routes)}" for v in delivered)
        raise liveprism_scenario.fail(f"expected delivery to {route}, but the routes are {routes}")


def _route_matches(route: str, labels: Sequence[str]) -> bool:
    return any(route in (label, label.rpartition(":")[0]) for label in labels)


@then(parsers.parse('it is delivered to "{route}" first'))
def then_delivered_first(liveprism_scenario: Scenario, route: str) -> None:
    decision = liveprism_scenario.result().decision
    firsts = [v.routes[0] for v in decision.tenants.values() if v.action in (Action.deliver, Action.tag) and v.routes]
    if not _route_matches(route, firsts):
        raise liveprism_scenario.fail(f"expected {route} to be tried first, the first routes are {firsts}")


@then(parsers.re(rf'the copy for "(?P<tenant>[^"]+)" is (?P<word>{_ACTIONS})'))
def then_copy_action(liveprism_scenario: Scenario, tenant: str, word: str) -> None:
    verdict = _tenant(liveprism_scenario, tenant)
    if verdict.action is not ACTION_WORDS[word]:
        raise liveprism_scenario.fail(f"expected {tenant}'s copy to be {word}, but it is {verdict.action.value}")


@then(parsers.parse("it is rejected with {code:d}"))
def then_rejected_with(liveprism_scenario: Scenario, code: int) -> None:
    reply = liveprism_scenario.result().decision.reply
    if reply.code != code:
        raise liveprism_scenario.fail(f"expected the reply code {code}, but the reply is {reply}")


@then(parsers.parse("the reply code is {code:d}"))
def then_reply_code(liveprism_scenario: Scenario, code: int) -> None:
    then_rejected_with(liveprism_scenario, code)


@then(parsers.parse('the reply mentions "{text}"'))
def then_reply_mentions(liveprism_scenario: Scenario, text: str) -> None:
    reply = str(liveprism_scenario.result().decision.reply)
    if text.lower() not in reply.lower():
        raise liveprism_scenario.fail(f"expected the reply to mention {text!r}, but it is {reply!r}")


@then(parsers.parse('it is refused at {stage}'))
def then_refused_at(liveprism_scenario: Scenario, stage: str) -> None:
    decision = liveprism_scenario.result().decision
    wanted = stage.strip().lower()
    if decision.action not in (Action.reject, Action.tempfail) or decision.stage != wanted:
        raise liveprism_scenario.fail(
            f"expected a refusal at {wanted.upper()}, got {decision.action.value} at {decision.stage.upper()}"
        )


@then(parsers.parse('the recipient "{address}" is refused with {code:d}'))
def then_recipient_refused(liveprism_scenario: Scenario, address: str, code: int) -> None:
    result = _rcpt(liveprism_scenario, address)
    if result.reply is None or result.reply.code != code:
        raise liveprism_scenario.fail(f"expected RCPT {address} to get {code}, it got {result.reply or '250'}")


@then(parsers.parse('the recipient "{address}" is accepted'))
def then_recipient_accepted(liveprism_scenario: Scenario, address: str) -> None:
    result = _rcpt(liveprism_scenario, address)
    if result.reply is not None:
        raise liveprism_scenario.fail(f"expected RCPT {address} to be accepted, it got {result.reply}")


@then(parsers.parse('the subject is prefixed with "{prefix}"'))
def then_subject_prefix(liveprism_scenario: Scenario, prefix: str) -> None:
    prefixes = [v.subject_prefix for v in liveprism_scenario.result().decision.tenants.values()]
    if prefix not in prefixes:
        raise liveprism_scenario.fail(f"expected the subject prefix {prefix!r}, got {prefixes}")


# ---------------------------------------------------------------- Then: the trace


@then(parsers.parse('rule "{rule_id}" matched'))
def then_rule_matched(liveprism_scenario: Scenario, rule_id: str) -> None:
    if not _hits(liveprism_scenario, KIND_RULE, rule_id):
        raise liveprism_scenario.fail(f"expected rule {rule_id!r} to match, it did not")


@then(parsers.parse('rule "{rule_id}" did not match'))
def then_rule_not_matched(liveprism_scenario: Scenario, rule_id: str) -> None:
    if _hits(liveprism_scenario, KIND_RULE, rule_id):
        raise liveprism_scenario.fail(f"expected rule {rule_id!r} not to match, it did")


@then("no rule matched")
def then_no_rule(liveprism_scenario: Scenario) -> None:
    hits = _all_hits(liveprism_scenario)
    if any(hit.kind == KIND_RULE for hit in hits):
        raise liveprism_scenario.fail("expected no rule to match")


@then(parsers.parse('the check result "{hit_id}" was found'))
def then_check_result(liveprism_scenario: Scenario, hit_id: str) -> None:
    """A check's hit (`spf:fail`, `dmarc:reject`, `dnsbl:zone`, `virus:name`…), refusing or not."""
    if not any(hit.id == hit_id for hit in _all_hits(liveprism_scenario)):
        raise liveprism_scenario.fail(f"expected the check result {hit_id!r}, it was not found")


@then(parsers.parse('list "{name}" matched'))
def then_list_matched(liveprism_scenario: Scenario, name: str) -> None:
    if not _hits(liveprism_scenario, KIND_LIST, name):
        raise liveprism_scenario.fail(f"expected list {name!r} to match, it did not")


@then(parsers.parse("the score is at least {value:g}"))
def then_score_at_least(liveprism_scenario: Scenario, value: float) -> None:
    score = _score(liveprism_scenario)
    if score < value:
        raise liveprism_scenario.fail(f"expected a score of at least {value:g}, it is {score:g}")


@then(parsers.parse("the score is below {value:g}"))
def then_score_below(liveprism_scenario: Scenario, value: float) -> None:
    score = _score(liveprism_scenario)
    if score >= value:
        raise liveprism_scenario.fail(f"expected a score below {value:g}, it is {score:g}")


@then(parsers.parse("the score is {value:g}"))
def then_score_is(liveprism_scenario: Scenario, value: float) -> None:
    score = _score(liveprism_scenario)
    if abs(score - value) > 1e-9:
        raise liveprism_scenario.fail(f"expected a score of {value:g}, it is {score:g}")


# ---------------------------------------------------------------- helpers


def _tenant(scenario: Scenario, tenant: str) -> TenantVerdict:
    verdict = scenario.result().decision.tenants.get(tenant)
    if verdict is None:
        raise scenario.fail(f"no copy for tenant {tenant!r}")
    return verdict


def _rcpt(scenario: Scenario, address: str) -> RcptResult:
    wanted = address.strip().lower()
    for result in scenario.result().rcpt_results:
        if result.address == wanted:
            return result
    raise scenario.fail(f"{address} was not a recipient that reached RCPT")


def _all_hits(scenario: Scenario) -> list[Hit]:
    return [hit for verdict in scenario.result().decision.tenants.values() for hit in verdict.hits]


def _hits(scenario: Scenario, kind: str, ident: str) -> list[Hit]:
    return [hit for hit in _all_hits(scenario) if hit.kind == kind and hit.id == ident]


def _score(scenario: Scenario) -> float:
    verdicts = scenario.result().decision.tenants.values()
    if not verdicts:
        raise scenario.fail("no tenant copy has a score (refused before DATA?)")
    return max(verdict.score for verdict in verdicts)
