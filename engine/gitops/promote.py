"""Quarantine review into policy: a held message becomes a block list entry or a content rule,
edited into the policy's YAML in place, validated, optionally with a scenario and a git branch.

Contract (used by `liveprism quarantine promote`; a review UI calls the same functions):
- `list_entry_edit` / `rule_edit` propose the edit (`Proposal`): the file, its new text (every
  byte outside the new entry unchanged, `engine.gitops.yaml_edit`), a summary and the outcome a
  scenario should assert. Nothing is written;
- `apply` writes the proposal, validates the whole policy again and restores the file when the
  result would be invalid; it returns the unified diff;
- `write_scenario` adds tests/corpus/quarantine-ID.eml (+ .envelope) and a feature asserting the
  new outcome; `commit` creates the branch `promote/ID` with one commit.
Every refusal (no such list, entry already there, invalid result, git failure, message gone) is
`PromoteRefused` with the reason an admin reads; nothing is left half-written.
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
from typing import NoReturn

from engine.gitops.plan.gitref import git_root
from engine.gitops.yaml_edit import Edited, append_block, append_scalar
from engine.policy.loader import LoadedFile, PolicySource, load_policy
from engine.policy.models import ListAction, PolicyList, RuleSet
from engine.policy.validate import validate_policy
from engine.store.base import QuarantineEntry, StoredMessage


class PromoteRefused(Exception):
    """The promotion cannot be done; the message says why."""


_RE2_SPECIAL = set("\\.+*?()|[]{}^$-#&~")


def re2_escape(text: str) -> str:
    """`text` as an RE2 literal: a backslash before every character RE2 treats specially."""
    return "".join("\\" + char if char in _RE2_SPECIAL else char for char in text)


def _yaml_single(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@dataclass(frozen=True, slots=True)
class Held:
    """A quarantine entry with its stored message (None when it is no longer stored)."""

    entry: QuarantineEntry
    info: StoredMessage | None
    raw: bytes | None


@dataclass(frozen=True, slots=True)
class Proposal:
    """One edit of one policy file: `path` relative to the policy directory, its new text, what
    it does (`summary`) and the outcome a scenario for the message asserts (`expect`)."""

    path: str
    edited: Edited
    summary: str
    expect: str


def _block_list(source: PolicySource, tenant: str, wanted: str | None) -> LoadedFile[PolicyList]:
    by_name = {loaded.model.name: loaded for loaded in source.lists}
    if wanted is not None:
        if wanted not in by_name:
            _refuse(f"no list named {wanted}")
        return by_name[wanted]
    tenant_file = next((t for t in source.tenants if t.model.name == tenant), None)
    names = list(tenant_file.model.lists) if tenant_file else []
    names += list(source.gateway.model.lists) if source.gateway else []
    for name in names:
        loaded = by_name.get(name)
        if loaded is not None and loaded.model.action is ListAction.block:
            return loaded
    _refuse(f"tenant {tenant} and the gateway have no block list: pass --list NAME")


def list_entry_edit(
    source: PolicySource, held: Held, field: str, wanted: str | None
) -> Proposal:
    """Add the message's sender (`field="senders"`), its domain (`"domains"`) or its client address
    (`"networks"`) to list `wanted`, by default the tenant's first block list, else the gateway's."""
    entry = held.entry
    sender = entry.mail_from or _header_from(held.raw)
    if field == "networks":
        if held.info is None:
            _refuse(f"the message of {entry.id} is no longer stored: its client address is unknown")
        value = held.info.envelope.client_ip
    elif not sender:
        _refuse(f"{entry.id} has no sender address (null sender and no From header)")
    else:
        value = sender.lower() if field == "senders" else sender.rpartition("@")[2].lower()
    target = _block_list(source, entry.tenant, wanted)
    rel = target.path
    result = append_scalar((source.root / rel).read_text(encoding="utf-8"), field, value)
    if not isinstance(result, Edited):
        _refuse(f"{rel}: {result.reason}")
    return Proposal(rel, result, f"added {value} to {field} of list {target.model.name}", "rejected with 550")


def rule_edit(
    source: PolicySource, held: Held, part: str, wanted: str | None, action: str
) -> Proposal:
    """A rule matching the message's subject or longest body line (`part`), with `action`, in rule
    set `wanted`, by default the tenant's first rule set, else the gateway's."""
    entry = held.entry
    by_name = {loaded.model.name: loaded for loaded in source.rulesets}
    names = [wanted] if wanted else [
        *next((t.model.rules for t in source.tenants if t.model.name == entry.tenant), []),
        *(source.gateway.model.rules if source.gateway else []),
    ]
    target: LoadedFile[RuleSet] | None = next((by_name[n] for n in names if n in by_name), None)
    if target is None:
        _refuse(f"no rule set {wanted}" if wanted else f"tenant {entry.tenant} and the gateway have no rule set: "
             "pass --rules NAME")
    if part == "subject":
        text = (entry.subject or _header(held.raw, "Subject")).strip()
        condition = f"header: {{name: Subject, regex: {_yaml_single('(?i)' + re2_escape(text))}}}"
    else:
        text = _body_line(held.raw)
        condition = f"body: {{regex: {_yaml_single('(?i)' + re2_escape(text))}}}"
    if not text:
        _refuse(f"{entry.id} has no {part} text to build a rule from")
    ident = "promoted-" + re.sub(r"[^a-z0-9]+", "-", entry.id.lower()).strip("-")
    if any(rule.id == ident for rs in source.rulesets for rule in rs.model.rules):
        _refuse(f"rule {ident} is already in the policy")
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
        _refuse(f"{rel}: {result.reason}")
    word = {"reject": "rejected", "quarantine": "quarantined", "tag": "tagged", "discard": "discarded",
            "tempfail": "tempfailed"}[action]
    return Proposal(rel, result, f"added rule {ident} to rule set {target.model.name}",
                    f'{word}\n    And rule "{ident}" matched')


def apply(policy: Path, proposal: Proposal) -> str:
    """Write the proposal and validate the whole policy again; an invalid result is undone and
    refused. Returns the unified diff of the change."""
    path = policy / proposal.path
    original = path.read_text(encoding="utf-8")
    path.write_text(proposal.edited.text, encoding="utf-8")
    problems = [p for p in validate_policy(load_policy(policy)) if p.severity == "error"]
    if problems:
        path.write_text(original, encoding="utf-8")
        details = "; ".join(p.format("text") for p in problems)
        raise PromoteRefused(f"the change would make the policy invalid, not written: {details}")
    diff = difflib.unified_diff(original.splitlines(keepends=True), proposal.edited.text.splitlines(keepends=True),
                                f"a/{path.as_posix()}", f"b/{path.as_posix()}")
    return "".join(diff)


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


def write_scenario(policy: Path, held: Held, expect: str) -> list[Path]:
    """Write tests/corpus/quarantine-ID.eml (+ .envelope) and tests/features/quarantine-ID.feature;
    returns the three paths (the feature last)."""
    if held.raw is None or held.info is None:
        _refuse(f"the message of {held.entry.id} is no longer stored: no scenario can be written")
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
    return [eml, envelope, feature]


def commit(policy: Path, entry_id: str, paths: list[Path], summary: str) -> str:
    """Create the branch promote/ID with `paths` committed; returns the branch name."""
    root = git_root(policy)
    if root is None:
        _refuse(f"{policy} is not in a git repository: cannot --commit")
    branch = "promote/" + re.sub(r"[^A-Za-z0-9._-]+", "-", entry_id)
    steps = [
        ["git", "-C", str(root), "checkout", "-q", "-b", branch],
        ["git", "-C", str(root), "add", "--", *[str(p.resolve()) for p in paths]],
        ["git", "-C", str(root), "commit", "-q", "-m", f"Promote quarantine {entry_id}: {summary}"],
    ]
    for command in steps:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            _refuse(f"{' '.join(command[3:])} failed: {result.stderr.strip()}")
    return branch


def _refuse(message: str) -> NoReturn:
    raise PromoteRefused(message)
