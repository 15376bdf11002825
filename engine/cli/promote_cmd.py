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

import difflib
import json
import re
import subprocess
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import default as default_policy
from email.utils import parseaddr
from pathlib import Path
from typing import Annotated

import typer

from engine.cli.store_access import PolicyOption, StateOption, fail, with_store
from engine.gitops.plan.gitref import git_root
from engine.gitops.yaml_edit import Edited, append_block, append_scalar
from engine.policy.loader import LoadedFile, PolicySource, load_policy
from engine.policy.models import ListAction, PolicyList, RuleSet
from engine.policy.validate import validate_policy
from engine.store.base import QuarantineEntry, Store, StoredMessage

_RE2_SPECIAL = set("\\.+*?()|[]{}^$-#&~")


def re2_escape(text: str) -> str:
    """`text` as an RE2 literal: a backslash before every character RE2 treats specially."""
    return "".join("\\" + char if char in _RE2_SPECIAL else char for char in text)


def _yaml_single(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Held:
    entry: QuarantineEntry
    info: StoredMessage | None
    raw: bytes | None


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
    source = load_policy(policy)
    if rule_from is not None:
        rel, edited, summary, expect = _rule_edit(source, held, rule_from, rules_name, action)
    else:
        field = "senders" if block_sender else "domains" if block_domain else "networks"
        rel, edited, summary, expect = _list_edit(source, held, field, list_name)
    path = policy / rel
    original = path.read_text(encoding="utf-8")
    path.write_text(edited.text, encoding="utf-8")
    problems = [p for p in validate_policy(load_policy(policy)) if p.severity == "error"]
    if problems:
        path.write_text(original, encoding="utf-8")
        details = "; ".join(p.format("text") for p in problems)
        fail(f"the change would make the policy invalid, not written: {details}")
    diff = difflib.unified_diff(original.splitlines(keepends=True), edited.text.splitlines(keepends=True),
                                f"a/{path.as_posix()}", f"b/{path.as_posix()}")
    typer.echo("".join(diff), nl=False)
    typer.echo(f"{summary} ({path.as_posix()}:{edited.line})")
    changed = [path]
    if scenario:
        changed += _write_scenario(policy, held, expect)
    if commit:
        _commit(policy, held.entry.id, changed, summary)


def _block_list(source: PolicySource, tenant: str, wanted: str | None) -> LoadedFile[PolicyList]:
    by_name = {loaded.model.name: loaded for loaded in source.lists}
    if wanted is not None:
        if wanted not in by_name:
            fail(f"no list named {wanted}")
        return by_name[wanted]
    tenant_file = next((t for t in source.tenants if t.model.name == tenant), None)
    names = list(tenant_file.model.lists) if tenant_file else []
    names += list(source.gateway.model.lists) if source.gateway else []
    for name in names:
        loaded = by_name.get(name)
        if loaded is not None and loaded.model.action is ListAction.block:
            return loaded
    fail(f"tenant {tenant} and the gateway have no block list: pass --list NAME")


def _list_edit(
    source: PolicySource, held: Held, field: str, wanted: str | None
) -> tuple[str, Edited, str, str]:
    entry = held.entry
    sender = entry.mail_from or _header_from(held.raw)
    if field == "networks":
        if held.info is None:
            fail(f"the message of {entry.id} is no longer stored: its client address is unknown")
        value = held.info.envelope.client_ip
    elif not sender:
        fail(f"{entry.id} has no sender address (null sender and no From header)")
    else:
        value = sender.lower() if field == "senders" else sender.rpartition("@")[2].lower()
    target = _block_list(source, entry.tenant, wanted)
    rel = target.path
    result = append_scalar((source.root / rel).read_text(encoding="utf-8"), field, value)
    if not isinstance(result, Edited):
        fail(f"{rel}: {result.reason}")
    return rel, result, f"added {value} to {field} of list {target.model.name}", "rejected with 550"


def _rule_edit(
    source: PolicySource, held: Held, part: str, wanted: str | None, action: str
) -> tuple[str, Edited, str, str]:
    entry = held.entry
    by_name = {loaded.model.name: loaded for loaded in source.rulesets}
    names = [wanted] if wanted else [
        *next((t.model.rules for t in source.tenants if t.model.name == entry.tenant), []),
        *(source.gateway.model.rules if source.gateway else []),
    ]
    target: LoadedFile[RuleSet] | None = next((by_name[n] for n in names if n in by_name), None)
    if target is None:
        fail(f"no rule set {wanted}" if wanted else f"tenant {entry.tenant} and the gateway have no rule set: "
             "pass --rules NAME")
    if part == "subject":
        text = (entry.subject or _header(held.raw, "Subject")).strip()
        condition = f"header: {{name: Subject, regex: {_yaml_single('(?i)' + re2_escape(text))}}}"
    else:
        text = _body_line(held.raw)
        condition = f"body: {{regex: {_yaml_single('(?i)' + re2_escape(text))}}}"
    if not text:
        fail(f"{entry.id} has no {part} text to build a rule from")
    ident = "promoted-" + re.sub(r"[^a-z0-9]+", "-", entry.id.lower()).strip("-")
    if any(rule.id == ident for rs in source.rulesets for rule in rs.model.rules):
        fail(f"rule {ident} is already in the policy")
    description = f"Promoted from quarantine {entry.id} ({part}: {text[:60]})"
    lines = [
        f"- id: {ident}",
        f"  description: {json.dumps(description, ensure_ascii=False)}",
        "  when:",
        f"    {condition}",
        f"  then: {{action: {action}}}",
    ]
    rel = target.path
    result = append_block((source.root / rel).read_text(encoding="utf-8"), "rules", lines, ident)
    if not isinstance(result, Edited):
        fail(f"{rel}: {result.reason}")
    word = {"reject": "rejected", "quarantine": "quarantined", "tag": "tagged", "discard": "discarded",
            "tempfail": "tempfailed"}[action]
    return rel, result, f"added rule {ident} to rule set {target.model.name}", f'{word}\n    And rule "{ident}" matched'


def _header(raw: bytes | None, name: str) -> str:
    """The decoded value of header `name` of `raw` ("" when absent)."""
    if raw is None:
        return ""
    return str(BytesHeaderParser(policy=default_policy).parsebytes(raw).get(name, ""))


def _header_from(raw: bytes | None) -> str:
    return parseaddr(_header(raw, "From"))[1]


def _body_line(raw: bytes | None) -> str:
    """The longest line of the message's first text part (at most 80 characters): the most distinctive."""
    if raw is None:
        return ""
    from email import message_from_bytes

    message = message_from_bytes(raw, policy=default_policy)
    part = message.get_body(preferencelist=("plain", "html"))
    text = part.get_content() if part is not None else ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return max(lines, key=len)[:80] if lines else ""


def _write_scenario(policy: Path, held: Held, expect: str) -> list[Path]:
    """tests/corpus/quarantine-ID.eml (+ .envelope) and tests/features/promoted-ID.feature."""
    if held.raw is None or held.info is None:
        fail(f"the message of {held.entry.id} is no longer stored: no scenario can be written")
    root = git_root(policy) or policy.resolve().parent
    name = "quarantine-" + re.sub(r"[^A-Za-z0-9-]+", "-", held.entry.id)
    corpus = root / "tests" / "corpus"
    features = root / "tests" / "features"
    corpus.mkdir(parents=True, exist_ok=True)
    features.mkdir(parents=True, exist_ok=True)
    eml, envelope, feature = corpus / f"{name}.eml", corpus / f"{name}.envelope", features / f"{name}.feature"
    env = held.info.envelope
    eml.write_bytes(held.raw)
    envelope.write_text(json.dumps({"mail_from": env.mail_from, "rcpts": list(held.entry.recipients),
                                    "client_ip": env.client_ip, "helo": env.helo}) + "\n", encoding="utf-8")
    rel_policy = policy.resolve().relative_to(root.resolve()).as_posix() if policy.resolve().is_relative_to(
        root.resolve()) else str(policy.resolve())
    feature.write_text(
        f"Feature: Quarantine {held.entry.id}, promoted to policy\n\n"
        f"  Scenario: the promoted message is {expect.splitlines()[0]}\n"
        f'    Given the policy in "{rel_policy}"\n'
        f'    And the message in "tests/corpus/{eml.name}"\n'
        f"    When it is received\n"
        f"    Then it is {expect}\n",
        encoding="utf-8",
    )
    typer.echo(f"scenario: {feature} (message {eml})")
    return [eml, envelope, feature]


def _commit(policy: Path, entry_id: str, paths: list[Path], summary: str) -> None:
    root = git_root(policy)
    if root is None:
        fail(f"{policy} is not in a git repository: cannot --commit")
    branch = "promote/" + re.sub(r"[^A-Za-z0-9._-]+", "-", entry_id)
    steps = [
        ["git", "-C", str(root), "checkout", "-q", "-b", branch],
        ["git", "-C", str(root), "add", "--", *[str(p.resolve()) for p in paths]],
        ["git", "-C", str(root), "commit", "-q", "-m", f"Promote quarantine {entry_id}: {summary}"],
    ]
    for command in steps:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            fail(f"{' '.join(command[3:])} failed: {result.stderr.strip()}")
    typer.echo(f"committed on branch {branch}")
