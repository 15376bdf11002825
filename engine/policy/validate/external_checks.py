"""External checks: rules and tenant overrides name only checks (and zones) the gateway runs;
ARC trust needs ARC and DMARC."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from engine.policy.loader import LoadedFile, PolicySource, Problem, YamlPath
from engine.policy.models import CheckCondition, Checks, PolicyModel, Rule
from engine.policy.validate.common import _CleanRules
from engine.policy.validate.regexes import _leaf_conditions

_CHECKED_RULES = _CleanRules()


def _check_settings(source: PolicySource) -> Iterator[Problem]:
    """Rules and tenant overrides may only name checks (and zones) the gateway runs; ARC trust
    needs ARC and DMARC (it forgives DMARC failures)."""
    gateway = source.gateway
    if gateway is None:
        return
    checks = gateway.model.checks
    if checks.arc.trusted_sealers and not (checks.arc.enabled and checks.dmarc.enabled):
        yield gateway.problem(
            "error", ("checks", "arc", "trusted_sealers"),
            "checks.arc.trusted_sealers needs arc and dmarc enabled (a trusted chain overrides DMARC failures)",
        )
    if checks.antivirus is not None and checks.antivirus.timeout >= checks.budget:
        yield gateway.problem(
            "warning", ("checks", "antivirus"),
            f"checks.antivirus.timeout {checks.antivirus.timeout:g} s is not below checks.budget {checks.budget:g} s:"
            " a slow scan is cut at the budget and the message gets on_error",
        )
    running = _running_checks(checks)
    yield from _CHECKED_RULES.problems(source.rulesets, gateway, lambda loaded, index, rule: _rule_checks(
        loaded, index, rule, running))
    for tenant in source.tenants:
        for key in tenant.model.checks:
            name, _, result = key.partition(":")
            problem = _unknown_check(running, name, [] if result == "*" else [result])
            if problem:
                yield tenant.problem("error", ("checks", key), f"override of {problem}")


def _rule_checks(loaded: LoadedFile[Any], index: int, rule: Rule, running: dict[str, set[str] | None]
                 ) -> Iterator[Problem]:
    """A rule may only test the checks the gateway runs (`running`)."""
    for path, condition in _check_conditions(rule.when, ("rules", index, "when")):
        problem = _unknown_check(running, condition.check, condition.result)
        if problem:
            yield loaded.problem("error", path, f"rule '{rule.id}' tests {problem}: it could never match")


def _running_checks(checks: Checks) -> dict[str, set[str] | None]:
    """Check name -> the results it can report (None: any), for the checks the gateway runs."""
    from engine.policy.models import CHECK_RESULTS

    running: dict[str, set[str] | None] = {}
    for name in ("spf", "dkim", "dmarc", "arc"):
        if getattr(checks, name).enabled:
            running[name] = set(CHECK_RESULTS[name])
    if checks.dnsbl:
        running["dnsbl"] = {zone.zone for zone in checks.dnsbl}
    if checks.uribl:
        running["uribl"] = {zone.zone for zone in checks.uribl}
    if checks.antivirus is not None:
        running["virus"] = None
        running["antivirus"] = {"error"}
    return running


def _unknown_check(running: dict[str, set[str] | None], name: str, results: Sequence[str]) -> str | None:
    """What is wrong with testing check `name` for `results` ("" when nothing), or None."""
    if name not in running:
        return f"check '{name}', which gateway.yaml checks does not run"
    allowed = running[name]
    unknown = [r for r in results if allowed is not None and r not in allowed]
    if unknown:
        what = "zone" if name in ("dnsbl", "uribl") else "result"
        return f"{name} {what} {', '.join(unknown)}, which gateway.yaml checks.{name} does not have"
    return None


def _check_conditions(tree: PolicyModel, tree_path: YamlPath) -> Iterator[tuple[YamlPath, CheckCondition]]:
    for path, condition in _leaf_conditions(tree, tree_path):
        if isinstance(condition, CheckCondition):
            yield (*path, "check"), condition
