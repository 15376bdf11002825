"""The enumerations of the policy files: actions, list actions, directions, TLS, recipient and
DMARC modes."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    """What happens to one tenant's copy of a message; DESIGN.md "Decisions"."""

    reject = "reject"
    tempfail = "tempfail"
    discard = "discard"
    quarantine = "quarantine"
    tag = "tag"
    deliver = "deliver"

    @property
    def severity(self) -> int:
        """Higher is more severe: reject 5 … deliver 0."""
        return _SEVERITY[self]


_SEVERITY = {
    Action.reject: 5,
    Action.tempfail: 4,
    Action.discard: 3,
    Action.quarantine: 2,
    Action.tag: 1,
    Action.deliver: 0,
}


class ListAction(StrEnum):
    """What a matching block/allow list does."""

    block = "block"
    allow = "allow"
    quarantine = "quarantine"


class Direction(StrEnum):
    """Which mail flow a rule applies to."""

    inbound = "inbound"
    outbound = "outbound"
    both = "both"


class RouteTls(StrEnum):
    """TLS towards a tenant server: none, try STARTTLS, or fail over unless STARTTLS works."""

    none = "none"
    opportunistic = "opportunistic"
    required = "required"


class AcceptMode(StrEnum):
    """Which recipients of a tenant's domains are accepted at RCPT."""

    any = "any"
    listed = "listed"


class DmarcPolicy(StrEnum):
    """The DMARC `p=` published for a tenant domain."""

    none = "none"
    quarantine = "quarantine"
    reject = "reject"
