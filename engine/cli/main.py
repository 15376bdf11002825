"""`liveprism` command line (DESIGN.md "Commands"): thin typer wrappers over one module per command.

Each command imports its implementation lazily so that `liveprism validate` does not pay for
the SMTP stack, and exits with the code its implementation returns.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.dkim_cmd import dkim_app
from engine.cli.quarantine_cmd import quarantine_app
from engine.cli.queue_cmd import queue_app
from engine.cli.users_cmd import users_app

app = typer.Typer(
    name="liveprism",
    help="LivePrism mail policy gateway: policy as code, filtering, quarantine and relay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

app.add_typer(quarantine_app, name="quarantine")
app.add_typer(queue_app, name="queue")
app.add_typer(dkim_app, name="dkim")
app.add_typer(users_app, name="users")

PolicyDir = Annotated[Path, typer.Argument(help="Policy directory.", show_default=True)]


class OutputFormat(StrEnum):
    text = "text"
    json = "json"
    github = "github"


@app.command()
def validate(
    directory: PolicyDir = Path("policies"),
    fmt: Annotated[OutputFormat, typer.Option("--format", help="text, json or github annotations.")] = (
        OutputFormat.text
    ),
) -> None:
    """Schema and semantic checks; every problem as FILE:LINE:COL: error: MESSAGE. Exit 0 valid, 1 invalid."""
    from engine.cli.validate_cmd import run_validate

    raise typer.Exit(run_validate(directory, fmt.value))


@app.command()
def schema(
    out: Annotated[Path, typer.Option("--out", help="Directory for the *.schema.json files.")] = Path("schemas"),
) -> None:
    """Write the JSON Schemas (draft-07) of the policy files."""
    from engine.cli.schema_cmd import run_schema

    raise typer.Exit(run_schema(out))


@app.command()
def explain(
    directory: PolicyDir = Path("policies"),
    message: Annotated[Path, typer.Option("--message", help="The message file (.eml).")] = Path("-"),
    mail_from: Annotated[str, typer.Option("--mail-from", help="Envelope sender (MAIL FROM).")] = "",
    rcpt: Annotated[list[str] | None, typer.Option("--rcpt", help="Envelope recipient; repeat for several.")] = None,
    client_ip: Annotated[str, typer.Option("--client-ip", help="Connecting client address.")] = "192.0.2.1",
    helo: Annotated[str, typer.Option("--helo", help="HELO/EHLO name.")] = "client.example",
    direction: Annotated[str, typer.Option("--direction", help="inbound or outbound.")] = "inbound",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    auth_tenant: Annotated[str | None, typer.Option(
        "--auth-tenant", help="Outbound: the client authenticated (SMTP AUTH) as a user of this tenant.")] = None,
) -> None:
    """Run one message through the compiled policy and print the verdict and trace."""
    from engine.cli.explain_cmd import run_explain

    raise typer.Exit(
        run_explain(directory, message, mail_from, rcpt or [], client_ip, helo, direction, as_json, auth_tenant)
    )


@app.command()
def dns(
    directory: PolicyDir = Path("policies"),
    domain: Annotated[str | None, typer.Option("--domain", help="Only this zone (a tenant domain).")] = None,
    fmt: Annotated[str | None, typer.Option("--format", help="bind|json|octodns; with --check: text|json.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write one file per zone into this directory.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Compare with live DNS; exit 1 on drift.")] = False,
) -> None:
    """Zone snippets for the tenant domains (MX, SPF, DMARC, DKIM, MTA-STS, TLS-RPT, MX host A/AAAA)."""
    from engine.cli.dns_cmd import run_dns

    raise typer.Exit(run_dns(directory, domain, fmt, check, out))


@app.command()
def serve(
    directory: PolicyDir = Path("policies"),
    state: Annotated[Path | None, typer.Option("--state", help="State directory; overrides storage.path.")] = None,
    user: Annotated[str | None, typer.Option("--user", help="Run as this user once the ports are bound.")] = None,
    workers: Annotated[str, typer.Option("--workers", help="SMTP processes: a number or auto (one per core).")] = "1",
    git_remote: Annotated[
        str | None, typer.Option("--git-remote", help="Serve this git repository's branch (any URL git accepts).")
    ] = None,
    branch: Annotated[str, typer.Option("--branch", help="Branch to follow with --git-remote.")] = "main",
    git_path: Annotated[str, typer.Option("--git-path", help="Policy directory inside the repository.")] = "policies",
    interval: Annotated[float, typer.Option("--interval", help="Seconds between git fetches.", min=1)] = 30.0,
) -> None:
    """Run the gateway; hot-reloads DIR on change (or the branch of --git-remote); SIGTERM stops it cleanly."""
    from engine.cli.serve_cmd import run_serve_cmd

    raise typer.Exit(run_serve_cmd(directory, state, workers, git_remote, branch, git_path, interval, user))


@app.command(hidden=True)
def worker(
    state: Annotated[Path, typer.Option("--state")], policy: Annotated[Path, typer.Option("--policy")],
    listen_fd: Annotated[int, typer.Option("--listen-fd")], control_fd: Annotated[int, typer.Option("--control-fd")],
    index: Annotated[int, typer.Option("--index")] = 1,
    outbound_fd: Annotated[int | None, typer.Option("--outbound-fd")] = None,
) -> None:
    """An SMTP worker process (started by `serve --workers N`)."""
    from engine.serve.workers import run_worker

    raise typer.Exit(run_worker(state, policy, listen_fd, control_fd, index, outbound_fd))


@app.command()
def reload(directory: PolicyDir = Path("policies")) -> None:
    """Ask the running gateway (admin API of DIR's gateway.yaml) to reload now. Exit 0 applied, 1 rejected."""
    from engine.cli.reload_cmd import run_reload

    raise typer.Exit(run_reload(directory))


@app.command()
def sync(
    git_remote: Annotated[str, typer.Option("--git-remote", help="Repository to fetch (any URL git accepts).")],
    into: Annotated[Path, typer.Option("--into", help="Work dir: releases/ and the `current` symlink to serve.")],
    branch: Annotated[str, typer.Option("--branch", help="Branch to follow.")] = "main",
    git_path: Annotated[str, typer.Option("--git-path", help="Policy directory inside the repository.")] = "policies",
) -> None:
    """One git sync pass: fetch, validate, swap INTO/current. Exit 0 applied/unchanged, 1 rejected, 2 fetch failed."""
    from engine.cli.sync_cmd import run_sync

    raise typer.Exit(run_sync(git_remote, into, branch, git_path))


@app.command(hidden=True)
def relay(
    state: Annotated[Path, typer.Option("--state", help="State directory.")] = Path("var/liveprism"),
) -> None:
    """The delivery worker process (started by `serve`; stops at stdin EOF)."""
    from engine.relay.process import run_relay

    raise typer.Exit(run_relay(state))


@app.command()
def sink(
    listen: Annotated[str, typer.Option("--listen", help="ADDRESS:PORT to listen on.")] = "127.0.0.1:2626",
    maildir: Annotated[Path, typer.Option("--maildir", help="Maildir to write into.")] = Path("var/maildir"),
) -> None:
    """A local mailbox (SMTP to Maildir) standing in for a tenant's server in the demo."""
    from engine.cli.demo_cmd import run_sink

    raise typer.Exit(run_sink(listen, maildir))


@app.command()
def demo(
    directory: PolicyDir = Path("policies"),
    state: Annotated[Path, typer.Option("--state", help="State directory.")] = Path("var/liveprism"),
    maildir: Annotated[Path, typer.Option("--maildir", help="Demo mailbox.")] = Path("var/maildir"),
) -> None:
    """`serve` plus the demo mailbox on 127.0.0.1:2626 that the example tenants' routes point at;
    DKIM keys the policy names but that do not exist yet are created first (never committed)."""
    from engine.cli.demo_cmd import run_demo

    raise typer.Exit(run_demo(directory, state, maildir))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def test(
    ctx: typer.Context,
    repo: Annotated[Path, typer.Argument(help="Policy repository (holds policies/ and tests/features/).")] = Path("."),
    junitxml: Annotated[Path | None, typer.Option("--junitxml", help="Write a JUnit XML report.")] = None,
    cucumberjson: Annotated[Path | None, typer.Option("--cucumberjson", help="Write a Cucumber JSON report.")] = None,
) -> None:
    """Run the Gherkin scenarios of REPO/tests/features (pytest + the liveprism steps); exit code is pytest's."""
    from engine.cli.test_cmd import run_test

    raise typer.Exit(run_test(repo, junitxml, cucumberjson, ctx.args))


@app.command()
def plan(
    directory: PolicyDir = Path("policies"),
    base: Annotated[str, typer.Option("--base", help="Git ref to compare the work tree with.")] = "origin/main",
    corpus: Annotated[Path | None, typer.Option("--corpus", help="Directory of *.eml to replay.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="text, markdown or json.")] = "text",
    state: Annotated[Path | None, typer.Option("--state", help="Also replay this store's quarantine/archive.")] = None,
    since: Annotated[str, typer.Option("--since", help="Archive window for --state: 7d, 24h or ISO date.")] = "7d",
) -> None:
    """Semantic diff of the policy against --base and the messages whose verdict it changes."""
    from engine.cli.plan_cmd import run_plan, since_seconds

    if fmt not in ("text", "markdown", "json"):
        raise typer.BadParameter(f"{fmt!r}: expected text, markdown or json", param_hint="--format")
    raise typer.Exit(run_plan(directory, base, corpus, fmt, state, since_seconds(since)))


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Directory of the new policy repository.")]) -> None:
    """Scaffold a policy repository (policies/, tests/, CI workflow) that passes validate and test."""
    from engine.cli.init_cmd import run_init

    raise typer.Exit(run_init(directory))


def main() -> None:
    """Entry point for `python -m engine`."""
    app()
