"""`liveprism plan [DIR] --base REF`: what a policy change changes, and to which messages.

Contract: compiles the policy DIR as of git REF (extracted with `git archive`, the work tree is
untouched) and as it is in the work tree; prints the semantic difference (gateway, tenants,
lists, rules, with FILE:LINE) and the blast radius: every corpus message (default
`tests/corpus/*.eml` at the root of the git repository holding DIR) whose verdict changes, one
line each, `name: old -> new (+hits that appeared, -hits that went)`. With `--state`, the held
quarantine and the archive of the last `--since` are replayed too. Formats: text, markdown (a PR
comment / job summary), json. Exit 0; 1 when the work-tree policy is invalid; 2 for usage errors
(not a git repository, unknown ref, no such directory).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine.gitops.plan.blast import CorpusReplay, StoreReplay, replay_corpus, replay_store
from engine.gitops.plan.diff import Change, policy_diff
from engine.gitops.plan.gitref import GitRefError, git_root, policy_at
from engine.graph.build.compiler import load_graph
from engine.graph.filter_graph import FilterGraph
from engine.policy.loader import load_policy
from engine.store.sqlite import DB_NAME

MAX_LINES = 200  # flips listed per section; the counts are always complete


def run_plan(
    directory: Path, base: str, corpus: Path | None, fmt: str, state: Path | None, since: float
) -> int:
    """Print the plan of `directory` against `base` in `fmt`; return the exit code."""
    if not directory.is_dir():
        print(f"error: policy directory '{directory}' does not exist", file=sys.stderr)
        return 2
    if state is not None and not (state / DB_NAME).is_file():
        print(f"error: no LivePrism store in {state}", file=sys.stderr)
        return 2
    new_result = load_graph(directory)
    if new_result.graph is None:
        for problem in new_result.problems:
            if problem.severity == "error":
                print(problem.format("text", directory), file=sys.stderr)
        print("error: the policy in the work tree is invalid; run `liveprism validate`", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="liveprism-plan-") as tmp:
        old_dir = policy_at(directory, base, Path(tmp))
        if isinstance(old_dir, GitRefError):
            print(f"error: {old_dir.message}", file=sys.stderr)
            return 2
        old_source = load_policy(old_dir)
        old_result = load_graph(old_dir) if old_source.gateway is not None else None
        old_graph = old_result.graph if old_result is not None else None
        changes = policy_diff(old_source, load_policy(directory), old_graph, new_result.graph)
    if corpus is None:
        root = git_root(directory)
        corpus = (root or directory) / "tests" / "corpus"
    if corpus.is_absolute() and corpus.is_relative_to(Path.cwd()):
        corpus = corpus.relative_to(Path.cwd())
    corpus_replay = replay_corpus(corpus, old_graph, new_result.graph)
    store_replay = None
    if state is not None:
        store_replay = replay_store(state, since, old_graph or new_result.graph, new_result.graph)
    notes = [] if old_graph is not None else [f"the policy at {base} does not compile (or does not exist): "
                                              "every corpus message is shown with its new verdict"]
    plan = Plan(directory, base, changes, corpus, corpus_replay, state, store_replay, notes)
    print(plan.render(fmt, new_result.graph))
    return 0


class Plan:
    """Everything `plan` found, and its three renderings."""

    def __init__(
        self, directory: Path, base: str, changes: list[Change], corpus: Path, corpus_replay: CorpusReplay,
        state: Path | None, store_replay: StoreReplay | None, notes: list[str],
    ) -> None:
        self.directory = directory
        self.base = base
        self.changes = changes
        self.corpus = corpus
        self.corpus_replay = corpus_replay
        self.state = state
        self.store_replay = store_replay
        self.notes = notes

    def source(self, change: Change) -> str:
        if not change.source or change.source.startswith("("):
            return change.source
        return f"{self.directory.as_posix().rstrip('/')}/{change.source}"

    def render(self, fmt: str, graph: FilterGraph) -> str:
        if fmt == "json":
            return json.dumps(self.to_json(graph), indent=2)
        return self.markdown() if fmt == "markdown" else self.text()

    def to_json(self, graph: FilterGraph) -> dict[str, Any]:
        return {
            "base": self.base,
            "directory": self.directory.as_posix(),
            "policy_version": graph.version,
            "changes": [dict(c.to_json(), source=self.source(c)) for c in self.changes],
            "corpus": {"directory": self.corpus.as_posix(), "replayed": self.corpus_replay.replayed,
                       "changed": [f.to_json() for f in self.corpus_replay.flips],
                       "errors": list(self.corpus_replay.errors)},
            "store": self.store_replay.to_json() if self.store_replay else None,
            "notes": self.notes,
        }

    def text(self) -> str:
        lines = [f"plan: {self.directory.as_posix()} ({self.base} -> work tree)", ""]
        lines += [f"note: {note}" for note in self.notes]
        lines.append(f"policy changes: {len(self.changes) or 'none'}")
        for change in self.changes:
            lines.append(f"  {change.section} {change.kind}: {change.name}  {self.source(change)}".rstrip())
            lines += [f"      {detail}" for detail in change.details]
        lines += ["", self._corpus_heading()]
        lines += [f"  {flip.line()}" for flip in self.corpus_replay.flips[:MAX_LINES]]
        lines += [f"  error: {error}" for error in self.corpus_replay.errors]
        if self.store_replay is not None:
            lines += ["", f"stored mail ({self.state}): {self.store_replay.summary()}"]
            for label, flips in self._store_sections():
                lines += [f"  {label}: {flip.line()}" for flip in flips[:MAX_LINES]]
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = [f"## LivePrism plan: `{self.directory.as_posix()}` ({self.base} → this change)", ""]
        lines += [f"> **Note:** {note}" for note in self.notes]
        lines.append(f"### Policy changes ({len(self.changes)})")
        if not self.changes:
            lines.append("No semantic change.")
        else:
            lines += ["", "| object | change | where | details |", "|---|---|---|---|"]
            for change in self.changes:
                details = "<br>".join(_cell(d) for d in change.details)
                lines.append(f"| {change.section} `{change.name}` | {change.kind} | `{self.source(change)}` "
                             f"| {details} |")
        lines += ["", f"### Blast radius: {self._corpus_heading()}"]
        if self.corpus_replay.flips or self.corpus_replay.errors:
            lines += ["", "```"] + [f.line() for f in self.corpus_replay.flips[:MAX_LINES]]
            lines += [f"error: {e}" for e in self.corpus_replay.errors] + ["```"]
        if self.store_replay is not None:
            lines += ["", f"### Stored mail: {self.store_replay.summary()}"]
            flips = [f"{label}: {f.line()}" for label, group in self._store_sections() for f in group[:MAX_LINES]]
            if flips:
                lines += ["", "```", *flips, "```"]
        return "\n".join(lines)

    def _corpus_heading(self) -> str:
        replay = self.corpus_replay
        return (f"{len(replay.flips)} of {replay.replayed} corpus messages change verdict or route"
                f" ({self.corpus.as_posix()})")

    def _store_sections(self) -> list[tuple[str, tuple[Any, ...]]]:
        assert self.store_replay is not None
        return [("released", self.store_replay.released), ("rejected", self.store_replay.rejected),
                ("changed", self.store_replay.other)]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def since_seconds(value: str) -> float:
    """`7d`, `24h`, … before now, as a unix time (the quarantine command's syntax)."""
    from engine.cli.quarantine_cmd import parse_since

    return parse_since(value, time.time())
