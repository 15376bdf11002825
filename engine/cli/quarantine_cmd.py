"""`liveprism quarantine list|show|release|delete`: review held mail in the store.

The store is found as `engine.cli.store_access` says; the commands work while the gateway runs:
a release becomes a delivery that the running relay picks up within its poll interval (≤ 1 s),
or at its next start.

Exit codes: 0 done; 1 unknown id, entry not held, or no store; 2 bad arguments.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from engine.cli.store_access import (
    PolicyArgument,
    PolicyOption,
    StateOption,
    clip,
    fail,
    when,
    with_store,
)
from engine.mime.printable import escape
from engine.mime.raw_headers import header_section
from engine.store.base import QuarantineEntry, QuarantineRefusal, QuarantineStatus, Store

quarantine_app = typer.Typer(
    help="Review held mail: list, show, release or delete quarantined copies.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EntryId = Annotated[str, typer.Argument(help="Quarantine id, as shown by `list` (<queue id>-<tenant>).")]

_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_REFUSALS = {"not-found": "no quarantine entry {id}", "not-held": "{id} is no longer held"}


def parse_since(value: str, now: float) -> float:
    """A point in time from `7d`, `24h`, `30m`, … (ago) or an ISO 8601 date/time (UTC unless given)."""
    relative = _RELATIVE.match(value.strip().lower())
    if relative:
        return now - int(relative.group(1)) * _UNIT_SECONDS[relative.group(2)]
    try:
        moment = datetime.datetime.fromisoformat(value.strip())
    except ValueError:
        raise typer.BadParameter(f"{value!r}: expected 7d, 24h, 30m or an ISO date such as 2026-11-28T09:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _entry_json(entry: QuarantineEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "queue_id": entry.queue_id,
        "tenant": entry.tenant,
        "mail_from": entry.mail_from,
        "recipients": list(entry.recipients),
        "subject": entry.subject,
        "reason": entry.reason,
        "score": entry.score,
        "hits": [dict(hit) for hit in entry.hits],
        "created_at": when(entry.created_at),
        "status": entry.status,
        "status_at": when(entry.status_at),
    }


@quarantine_app.command("list")
def list_command(
    directory: PolicyArgument = None,
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's copies.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Only newer entries: 7d, 24h, 30m or ISO date.")] = None,
    status: Annotated[str, typer.Option("--status", help="held, released, deleted or all.")] = "held",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
    state: StateOption = None,
    policy: PolicyOption = Path("policies"),
) -> None:
    """List quarantined copies, oldest first (held ones unless --status says otherwise)."""
    if status not in ("held", "released", "deleted", "all"):
        raise typer.BadParameter(f"{status!r}: expected held, released, deleted or all", param_hint="--status")
    wanted: QuarantineStatus | None = None if status == "all" else status  # type: ignore[assignment]
    after = parse_since(since, time.time()) if since else None
    entries = with_store(
        state, directory or policy, lambda s: s.list_quarantine(tenant=tenant, since=after, status=wanted)
    )
    if as_json:
        typer.echo(json.dumps([_entry_json(e) for e in entries], indent=2, ensure_ascii=False))
        return
    if not entries:
        typer.echo("no quarantined mail")
        return
    typer.echo(f"{'ID':<28} {'CREATED (UTC)':<20} {'STATUS':<8} {'SCORE':>6}  {'FROM':<28} {'TO':<28} SUBJECT")
    for e in entries:
        score = "" if e.score is None else f"{e.score:.1f}"
        typer.echo(
            f"{e.id:<28} {when(e.created_at):<20} {e.status:<8} {score:>6}  {clip(e.mail_from or '<>', 28):<28} "
            f"{clip(', '.join(e.recipients), 28):<28} {clip(e.subject, 60)}"
        )


@quarantine_app.command("show")
def show_command(
    entry_id: EntryId,
    directory: PolicyArgument = None,
    raw: Annotated[bool, typer.Option("--raw", help="Print the message exactly as received.")] = False,
    state: StateOption = None,
    policy: PolicyOption = Path("policies"),
) -> None:
    """Show one entry: envelope, verdict, hits and the message headers (or the raw message)."""

    async def fetch(store: Store) -> tuple[QuarantineEntry | None, bytes | None]:
        entry = await store.get_quarantine(entry_id)
        return entry, (await store.read_message(entry.queue_id) if entry else None)

    entry, message = with_store(state, directory or policy, fetch)
    if entry is None:
        fail(_REFUSALS["not-found"].format(id=entry_id))
    if raw:
        if message is None:
            fail(f"the message of {entry_id} is no longer stored")
        sys.stdout.buffer.write(message)
        sys.stdout.buffer.flush()
        return
    info = _entry_json(entry)
    for key in ("id", "queue_id", "tenant", "status", "status_at", "created_at", "mail_from", "subject", "reason"):
        typer.echo(f"{key + ':':<12} {escape(str(info[key]))}")  # a subject may hold escape sequences
    typer.echo(f"{'recipients:':<12} {escape(', '.join(entry.recipients))}")
    typer.echo(f"{'score:':<12} {'' if entry.score is None else entry.score}")
    typer.echo("hits:")
    for hit in entry.hits:
        typer.echo("  " + "  ".join(f"{k}={hit[k]}" for k in ("id", "kind", "score", "action", "source") if k in hit))
    typer.echo("")
    if message is None:
        typer.echo("(the message is no longer stored)")
    else:
        text = header_section(message).decode("utf-8", "replace").rstrip("\r\n").replace("\r\n", "\n")
        typer.echo("\n".join(escape(line, keep="\t") for line in text.split("\n")))


def _change(
    state: Path | None,
    policy: Path,
    change: Callable[[Store], Awaitable[QuarantineEntry | QuarantineRefusal]],
    done: str,
) -> None:
    result = with_store(state, policy, change)
    if isinstance(result, QuarantineRefusal):
        fail(_REFUSALS[result.reason].format(id=result.entry_id))
    typer.echo(f"{done} {result.id} ({result.tenant}: {', '.join(result.recipients)})")


@quarantine_app.command("release")
def release_command(
    entry_id: EntryId, directory: PolicyArgument = None, state: StateOption = None,
    policy: PolicyOption = Path("policies"),
) -> None:
    """Deliver a held copy to its recipients (the running gateway sends it within a second)."""
    _change(state, directory or policy, lambda s: s.release_quarantine(entry_id, time.time()), "released")


@quarantine_app.command("delete")
def delete_command(
    entry_id: EntryId, directory: PolicyArgument = None, state: StateOption = None,
    policy: PolicyOption = Path("policies"),
) -> None:
    """Drop a held copy (the archive keeps the message when archiving is on)."""
    _change(state, directory or policy, lambda s: s.delete_quarantine(entry_id, time.time()), "deleted")


from engine.cli.promote_cmd import promote_command  # noqa: E402  (its own module; registered here)

quarantine_app.command("promote")(promote_command)
