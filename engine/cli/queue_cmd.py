"""`liveprism queue list|flush`: the delivery queue (what `mailq` and `postqueue -f` are to Postfix).

The store is found as `engine.cli.store_access` says; both commands work while the gateway runs.
`flush` makes every waiting delivery due now: the running relay takes them within its poll
interval (≤ 1 s) instead of after their backoff.

Exit codes: 0 done; 1 no store; 2 bad arguments.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cli.store_access import PolicyArgument, PolicyOption, StateOption, clip, when, with_store
from engine.store.base import QueueEntry

queue_app = typer.Typer(
    help="The delivery queue: list waiting and in-flight deliveries, or retry them all now.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

TenantOption = Annotated[str | None, typer.Option("--tenant", help="Only this tenant's deliveries.")]


def _entry_json(entry: QueueEntry) -> dict[str, Any]:
    return {
        "delivery_id": entry.delivery_id,
        "queue_id": entry.queue_id,
        "tenant": entry.tenant,
        "mail_from": entry.mail_from,
        "recipients": [dataclasses.asdict(r) for r in entry.rcpts],
        "subject": entry.subject,
        "size": entry.size,
        "state": entry.state,
        "attempts": entry.attempts,
        "last_error": entry.last_error,
        "created_at": when(entry.created_at),
        "next_attempt_at": when(entry.next_attempt_at),
    }


@queue_app.command("list")
def list_command(
    directory: PolicyArgument = None,
    tenant: TenantOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    state: StateOption = None,
    policy: PolicyOption = Path("policies"),
) -> None:
    """List deliveries in flight, then waiting ones by due time, with their last error."""
    entries = with_store(state, directory or policy, lambda s: s.list_queue(tenant=tenant))
    if as_json:
        typer.echo(json.dumps([_entry_json(e) for e in entries], indent=2, ensure_ascii=False))
        return
    if not entries:
        typer.echo("the queue is empty")
        return
    typer.echo(f"{'QUEUE ID':<18} {'TENANT':<10} {'STATE':<8} {'TRIES':>5}  {'NEXT TRY (UTC)':<20} "
               f"{'FROM':<26} {'TO (pending)':<28} LAST ERROR")
    for e in entries:
        pending = [r.rcpt for r in e.rcpts if r.status == "pending"]
        typer.echo(
            f"{e.queue_id:<18} {clip(e.tenant, 10):<10} {e.state:<8} {e.attempts:>5}  {when(e.next_attempt_at):<20} "
            f"{clip(e.mail_from or '<>', 26):<26} {clip(', '.join(pending), 28):<28} {clip(e.last_error, 70)}"
        )
    typer.echo(f"-- {len(entries)} deliveries, {sum(e.size for e in entries) // 1024} KiB")


@queue_app.command("flush")
def flush_command(
    directory: PolicyArgument = None,
    tenant: TenantOption = None,
    state: StateOption = None,
    policy: PolicyOption = Path("policies"),
) -> None:
    """Retry every waiting delivery now (the running gateway takes them within a second)."""
    count = with_store(state, directory or policy, lambda s: s.flush_queue(time.time(), tenant=tenant))
    typer.echo(f"{count} waiting deliveries due now")
