"""Envelope addresses as the policy compares them: lowercased, without angle brackets, with
internationalised domains as A-labels; and the `mx:DOMAIN` route labels of outbound copies."""

from __future__ import annotations

from collections.abc import Sequence


def normalise_address(address: str) -> str:
    """Lowercase an envelope address, drop angle brackets and write an internationalised domain
    as A-labels (`x@münchen.example` is `x@xn--mnchen-3ya.example`, as policy domains are);
    "" stays "" (the null sender)."""
    return a_label_domain(address.strip().strip("<>").strip()).lower()


def mx_labels(rcpts: Sequence[str]) -> tuple[str, ...]:
    """`mx:DOMAIN` of each recipient domain, in order: where an outbound copy is delivered."""
    return tuple(dict.fromkeys(f"mx:{normalise_address(rcpt).rpartition('@')[2]}" for rcpt in rcpts))


def a_label_domain(address: str) -> str:
    """`address` with a non-ASCII domain written as A-labels (IDNA); unchanged when it cannot be."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{domain.encode('idna').decode('ascii')}"
    except UnicodeError:
        return address
