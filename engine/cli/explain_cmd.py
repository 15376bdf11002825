"""`liveprism explain`: one message through the compiled graph, verdict and trace printed."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from engine.checks.runner import Checker, CheckReport
from engine.graph.build.compiler import load_graph
from engine.graph.transaction import Outcome, simulate
from engine.graph.verdict import Hit
from engine.mime.view import parse_message
from engine.policy.models import Direction, Gateway


def run_explain(
    directory: Path,
    message: Path,
    mail_from: str,
    rcpts: list[str],
    client_ip: str,
    helo: str,
    direction: str,
    as_json: bool,
    auth_tenant: str | None = None,
) -> int:
    """Print the decision for one message; exit 0, or 2 for a usage error / invalid policy."""
    if not rcpts:
        print("error: give at least one --rcpt", file=sys.stderr)
        return 2
    try:
        flow = Direction(direction)
        raw = sys.stdin.buffer.read() if str(message) == "-" else message.read_bytes()
    except ValueError:
        print(f"error: --direction must be inbound or outbound, not {direction!r}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot read message: {exc}", file=sys.stderr)
        return 2
    result = load_graph(directory)
    if result.graph is None:
        for problem in result.problems:
            if problem.severity == "error":
                print(problem.format("text", directory), file=sys.stderr)
        print("error: the policy is invalid; run `liveprism validate`", file=sys.stderr)
        return 2
    sender = "" if mail_from.strip() in ("", "<>") else mail_from
    early, report = asyncio.run(run_checks(result.graph.gateway, raw, sender, client_ip, helo, flow))
    if auth_tenant is not None and auth_tenant not in result.graph.tenants:
        print(f"error: --auth-tenant: no tenant {auth_tenant!r} in the policy", file=sys.stderr)
        return 2
    outcome = simulate(result.graph, raw=raw, mail_from=sender, rcpts=rcpts, client_ip=client_ip, helo=helo,
                       direction=flow, early_hits=early, external_hits=report.new_hits if report else (),
                       auth_tenant=auth_tenant)
    if as_json:
        data = explain_json(outcome, helo)
        if report is not None:
            checks = report.to_json()
            checks["authentication_results"] = report.authentication_results(result.graph.gateway.hostname)
            data["checks"] = checks
        print(json.dumps(data, indent=2))
    else:
        print(render_text(outcome))
        if report is not None:
            print(render_checks(report, result.graph.gateway.hostname))
    return 0


async def run_checks(
    gateway: Gateway, raw: bytes, sender: str, client_ip: str, helo: str, direction: Direction
) -> tuple[tuple[Hit, ...], CheckReport | None]:
    """The external checks `serve` would run for this transaction (outbound: the antivirus only):
    the hits it has after MAIL FROM, and the report at the end of DATA."""
    run = Checker().begin(gateway, client_ip, helo, direction)
    if run is None:
        return (), None
    run.mail(sender, helo)
    early = await run.early_hits()
    return early, await run.data(raw, parse_message(raw))


def render_checks(report: CheckReport, hostname: str) -> str:
    """Every lookup the checks made, with its answer and time."""
    lines = ["", f"checks ({report.elapsed * 1000:.0f} ms):"]
    for lookup in report.lookups:
        answers = ", ".join(lookup.answers) or "-"
        detail = f"  ({lookup.detail})" if lookup.detail else ""
        cached = " cached" if lookup.cached else ""
        lines.append(f"  {lookup.check:<9} {lookup.rdtype:<8} {lookup.name:<48} {lookup.status:<8} {answers}"
                     f"  {lookup.elapsed * 1000:.1f} ms{cached}{detail}")
    auth = report.authentication_results(hostname)
    if auth is not None:
        lines.append(f"Authentication-Results: {auth}")
    return "\n".join(lines)


def explain_json(outcome: Outcome, helo: str) -> dict[str, object]:
    """DESIGN.md's `explain --json` object, plus `stage`, `helo`, per-recipient RCPT replies and
    the reply of every SMTP stage in order (`replies`: what `serve` answers)."""
    data = outcome.decision.to_json()
    data["helo"] = helo
    data["recipients"] = {
        result.address: {"tenant": result.tenant, "reply": str(result.answer)} for result in outcome.rcpt_results
    }
    data["replies"] = [{"stage": stage, "reply": str(reply)} for stage, reply in outcome.replies]
    return data


def render_text(outcome: Outcome) -> str:
    """A short human-readable trace: recipients, then each tenant's hits and decision."""
    decision = outcome.decision
    lines = [f"policy {decision.policy_version}", ""]
    for result in outcome.rcpt_results:
        lines.append(f"RCPT {result.address:<32} tenant={result.tenant or '-':<12} {result.answer}")
    if outcome.rcpt_results:
        lines.append("")
    for name, verdict in decision.tenants.items():
        lines.append(
            f"tenant {name}: {verdict.action.value.upper()} (score {verdict.score:g}, reason {verdict.reason},"
            f" stage {verdict.stage}) -> {', '.join(verdict.routes) or 'no route'}"
        )
        if not verdict.hits:
            lines.append("  no hits")
        for hit in verdict.hits:
            action = hit.action.value if hit.action else "-"
            lines.append(f"  {hit.kind:<6} {hit.id:<34} score {hit.score:>5g}  action {action:<10} {hit.source}")
        lines.append("")
    lines.append(f"decision: {decision.action.value.upper()} at {decision.stage}; reply: {decision.reply}")
    return "\n".join(lines)
