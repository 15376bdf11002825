"""`liveprism dns [DIR] [--domain D] [--format bind|json|octodns] [--out DIR] [--check]`.

Contract:
- without `--check`: prints the zone snippets of every tenant domain and gateway host zone (or of
  `--domain` only) in the chosen format, or with `--out` writes one file per zone (plus the
  MTA-STS policy files) and lists them; warnings (missing DKIM key, SPF lookup limit) go to
  stderr. Exit 0, or 2 for an invalid policy, an unknown domain or an unwritable `--out`;
- with `--check` (`--format text|json`): compares the plan with live DNS through the resolver of
  `gateway.yaml` `dns:` and prints one line per record (json: one object); exit 0 when DNS
  agrees with the policy, 1 on any drift (missing, different, extra, bypass, lookup failure).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from engine.dns.resolver import Resolver
from engine.dns_as_code.drift import DriftReport, check_drift
from engine.dns_as_code.records import DnsPlan, plan_dns
from engine.dns_as_code.render import render, zone_files
from engine.policy.loader import PolicySource, load_policy
from engine.policy.models import check_domain
from engine.policy.validate import validate_policy

EXIT_OK = 0
EXIT_DRIFT = 1
EXIT_USAGE = 2
RENDER_FORMATS = ("bind", "json", "octodns")
CHECK_FORMATS = ("text", "json")


def load_plan(directory: Path, domain: str | None) -> tuple[PolicySource | None, DnsPlan | None]:
    """The valid policy in `directory` and its DNS plan (restricted to `domain`); errors printed,
    (None, None) returned when there is no usable plan."""
    if not directory.is_dir():
        print(f"error: policy directory '{directory}' does not exist", file=sys.stderr)
        return None, None
    source = load_policy(directory)
    errors = [p for p in validate_policy(source) if p.severity == "error"]
    if errors or source.gateway is None:
        for problem in errors:
            print(problem.format("text", directory), file=sys.stderr)
        print("error: the policy is invalid; run `liveprism validate`", file=sys.stderr)
        return None, None
    plan = plan_dns(source.gateway.model, [t.model for t in source.tenants], directory)
    if domain is None:
        return source, plan
    try:
        wanted = check_domain(domain)
    except ValueError as exc:
        print(f"error: --domain: {exc}", file=sys.stderr)
        return None, None
    only = plan.only(wanted)
    if only is None:
        zones = ", ".join(z.origin for z in plan.zones)
        print(f"error: no zone '{wanted}' in the policy (zones: {zones})", file=sys.stderr)
        return None, None
    return source, only


def run_dns(directory: Path, domain: str | None, fmt: str | None, check: bool, out: Path | None) -> int:
    """`liveprism dns`; see the module docstring. Returns the exit code."""
    formats = CHECK_FORMATS if check else RENDER_FORMATS
    fmt = fmt or formats[0]
    if fmt not in formats:
        mode = "--check" if check else "zone output"
        print(f"error: --format for {mode} must be one of {', '.join(formats)}, not {fmt!r}", file=sys.stderr)
        return EXIT_USAGE
    source, plan = load_plan(directory, domain)
    if source is None or plan is None or source.gateway is None:
        return EXIT_USAGE
    for warning in plan.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if check:
        report = asyncio.run(check_drift(plan, Resolver(source.gateway.model.dns)))
        for warning in report.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(report_json(report) if fmt == "json" else report_text(report), end="")
        return EXIT_DRIFT if report.drifted else EXIT_OK
    if out is None:
        sys.stdout.write(render(plan, fmt))
        return EXIT_OK
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, content in zone_files(plan, fmt).items():
            (out / name).write_text(content, encoding="utf-8", newline="")
            print(out / name)
    except OSError as exc:
        print(f"error: cannot write to {out}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def report_text(report: DriftReport) -> str:
    """One line per record: STATUS DOMAIN KIND NAME TYPE, and what was expected and found when
    they differ; then a summary line."""
    lines = []
    for item in report.items:
        line = f"{item.status:<9} {item.domain:<28} {item.kind:<12} {item.name}. {item.rtype}"
        if item.status in ("different", "extra", "bypass", "missing"):
            line += f"  expected: {_values(item.expected)}"
            if item.status != "missing":
                line += f"  found: {_values(item.found)}"
        if item.detail:
            line += f"  ({item.detail})"
        lines.append(line)
    drifted = report.drifted
    bypasses = len(report.bypasses)
    summary = f"{len(drifted)} of {len(report.items)} records drifted"
    if bypasses:
        summary += f", {bypasses} MX bypass{'es' if bypasses > 1 else ''} of the gateway"
    lines.append(summary if drifted else f"DNS agrees with the policy ({len(report.items)} records)")
    return "\n".join(lines) + "\n"


def _values(values: tuple[str, ...]) -> str:
    return " | ".join(json.dumps(v) for v in values) or "-"


def report_json(report: DriftReport) -> str:
    items = [
        {"domain": i.domain, "record": i.kind, "name": i.name, "type": i.rtype, "status": i.status,
         "expected": list(i.expected), "found": list(i.found), "detail": i.detail}
        for i in report.items
    ]
    doc = {"drift": bool(report.drifted), "bypass": bool(report.bypasses), "records": items,
           "warnings": list(report.warnings)}
    return json.dumps(doc, indent=2) + "\n"
