"""Naive reference evaluators for the filter graph's matchers (test helper, not part of the engine).

Everything here is written the obvious way, one rule and one list entry at a time, straight from
the semantics documented at the top of `engine/graph/content.py` and `engine/graph/lists.py`.
The property tests assert that the compiled indexes give exactly the same answers.

Text semantics: a text leaf (header or body) holds when some text of its field holds the regex
(`re2.search`, unanchored) OR contains some keyword (lowercase substring). Lone surrogates, which
some charsets (UTF-7) can smuggle into decoded text, are matched as U+FFFD.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Iterable, Sequence

import re2

from engine.graph.lists import ListEntry
from engine.mime.view import Attachment, MessageView
from engine.policy import models as m

_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub(text: str) -> str:
    """Text as RE2 sees it: every lone surrogate replaced by U+FFFD."""
    return _SURROGATE.sub("\ufffd", text)


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str) -> re2._Regexp:
    options = re2.Options()
    options.max_mem = 1 << 30
    return re2.compile(pattern, options=options)


def regex_search(pattern: str, text: str) -> bool:
    return _compiled(pattern).search(scrub(text)) is not None


def text_holds(match: m.TextMatch, texts: Iterable[str]) -> bool:
    """Some text matches the regex or contains one of the keywords (case-insensitive)."""
    for text in texts:
        if match.regex is not None and regex_search(match.regex, text):
            return True
        lowered = scrub(text).lower()
        if any(scrub(keyword).lower() in lowered for keyword in match.contains):
            return True
    return False


def attachment_holds(match: m.AttachmentMatch, attachment: Attachment) -> bool:
    """One attachment satisfies every criterion given in `match`."""
    if match.nested and attachment.depth < 1:
        return False
    if match.extension and attachment.extension not in match.extension:
        return False
    if match.filename is not None and (
        attachment.filename is None or not regex_search(match.filename, attachment.filename)
    ):
        return False
    if match.content_type:
        major = attachment.content_type.split("/", 1)[0] + "/*"
        if attachment.content_type not in match.content_type and major not in match.content_type:
            return False
    return True


def holds(condition: m.Condition, view: MessageView) -> bool:
    """Evaluate one `when` tree directly on the message."""
    if isinstance(condition, m.AnyCondition):
        return any(holds(child, view) for child in condition.any)
    if isinstance(condition, m.AllCondition):
        return all(holds(child, view) for child in condition.all)
    if isinstance(condition, m.NotCondition):
        return not holds(condition.not_, view)
    if isinstance(condition, m.HeaderCondition):
        return text_holds(condition.header, view.headers.get(condition.header.name.lower(), ()))
    if isinstance(condition, m.BodyCondition):
        return text_holds(condition.body, view.texts)
    if isinstance(condition, m.AttachmentCondition):
        return any(attachment_holds(condition.attachment, a) for a in view.attachments)
    if isinstance(condition, m.MimeCondition):
        return bool(view.defects) == condition.mime.malformed
    raise TypeError(f"unknown condition {condition!r}")


def matching_rules(conditions: Sequence[m.Condition], view: MessageView) -> list[int]:
    """Indexes of the rules whose condition holds, evaluated one by one."""
    return [index for index, condition in enumerate(conditions) if holds(condition, view)]


# ---------------------------------------------------------------- lists


def _in_domain(domain: str, suffix: str) -> bool:
    return domain == suffix or domain.endswith("." + suffix)


def address_entries(entries: Iterable[ListEntry], address: str) -> list[ListEntry]:
    """Entries matching a sender address: exact address, `*@domain`, `*@*.domain`, list `domains`."""
    address = address.strip().lower()
    if "@" not in address:
        return []
    local, _, domain = address.rpartition("@")
    domain = domain.rstrip(".")
    address = f"{local}@{domain}"
    found: list[ListEntry] = []
    for entry in entries:
        if entry.field == "domains":
            if _in_domain(domain, entry.value):
                found.append(entry)
        elif entry.field == "senders":
            local, _, entry_domain = entry.value.rpartition("@")
            if local != "*":
                if entry.value == address:
                    found.append(entry)
            elif entry_domain.startswith("*."):
                if _in_domain(domain, entry_domain[2:]):
                    found.append(entry)
            elif entry_domain == domain:
                found.append(entry)
    return found


def ip_entries(entries: Iterable[ListEntry], client_ip: str) -> list[ListEntry]:
    """Entries whose network contains the client address (IPv4-mapped IPv6 taken as IPv4)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return []
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    found: list[ListEntry] = []
    for entry in entries:
        if entry.field == "networks":
            network = ipaddress.ip_network(entry.value)
            if network.version == address.version and address in network:
                found.append(entry)
    return found
