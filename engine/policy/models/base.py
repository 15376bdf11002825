"""Shared building blocks of the policy models: the domain, address and network validators, the
list item types built on them, and `PolicyModel`, the base of every model."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))*$")
_NAME_RE = r"^[a-z0-9][a-z0-9_-]*$"
_RULE_ID_RE = r"^[a-z0-9]+(-[a-z0-9]+)*$"
_LOCAL_RE = re.compile(r"^[^\s@]+$")


def check_domain(value: str) -> str:
    """Normalise a DNS domain (lowercase, no trailing dot) or raise ValueError."""
    domain = value.strip().lower().rstrip(".")
    try:
        domain = domain.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise ValueError(f"invalid domain {value!r}") from exc
    if not _DOMAIN_RE.match(domain) or "." not in domain:
        raise ValueError(f"invalid domain {value!r}: expected a name like example.com")
    return domain


_DNS_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_DNS_NAME_RE = re.compile(rf"^(?=.{{1,253}}$){_DNS_LABEL}(\.{_DNS_LABEL})+$")


def check_dns_name(value: str) -> str:
    """Normalise a DNS owner name that may hold `_` labels (`_spf.example.com`, RFC 8552), as
    `check_domain` does for host names, or raise ValueError."""
    name = value.strip().lower().rstrip(".")
    try:
        name = ".".join(label.encode("idna").decode("ascii") if not label.isascii() else label
                        for label in name.split("."))
    except UnicodeError as exc:
        raise ValueError(f"invalid DNS name {value!r}") from exc
    if not _DNS_NAME_RE.match(name):
        raise ValueError(f"invalid DNS name {value!r}: expected a name like _spf.example.com")
    return name


def check_address_pattern(value: str) -> str:
    """Normalise an address pattern: `user@domain`, `*@domain` or `*@*.domain`."""
    pattern = value.strip().lower()
    local, sep, domain = pattern.rpartition("@")
    if not sep or not local or not _LOCAL_RE.match(local):
        raise ValueError(f"invalid address pattern {value!r}: expected user@domain or *@domain")
    if "*" in local and local != "*":
        raise ValueError(f"invalid address pattern {value!r}: '*' must be the whole local part")
    if domain.startswith("*."):
        check_domain(domain[2:])
    else:
        check_domain(domain)
    return pattern


def check_network(value: str) -> str:
    """Normalise an IPv4/IPv6 address or CIDR network (host bits must be zero)."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=True))
    except ValueError as exc:
        raise ValueError(f"invalid network {value!r}: {exc}") from exc


# Item types: validating each list item on its own puts the item index in the error location,
# so `validate` can point at the offending line (a list-level validator would point at the key).
DomainName = Annotated[str, AfterValidator(check_domain)]
AddressPattern = Annotated[str, AfterValidator(check_address_pattern)]
Network = Annotated[str, AfterValidator(check_network)]
DnsName = Annotated[str, AfterValidator(check_dns_name)]


class PolicyModel(BaseModel):
    """Base of every policy model: unknown keys are errors, models are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=False)
