"""Content matching: every rule condition of the whole policy compiled into a few shared matchers.

Algorithm. Each rule's `when` tree is split into leaves (one header/body/attachment/mime test)
and boolean nodes. Identical leaves are shared. All regex leaves of one field (each header
name, the body, attachment file names) go into one RE2 `Set` and all keyword leaves of one
field into one RE2 `Set` of literals searched in the lowercased text, so one pass over a text
finds every true leaf of that field, whatever the number of rules. Only rules with at least
one true leaf are evaluated: a rule none of whose leaves holds has the value its tree has with
every leaf false, computed once at compile time (false unless a `not` makes it true). The
per-message cost therefore grows with the number of *matching* rules, not with the number of
rules.

Semantics (shared with the naive reference evaluator in the tests):
- header: any decoded value of the named top-level header (name case-insensitive);
- body: any decoded text of a text/plain or text/html part, at any depth;
- a header/body leaf holds when its regex matches OR one of its keywords occurs in some text;
- regex: RE2 search (unanchored); contains: case-insensitive substring, any keyword (keywords
  are non-empty: the model refuses "");
- lone surrogates (which a UTF-7 charset can smuggle into decoded text) are matched as U+FFFD;
- attachment: some single attachment satisfies every given criterion (extension in the
  list, file name regex, content type in the list or `type/*`); `nested` requires depth ≥ 1;
- mime: `malformed` equals whether the message has MIME defects;
- check: one of the check results of the transaction (`check_ids`, hit ids such as `spf:fail`,
  `dnsbl:zone`; `dmarc:reject`/`dmarc:quarantine` also count as `dmarc:fail`) is `check:r` for
  a listed result r; with no result listed, any result of that check.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import re2

from engine.mime.view import Attachment, MessageView, Text, matchable, text_pieces
from engine.policy import models as m

_RE2_MAX_MEM = 1 << 30  # a DFA out of memory makes RE2::Set report "no match": never let it
_TEXT_PIECE = 1 << 20  # UTF-8 bytes of a large body lowercased at a time (keywords)
_UTF8_CONTINUATION = bytes(range(0x80, 0xC0))  # (an overlap starts at a character)


def re2_options() -> re2.Options:
    """Options for every RE2 object of the graph (large DFA budget, UTF-8)."""
    options = re2.Options()
    options.max_mem = _RE2_MAX_MEM
    return options


class _PatternSet:
    """All regexes of one field in one RE2 Set; `match` returns the leaf ids whose regex matches."""

    __slots__ = ("_leaf_ids", "_set")

    def __init__(self) -> None:
        self._set: re2.Set | None = re2.Set.SearchSet(re2_options())
        self._leaf_ids: list[int] = []

    def add(self, pattern: str, leaf_id: int) -> None:
        assert self._set is not None
        self._set.Add(pattern)
        self._leaf_ids.append(leaf_id)

    def compile(self) -> None:
        if not self._leaf_ids:
            self._set = None
        elif self._set is not None:
            self._set.Compile()

    def match(self, text: Text, out: set[int]) -> None:
        """(UTF-8 bytes are matched in place: RE2 reads the buffer.)"""
        if self._set is None:
            return
        found = self._set.Match(text)
        if found:
            leaf_ids = self._leaf_ids
            out.update(leaf_ids[i] for i in found)


class _KeywordSet:
    """All keywords of one field in one RE2 Set of literals, searched in the lowercased text.

    `keyword.lower() in text.lower()` exactly (Python's lowercasing, not RE2 case folding), for
    every keyword in one DFA pass. RE2's lazily built DFA over literals is an Aho-Corasick
    automaton, and it runs three to five times faster than pyahocorasick's, with no Python work
    per occurrence.
    """

    __slots__ = ("_leaf_ids", "_longest", "_set", "_words")

    def __init__(self) -> None:
        self._words: dict[str, list[int]] = defaultdict(list)
        self._set: re2.Set | None = None
        self._leaf_ids: list[tuple[int, ...]] = []
        self._longest = 0  # UTF-8 bytes of the longest keyword

    def add(self, keyword: str, leaf_id: int) -> None:
        self._words[matchable(keyword).lower()].append(leaf_id)

    def compile(self) -> None:
        if not self._words:
            return
        options = re2_options()
        options.literal = True
        keyword_set = re2.Set.SearchSet(options)
        for word, leaf_ids in self._words.items():
            keyword_set.Add(word)
            self._leaf_ids.append(tuple(leaf_ids))
            self._longest = max(self._longest, len(word.encode("utf-8")))
        keyword_set.Compile()
        self._set = keyword_set

    def match(self, text: Text, out: set[int]) -> None:
        if self._set is None:
            return
        if isinstance(text, str):
            self._found(self._set.Match(text.lower()), out)
            return
        # UTF-8 bytes (a large body): lowercased piece by piece (`text_pieces` cuts where the case
        # mapping has no context), each piece searched after the last `_longest - 1` bytes of the
        # one before, so that a keyword across a cut is found: the same answer, no whole copy.
        overlap = b""
        for piece in text_pieces(text, _TEXT_PIECE):
            lowered = piece.lower() if piece.isascii() else piece.decode("utf-8").lower().encode("utf-8")
            window = overlap + lowered
            self._found(self._set.Match(window), out)
            keep = max(0, len(window) - self._longest + 1)
            overlap = window[keep:].lstrip(_UTF8_CONTINUATION) if self._longest > 1 else b""

    def _found(self, found: list[int] | None, out: set[int]) -> None:
        if found:
            leaf_ids = self._leaf_ids
            for index in found:
                out.update(leaf_ids[index])


@dataclass(frozen=True, slots=True)
class _AttachmentLeaf:
    leaf_id: int
    extensions: frozenset[str]
    content_types: frozenset[str]
    has_filename: bool
    nested: bool


# Boolean trees: ("leaf", id) | ("any", children) | ("all", children) | ("not", child)
Node = tuple[str, object]


class ContentIndex:
    """Compiled content conditions of all rules; `matching_rules` returns the indexes of true rules."""

    def __init__(self, conditions: Sequence[m.Condition]) -> None:
        self._leaf_keys: dict[tuple[object, ...], int] = {}
        self._header_regex: dict[str, _PatternSet] = defaultdict(_PatternSet)
        self._header_words: dict[str, _KeywordSet] = defaultdict(_KeywordSet)
        self._body_regex = _PatternSet()
        self._body_words = _KeywordSet()
        self._filename_regex = _PatternSet()
        self._attachment_leaves: list[_AttachmentLeaf] = []
        self._check_leaves: list[tuple[int, str, tuple[str, ...]]] = []  # (leaf id, check, "check:result" ids)
        self._malformed_leaf: int | None = None
        self._wellformed_leaf: int | None = None

        self._trees: list[Node] = []
        self._rules_by_leaf: dict[int, list[int]] = defaultdict(list)
        # Rules that hold when none of their leaves does (only possible through `not`).
        self._true_without_leaves: list[int] = []
        no_leaves: set[int] = set()
        for rule_index, condition in enumerate(conditions):
            tree, leaves, has_not = self._compile_node(condition)
            self._trees.append(tree)
            if has_not and _evaluate(tree, no_leaves):
                self._true_without_leaves.append(rule_index)
            for leaf_id in leaves:
                self._rules_by_leaf[leaf_id].append(rule_index)

        for pattern_set in (*self._header_regex.values(), self._body_regex, self._filename_regex):
            pattern_set.compile()
        for keyword_set in (*self._header_words.values(), self._body_words):
            keyword_set.compile()
        self._header_names = frozenset(self._header_regex) | frozenset(self._header_words)
        self._ext_index: dict[str, list[_AttachmentLeaf]] = defaultdict(list)
        self._ctype_index: dict[str, list[_AttachmentLeaf]] = defaultdict(list)
        self._filename_only: list[_AttachmentLeaf] = []
        self._attachment_by_leaf = {leaf.leaf_id: leaf for leaf in self._attachment_leaves}
        for leaf in self._attachment_leaves:
            for ext in leaf.extensions:
                self._ext_index[ext].append(leaf)
            for ctype in leaf.content_types:
                self._ctype_index[ctype].append(leaf)
            if not leaf.extensions and not leaf.content_types:
                self._filename_only.append(leaf)

    @property
    def rule_count(self) -> int:
        return len(self._trees)

    # ------------------------------------------------------------ compile

    def _leaf(self, key: tuple[object, ...]) -> tuple[int, bool]:
        """Id of the leaf with this key; True when it is new."""
        existing = self._leaf_keys.get(key)
        if existing is not None:
            return existing, False
        leaf_id = len(self._leaf_keys)
        self._leaf_keys[key] = leaf_id
        return leaf_id, True

    def _compile_leaf(self, condition: m.Condition) -> int:
        if isinstance(condition, m.HeaderCondition):
            header = condition.header
            name = header.name.lower()
            leaf_id, new = self._leaf(("header", name, header.regex, tuple(header.contains)))
            if new:
                self._add_text_leaf(leaf_id, header, self._header_regex[name], self._header_words[name])
            return leaf_id
        if isinstance(condition, m.BodyCondition):
            body = condition.body
            leaf_id, new = self._leaf(("body", body.regex, tuple(body.contains)))
            if new:
                self._add_text_leaf(leaf_id, body, self._body_regex, self._body_words)
            return leaf_id
        if isinstance(condition, m.AttachmentCondition):
            att = condition.attachment
            key = ("attachment", tuple(att.extension), att.filename, tuple(att.content_type), att.nested)
            leaf_id, new = self._leaf(key)
            if new:
                if att.filename is not None:
                    self._filename_regex.add(att.filename, leaf_id)
                self._attachment_leaves.append(
                    _AttachmentLeaf(
                        leaf_id, frozenset(att.extension), frozenset(att.content_type), att.filename is not None,
                        att.nested,
                    )
                )
            return leaf_id
        if isinstance(condition, m.MimeCondition):
            leaf_id, _ = self._leaf(("mime", condition.mime.malformed))
            if condition.mime.malformed:
                self._malformed_leaf = leaf_id
            else:
                self._wellformed_leaf = leaf_id
            return leaf_id
        if isinstance(condition, m.CheckCondition):
            results = tuple(sorted(set(condition.result)))
            leaf_id, new = self._leaf(("check", condition.check, results))
            if new:
                self._check_leaves.append((leaf_id, condition.check, tuple(f"{condition.check}:{r}" for r in results)))
            return leaf_id
        raise TypeError(f"not a leaf condition: {condition!r}")

    @staticmethod
    def _add_text_leaf(leaf_id: int, match: m.TextMatch, regexes: _PatternSet, words: _KeywordSet) -> None:
        """A text leaf is true when its regex matches OR any keyword occurs."""
        if match.regex is not None:
            regexes.add(match.regex, leaf_id)
        for word in match.contains:
            words.add(word, leaf_id)

    def _compile_node(self, condition: m.Condition) -> tuple[Node, set[int], bool]:
        """(tree, leaf ids under it, whether a `not` occurs in it)."""
        if isinstance(condition, m.AnyCondition | m.AllCondition):
            children = condition.any if isinstance(condition, m.AnyCondition) else condition.all
            kind = "any" if isinstance(condition, m.AnyCondition) else "all"
            nodes: list[Node] = []
            leaves: set[int] = set()
            has_not = False
            for child in children:
                node, child_leaves, child_not = self._compile_node(child)
                nodes.append(node)
                leaves |= child_leaves
                has_not = has_not or child_not
            return (kind, tuple(nodes)), leaves, has_not
        if isinstance(condition, m.NotCondition):
            node, leaves, _ = self._compile_node(condition.not_)
            return ("not", node), leaves, True
        leaf_id = self._compile_leaf(condition)
        return ("leaf", leaf_id), {leaf_id}, False

    # ------------------------------------------------------------ match

    def true_leaves(self, view: MessageView, check_ids: frozenset[str] = frozenset()) -> set[int]:
        """Ids of every leaf that holds for this message and these check results (hit ids)."""
        out: set[int] = set()
        if self._check_leaves and check_ids:
            self._match_checks(check_ids, out)
        for name in self._header_names:
            values = view.headers.get(name)
            if not values:
                continue
            regexes = self._header_regex.get(name)
            words = self._header_words.get(name)
            for value in values:
                value = matchable(value)
                if regexes is not None:
                    regexes.match(value, out)
                if words is not None:
                    words.match(value, out)
        for text in view.texts:
            if isinstance(text, str):  # (UTF-8 bytes are valid UTF-8 already)
                text = matchable(text)
            self._body_regex.match(text, out)
            self._body_words.match(text, out)
        if self._attachment_leaves:
            for attachment in view.attachments:
                self._match_attachment(attachment, out)
        if view.defects:
            if self._malformed_leaf is not None:
                out.add(self._malformed_leaf)
        elif self._wellformed_leaf is not None:
            out.add(self._wellformed_leaf)
        return out

    def _match_checks(self, check_ids: frozenset[str], out: set[int]) -> None:
        ids = set(check_ids)
        if ids & {"dmarc:reject", "dmarc:quarantine"}:
            ids.add("dmarc:fail")
        checks = {hit_id.partition(":")[0] for hit_id in ids}
        for leaf_id, check, wanted in self._check_leaves:
            if (not wanted and check in checks) or any(w in ids for w in wanted):
                out.add(leaf_id)

    def _match_attachment(self, attachment: Attachment, out: set[int]) -> None:
        candidates: list[_AttachmentLeaf] = []
        if attachment.extension is not None:
            candidates.extend(self._ext_index.get(attachment.extension, ()))
        ctype = attachment.content_type
        candidates.extend(self._ctype_index.get(ctype, ()))
        candidates.extend(self._ctype_index.get(ctype.split("/", 1)[0] + "/*", ()))
        candidates.extend(self._filename_only)
        if not candidates:
            return
        filename_hits: set[int] = set()
        if attachment.filename is not None:
            self._filename_regex.match(matchable(attachment.filename), filename_hits)
        for leaf in candidates:
            if leaf.leaf_id in out or (leaf.nested and attachment.depth < 1):
                continue
            if leaf.extensions and attachment.extension not in leaf.extensions:
                continue
            if leaf.content_types and not _ctype_matches(ctype, leaf.content_types):
                continue
            if leaf.has_filename and leaf.leaf_id not in filename_hits:
                continue
            out.add(leaf.leaf_id)

    def matching_rules(self, view: MessageView, check_ids: frozenset[str] = frozenset()) -> list[int]:
        """Indexes (in compile order) of every rule whose condition holds for this message and
        these check results (hit ids of the transaction's checks)."""
        leaves = self.true_leaves(view, check_ids)
        candidates: set[int] = set()
        rules_by_leaf = self._rules_by_leaf
        for leaf_id in leaves:
            candidates.update(rules_by_leaf.get(leaf_id, ()))
        trees = self._trees
        found = [index for index in candidates if _evaluate(trees[index], leaves)]
        # A rule none of whose leaves holds keeps its compile-time value.
        found.extend(index for index in self._true_without_leaves if index not in candidates)
        return sorted(found)


def _ctype_matches(ctype: str, wanted: Iterable[str]) -> bool:
    major = ctype.split("/", 1)[0] + "/*"
    return any(w in (ctype, major) for w in wanted)


def _evaluate(node: Node, leaves: set[int]) -> bool:
    kind, value = node
    if kind == "leaf":
        return value in leaves
    if kind == "any":
        return any(_evaluate(child, leaves) for child in value)  # type: ignore[attr-defined]
    if kind == "all":
        return all(_evaluate(child, leaves) for child in value)  # type: ignore[attr-defined]
    return not _evaluate(value, leaves)  # type: ignore[arg-type]
