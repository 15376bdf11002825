"""lists/<name>.yaml: `PolicyList`."""

from __future__ import annotations

from pydantic import Field

from engine.policy.models.base import _NAME_RE, AddressPattern, DomainName, Network, PolicyModel
from engine.policy.models.enums import ListAction


class PolicyList(PolicyModel):
    """lists/<name>.yaml: a named block, allow or quarantine list."""

    name: str = Field(pattern=_NAME_RE, description="Unique list name, referenced by gateway and tenants.")
    description: str | None = Field(default=None, description="What the list is for.")
    action: ListAction = Field(description="block: reject; allow: deliver; quarantine: hold.")
    senders: list[AddressPattern] = Field(
        default_factory=list, description="Envelope sender and header From: user@domain or *@domain."
    )
    domains: list[DomainName] = Field(default_factory=list, description="Sender domains, subdomains included.")
    networks: list[Network] = Field(default_factory=list, description="Client addresses or CIDR networks.")
