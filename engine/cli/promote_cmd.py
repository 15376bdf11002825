"""`liveprism quarantine promote ID`: turn a held message into a list entry or a content rule.

Contract: exactly one of --block-sender (envelope sender, else header From), --block-domain (its
domain), --block-network (the client address) or --rule-from subject|body. A list entry goes into
--list NAME, by default the tenant's first block list, else the gateway's first block list; a rule
into --rules NAME, by default the tenant's first rule set, else the gateway's. The YAML file is
edited in place by `engine.gitops.yaml_edit` (every byte outside the new entry unchanged), the
unified diff is printed, and the whole policy is validated again: an edit that would make it
invalid is not written. `--scenario` adds tests/corpus/quarantine-ID.eml (+ .envelope) and a
feature asserting the new outcome; `--commit` creates the branch `promote/ID` with a commit.
Exit 0 done; 1 refused (unknown id, entry already there, no list, invalid result, git failure).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from engine.cli.store_access import PolicyOption, StateOption, fail, with_store
from engine.gitops import promote
from engine.gitops.promote import Held, PromoteRefused, apply, list_entry_edit, rule_edit, write_scenario
from engine.policy.loader import load_policy
from engine.store.base import Store


def promote_command(
    entry_id: Annotated[str, typer.Argument(help="Quarantine id, as shown by `quarantine list`.")],
    block_sender: Annotated[bool, typer.Option("--block-sender", help="Block the sender address.")] = False,
    block_domain: Annotated[bool, typer.Option("--block-domain", help="Block the sender's domain.")] = False,
    block_network: Annotated[bool, typer.Option("--block-network", help="Block the client address.")] = False,
    rule_from: Annotated[str | None, typer.Option("--rule-from", help="subject or body: propose a rule.")] = None,
    list_name: Annotated[str | None, typer.Option("--list", help="List to add the entry to.")] = None,
    rules_name: Annotated[str | None, typer.Option("--rules", help="Rule set to add the rule to.")] = None,
    action: Annotated[str, typer.Option("--action", help="The new rule's action.")] = "reject",
    scenario: Annotated[bool, typer.Option("--scenario", help="Also add a feature scenario for the message.")] = False,
    commit: Annotated[bool, typer.Option("--commit", help="Create branch promote/ID and commit the change.")] = False,
    state: StateOption = None,
    policy: PolicyOption = Path("policies"),
) -> None:
    """Turn a held message into a block list entry or a content rule (YAML edited in place, diff printed)."""
    chosen = [block_sender, block_domain, block_network, rule_from is not None].count(True)
    if chosen != 1:
        raise typer.BadParameter("give exactly one of --block-sender, --block-domain, --block-network, --rule-from")
    if rule_from not in (None, "subject", "body"):
        raise typer.BadParameter(f"{rule_from!r}: expected subject or body", param_hint="--rule-from")
    if action not in ("reject", "quarantine", "tag", "discard", "tempfail"):
        raise typer.BadParameter(f"{action!r}: expected reject, quarantine, tag, discard or tempfail")

    async def fetch(store: Store) -> Held | None:
        entry = await store.get_quarantine(entry_id)
        if entry is None:
            return None
        return Held(entry, await store.message_info(entry.queue_id), await store.read_message(entry.queue_id))

    held = with_store(state, policy, fetch)
    if held is None:
        fail(f"no quarantine entry {entry_id}")
    try:
        source = load_policy(policy)
        if rule_from is not None:
            proposal = rule_edit(source, held, rule_from, rules_name, action)
        else:
            field = "senders" if block_sender else "domains" if block_domain else "networks"
            proposal = list_entry_edit(source, held, field, list_name)
        typer.echo(apply(policy, proposal), nl=False)
        path = policy / proposal.path
        typer.echo(f"{proposal.summary} ({path.as_posix()}:{proposal.edited.line})")
        changed = [path]
        if scenario:
            written = write_scenario(policy, held, proposal.expect)
            typer.echo(f"scenario: {written[-1]} (message {written[0]})")
            changed += written
        if commit:
            branch = promote.commit(policy, held.entry.id, changed, proposal.summary)
            typer.echo(f"committed on branch {branch}")
    except PromoteRefused as refused:
        fail(str(refused))
