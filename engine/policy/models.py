"""Pydantic v2 models of the four policy file kinds (DESIGN.md "Policy format").

Contract: every model forbids unknown keys and describes every field; validators are pure
(no file system, no DNS) — side effects belong to the compiler. Regex syntax (RE2) and
cross-file references are checked by `engine.policy.validate`, not here.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

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


# ---------------------------------------------------------------- enums


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


# ---------------------------------------------------------------- gateway.yaml


class MxHost(PolicyModel):
    name: str = Field(description="Host name of one MXPath server, published as MX target.")
    ipv4: list[ipaddress.IPv4Address] = Field(default_factory=list, description="Its IPv4 addresses (A).")
    ipv6: list[ipaddress.IPv6Address] = Field(default_factory=list, description="Its IPv6 addresses (AAAA).")
    priority: int = Field(
        default=10, ge=0, le=65535, description="MX preference published for it (equal values share the load)."
    )

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_domain(value)


class Listener(PolicyModel):
    address: str = Field(default="127.0.0.1", description="IP address to listen on.")
    port: int = Field(ge=1, le=65535, description="TCP port to listen on (1-65535).")

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))


class Listeners(PolicyModel):
    inbound: Listener = Field(
        default_factory=lambda: Listener(port=2525), description="The MX listener for mail from the internet."
    )
    outbound: Listener = Field(
        default_factory=lambda: Listener(port=2587),
        description="The listener for tenants' own servers (submission of outbound mail); started only when set.",
    )

    @property
    def outbound_enabled(self) -> bool:
        """Whether gateway.yaml sets `listeners.outbound` (the outbound listener runs only then)."""
        return "outbound" in self.model_fields_set


class TlsSettings(PolicyModel):
    cert: str | None = Field(default=None, description="PEM certificate chain path; STARTTLS is offered when set.")
    key: str | None = Field(default=None, description="PEM private key path or env:NAME (a secret, never committed).")


class Limits(PolicyModel):
    max_message_size: int = Field(default=26_214_400, ge=1024, description="Largest message in bytes (SIZE).")
    max_recipients: int = Field(default=100, ge=1, description="Recipients per transaction (452 beyond).")
    max_connections: int = Field(default=1000, ge=1, description="Concurrent SMTP connections in total.")
    max_connections_per_ip: int = Field(default=20, ge=1, description="Concurrent connections per client IP.")
    command_timeout: int = Field(default=300, ge=1, description="Seconds to wait for the next SMTP command.")
    max_errors: int = Field(
        default=20, ge=1,
        description="4xx/5xx replies in one SMTP session before it is closed with 421"
        " (Postfix smtpd_hard_error_limit).",
    )
    max_junk_commands: int = Field(
        default=100, ge=1,
        description="NOOP, RSET, VRFY, EXPN and HELP commands in one session before it is closed with 421"
        " (Postfix smtpd_junk_command_limit).",
    )
    hopcount_limit: int = Field(
        default=50, ge=1,
        description="Received header fields a message may carry; more is a mail loop: 554 5.4.6"
        " (Postfix hopcount_limit).",
    )


class Storage(PolicyModel):
    path: str = Field(
        default="var/liveprism", description="State directory (SQLite + files); relative to the working directory."
    )
    url: str | None = Field(default=None, description="Server database URL (postgresql://…); embedded when unset.")


class ArchiveSettings(PolicyModel):
    enabled: bool = Field(
        default=True, description="Keep a copy of every message, inbound and outbound (those refused after DATA too).",
    )
    retention_days: int = Field(default=365, ge=1, description="Days an archived message is kept.")


class QuarantineSettings(PolicyModel):
    retention_days: int = Field(default=30, ge=1, description="Days a held message is kept before deletion.")


class DeliverySettings(PolicyModel):
    retry_initial: int = Field(default=60, ge=1, description="Seconds before the first retry.")
    retry_max: int = Field(default=3600, ge=1, description="Longest wait between retries (exponential backoff).")
    give_up_after: int = Field(default=432_000, ge=1, description="Seconds until a DSN is sent and the copy dropped.")
    connect_timeout: int = Field(default=30, ge=1, description="Seconds to connect to a tenant server.")
    mx_port: int = Field(
        default=25,
        ge=1,
        le=65535,
        description="Port of the mail exchangers found in DNS (DSNs to external senders). 25 except in test labs.",
    )
    dsn: Literal["external", "tenants-only", "off"] = Field(
        default="external",
        description="Who gets delivery status notifications (bounces): any sender (external), senders in a"
        " tenant's domain only (tenants-only), or nobody (off). Never an address literal; one per message.",
    )
    private_next_hops: Literal["refuse", "allow"] = Field(
        default="refuse",
        description="DSNs whose mail exchangers (found in DNS) are loopback, private, link-local or unspecified"
        " addresses are dropped (refuse), so a forged sender cannot make the relay connect inside the network."
        " allow: only for test labs that deliver DSNs to 127.0.0.1.",
    )
    mta_sts_port: int = Field(
        default=443,
        ge=1,
        le=65535,
        description="HTTPS port of https://mta-sts.DOMAIN/.well-known/mta-sts.txt (RFC 8461 §3.3). 443 except in"
        " test labs.",
    )
    tls_ca_file: str | None = Field(
        default=None,
        description="Extra CA certificates (PEM file; relative to the policy directory) trusted, besides the system"
        " ones, when a certificate must be valid: MTA-STS policy fetches and MTA-STS enforced deliveries.",
    )


class DnsSettings(PolicyModel):
    nameservers: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = Field(
        default_factory=list, description="Resolvers to ask; empty uses the system resolver."
    )
    port: int = Field(default=53, ge=1, le=65535, description="Resolver port.")
    timeout: float = Field(default=2.0, gt=0, description="Seconds per DNS query.")


class Scoring(PolicyModel):
    tag_at: float = Field(default=3.0, description="Score at which a message is tagged.")
    quarantine_at: float = Field(default=6.0, description="Score at which a message is quarantined.")
    reject_at: float = Field(default=15.0, description="Score at which a message is rejected.")
    subject_prefix: str | None = Field(default=None, description="Prefix added to the Subject of tagged mail.")


class ScoringOverride(PolicyModel):
    tag_at: float | None = Field(default=None, description="Overrides the gateway tag_at.")
    quarantine_at: float | None = Field(default=None, description="Overrides the gateway quarantine_at.")
    reject_at: float | None = Field(default=None, description="Overrides the gateway reject_at.")
    subject_prefix: str | None = Field(default=None, description="Overrides the gateway subject_prefix.")


SPF_RESULTS = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")  # RFC 7208 §2.6
DKIM_RESULTS = ("pass", "fail", "policy", "neutral", "none", "temperror", "permerror")  # RFC 8601 §2.7.1
# RFC 7489 §11.2 results; a failure under the sender's published p=reject / p=quarantine is
# reported as `reject` / `quarantine` (the policy's disposition), any other failure as `fail`.
DMARC_RESULTS = ("pass", "fail", "quarantine", "reject", "none", "temperror", "permerror")
ARC_RESULTS = ("pass", "fail", "none", "temperror", "permerror")  # RFC 8617 §4.4 (cv= of the chain)
# Check names a rule can test (`when: {check: NAME, result: [...]}`) and that prefix hit ids.
CHECK_RESULTS: dict[str, tuple[str, ...]] = {
    "spf": SPF_RESULTS,
    "dkim": DKIM_RESULTS,
    "dmarc": DMARC_RESULTS,
    "arc": ARC_RESULTS,
    "dnsbl": (),  # results are zone names
    "uribl": (),  # results are zone names
    "virus": (),  # results are virus names as clamd reports them
    "antivirus": ("error",),  # clamd could not be asked (down, timeout, over its size limit)
}


class Dnsbl(PolicyModel):
    zone: str = Field(description="DNSBL zone queried with the reversed client address (IPv6: nibbles).")
    score: float = Field(default=5.0, description="Score added when the client is listed.")
    returns: list[ipaddress.IPv4Address] = Field(
        default_factory=list,
        description="Answers that count as a listing (e.g. [127.0.0.2]); empty: any 127.0.0.0/8 answer "
        "outside 127.255.255.0/24 (which list operators use for refused or rate-limited queries).",
    )
    action: Action | None = Field(
        default=None,
        description="Action when listed; reject/tempfail refuse the client before DATA (at MAIL).",
    )

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_domain(value)


class Uribl(PolicyModel):
    zone: str = Field(description="RHSBL/URIBL zone queried with the sender domain and the domains of body links.")
    score: float = Field(default=5.0, description="Score added when a queried domain is listed.")
    returns: list[ipaddress.IPv4Address] = Field(
        default_factory=list, description="Answers that count as a listing; empty: any 127.0.0.0/8 answer "
        "outside 127.255.255.0/24."
    )
    action: Action | None = Field(default=None, description="Action when a domain is listed.")

    @field_validator("zone")
    @classmethod
    def _zone(cls, value: str) -> str:
        return check_domain(value)


def _result_keys(allowed: tuple[str, ...]) -> Any:
    def check(value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(allowed))
        if unknown:
            raise ValueError(f"unknown result {', '.join(unknown)}: expected one of {', '.join(allowed)}")
        return value

    return AfterValidator(check)


class SpfCheck(PolicyModel):
    enabled: bool = Field(default=False, description="Whether SPF (RFC 7208) of the envelope sender runs.")
    scores: Annotated[dict[str, float], _result_keys(SPF_RESULTS)] = Field(
        default_factory=lambda: {"fail": 3.0, "softfail": 1.0, "permerror": 1.0},
        description="Score per SPF result (pass, fail, softfail, neutral, none, temperror, permerror); 0 when absent.",
    )
    actions: Annotated[dict[str, Action], _result_keys(SPF_RESULTS)] = Field(
        default_factory=dict, description="Action per SPF result, e.g. {fail: reject} (refused at MAIL)."
    )


class DkimCheck(PolicyModel):
    enabled: bool = Field(default=False, description="Whether DKIM (RFC 6376) signatures are verified.")
    scores: Annotated[dict[str, float], _result_keys(DKIM_RESULTS)] = Field(
        default_factory=lambda: {"fail": 1.0},
        description="Score per DKIM result (the best of all signatures: pass > fail > … > none).",
    )
    actions: Annotated[dict[str, Action], _result_keys(DKIM_RESULTS)] = Field(
        default_factory=dict, description="Action per DKIM result."
    )


class DmarcCheck(PolicyModel):
    enabled: bool = Field(
        default=False, description="Whether DMARC (RFC 7489) runs (with SPF and DKIM for alignment, even when off)."
    )
    honour_policy: bool = Field(
        default=True,
        description="Apply the sender domain's published policy: a failure under p=reject rejects, under "
        "p=quarantine quarantines (pct= and sp= applied). false: the result is only scored.",
    )
    scores: Annotated[dict[str, float], _result_keys(DMARC_RESULTS)] = Field(
        default_factory=lambda: {"fail": 2.0, "quarantine": 4.0, "reject": 6.0},
        description="Score per DMARC result (pass, fail, quarantine, reject, none, temperror, permerror).",
    )
    actions: Annotated[dict[str, Action], _result_keys(DMARC_RESULTS)] = Field(
        default_factory=dict, description="Action per DMARC result; overrides the honoured policy's action."
    )


class ArcCheck(PolicyModel):
    enabled: bool = Field(default=False, description="Whether ARC (RFC 8617) chains are verified.")
    trusted_sealers: list[DomainName] = Field(
        default_factory=list,
        description="Forwarders (ARC-Seal d=) whose passing chain overrides a DMARC failure (mailing lists).",
    )
    scores: Annotated[dict[str, float], _result_keys(ARC_RESULTS)] = Field(
        default_factory=dict, description="Score per ARC result (pass, fail, none, temperror, permerror)."
    )
    actions: Annotated[dict[str, Action], _result_keys(ARC_RESULTS)] = Field(
        default_factory=dict, description="Action per ARC result."
    )


class Antivirus(PolicyModel):
    clamd: str = Field(description="clamd address: tcp://HOST:PORT or unix:///path.")
    on_virus: Action = Field(default=Action.reject, description="Action when a virus is found; nothing overrides it.")
    on_error: Action = Field(
        default=Action.tempfail,
        description="Action when clamd cannot be asked (down, timeout, over its StreamMaxLength).",
    )
    timeout: float = Field(
        default=15.0, gt=0, description="Seconds one scan may take (connect included); keep it below checks.budget."
    )
    chunk_size: int = Field(
        default=65_536, ge=1024, le=16_777_216,
        description="INSTREAM chunk size in bytes; keep it below clamd's StreamMaxLength.",
    )

    @field_validator("clamd")
    @classmethod
    def _address(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.scheme == "unix" and parts.path:
            return value
        if parts.scheme == "tcp" and parts.hostname:
            try:
                port = parts.port
            except ValueError as exc:
                raise ValueError(f"invalid clamd address {value!r}: {exc}") from exc
            if port:
                return value
        raise ValueError(f"invalid clamd address {value!r}: expected tcp://HOST:PORT or unix:///path")


class MimeChecks(PolicyModel):
    malformed_score: float = Field(default=0.0, description="Score of the built-in malformed-mime hit.")


class Checks(PolicyModel):
    dnsbl: list[Dnsbl] = Field(default_factory=list, description="DNS block lists for the client IP.")
    uribl: list[Uribl] = Field(
        default_factory=list, description="Domain block lists for the sender domain and the domains of body links."
    )
    spf: SpfCheck = Field(default_factory=SpfCheck, description="SPF (RFC 7208) of the envelope sender; off by default")
    dkim: DkimCheck = Field(default_factory=DkimCheck, description="DKIM (RFC 6376) verification; off by default.")
    dmarc: DmarcCheck = Field(default_factory=DmarcCheck, description="DMARC (RFC 7489); off by default.")
    arc: ArcCheck = Field(default_factory=ArcCheck, description="ARC (RFC 8617) verification; off by default.")
    antivirus: Antivirus | None = Field(default=None, description="clamd scanning; off when unset.")
    mime: MimeChecks = Field(default_factory=MimeChecks, description="Built-in MIME structure checks.")
    timeout: float = Field(default=5.0, gt=0, description="Seconds each DNS-based check may take (→ temperror).")
    budget: float = Field(
        default=20.0, gt=0,
        description="Seconds the end of DATA waits for all checks of a message together; what has not "
        "answered by then is a temperror (antivirus: on_error).",
    )
    max_link_domains: int = Field(
        default=20, ge=0, le=200, description="Distinct registrable link domains queried per message (uribl)."
    )


class CheckOverride(PolicyModel):
    score: float | None = Field(default=None, description="Replaces the score of this check result.")
    action: Action | None = Field(default=None, description="Replaces the action of this check result.")


_HIT_ID_RE = re.compile(r"^(spf|dkim|dmarc|arc|dnsbl|uribl|virus|antivirus):[^\s]+$")


def _check_override_keys(value: dict[str, CheckOverride]) -> dict[str, CheckOverride]:
    for key in value:
        if not _HIT_ID_RE.match(key):
            raise ValueError(
                f"invalid check result {key!r}: expected CHECK:RESULT with CHECK one of "
                + ", ".join(CHECK_RESULTS) + " (e.g. spf:fail, dnsbl:zen.example.org, virus:*)"
            )
    return value


class LogSettings(PolicyModel):
    format: Literal["text", "json"] = Field(default="text", description="One line per transaction: text or JSON.")
    level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")


_ENV_REF_RE = re.compile(r"^env:[A-Za-z_][A-Za-z0-9_]*$")


class AdminSettings(PolicyModel):
    """The admin HTTP listener (health, metrics, policy, reload); absent = no listener."""

    address: str = Field(default="127.0.0.1", description="IP address to listen on (loopback by default).")
    port: int = Field(default=8025, ge=1, le=65535, description="TCP port of the admin HTTP listener.")
    token: str = Field(
        description="Bearer token for POST /reload: env:NAME or a file path (relative to the policy dir), "
        "never the token itself."
    )
    dns_check_interval: int = Field(
        default=3600, ge=0,
        description="Seconds between DNS drift checks exported as liveprism_dns_drift{domain,record}; 0 = off.",
    )

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        return str(ipaddress.ip_address(value))

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        """A reference, not a secret: `env:NAME`, or a path (it has a `/`, e.g. `./admin-token`)."""
        if value.startswith("env:"):
            if not _ENV_REF_RE.match(value):
                raise ValueError(f"invalid environment reference {value!r}: expected env:NAME")
            return value
        if "/" not in value:
            raise ValueError(
                "the token must be referenced as env:NAME or a file path containing '/' (e.g. ./admin-token),"
                " never written inline"
            )
        return value


class Gateway(PolicyModel):
    """gateway.yaml: settings shared by every tenant."""

    @field_validator("postmaster")
    @classmethod
    def _postmaster(cls, value: str | None) -> str | None:
        if value is None:
            return None
        pattern = check_address_pattern(value)
        if pattern.startswith("*"):
            raise ValueError(f"postmaster must be one mailbox, not a pattern: {value!r}")
        return pattern

    hostname: str = Field(description="The MX target published for every tenant domain; also the HELO name.")
    mx_hosts: list[MxHost] = Field(default_factory=list, description="The MXPath servers and their addresses.")
    listeners: Listeners = Field(default_factory=Listeners, description="SMTP listeners.")
    tls: TlsSettings = Field(default_factory=TlsSettings, description="Server certificate for STARTTLS.")
    limits: Limits = Field(default_factory=Limits, description="Protocol limits.")
    storage: Storage = Field(default_factory=Storage, description="Where spool, archive and quarantine live.")
    archive: ArchiveSettings = Field(default_factory=ArchiveSettings, description="Archive of inbound mail.")
    quarantine: QuarantineSettings = Field(default_factory=QuarantineSettings, description="Held mail.")
    delivery: DeliverySettings = Field(default_factory=DeliverySettings, description="Relay retry schedule.")
    dns: DnsSettings = Field(default_factory=DnsSettings, description="Resolver used by checks and relay.")
    dns_ttl: int = Field(
        default=3600, ge=60, le=86_400, description="TTL in seconds of the records `liveprism dns` publishes."
    )
    scoring: Scoring = Field(default_factory=Scoring, description="Default score thresholds.")
    checks: Checks = Field(default_factory=Checks, description="External checks (detection only).")
    log: LogSettings = Field(default_factory=LogSettings, description="Transaction log format.")
    admin: AdminSettings | None = Field(
        default=None, description="Admin HTTP listener (health, metrics, policy, reload); none when unset."
    )
    postmaster: str | None = Field(
        default=None,
        description="Mailbox (in a tenant's domain) that receives RCPT TO:<postmaster> and postmaster@hostname"
        " (RFC 5321 §4.5.1); refused with 550 when unset.",
    )
    lists: list[str] = Field(default_factory=list, description="Lists applied to every tenant.")
    rules: list[str] = Field(default_factory=list, description="Rule sets applied to every tenant.")

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        return check_domain(value)


# ---------------------------------------------------------------- tenants/<name>.yaml


class Route(PolicyModel):
    host: str = Field(description="Tenant mail server host name or IP address.")
    port: int = Field(default=25, ge=1, le=65535, description="SMTP port of the tenant server.")
    priority: int = Field(default=10, ge=0, description="Lower is tried first; equal priorities share load.")
    tls: RouteTls = Field(default=RouteTls.opportunistic, description="STARTTLS towards this server.")

    @property
    def label(self) -> str:
        """`host:port`, as shown in traces."""
        return f"{self.host}:{self.port}"


class Recipients(PolicyModel):
    accept: AcceptMode = Field(default=AcceptMode.any, description="any: every address; listed: only `addresses`.")
    addresses: list[AddressPattern] = Field(
        default_factory=list, description="Accepted addresses or *@domain patterns."
    )


class DkimKey(PolicyModel):
    selector: str = Field(description="DKIM selector published at SELECTOR._domainkey.DOMAIN.")
    private_key: str = Field(description="PEM private key path or env:NAME (a secret, never committed).")


class OutboundAuth(PolicyModel):
    """SMTP AUTH (PLAIN, LOGIN; only after STARTTLS) on the outbound listener for this tenant's users."""

    users: str = Field(
        description="Users file: path relative to the policy directory, or env:NAME holding its text; one"
        " `user:argon2-hash` per line (make hashes with `liveprism users hash`). A secret, never committed.",
    )


class OutboundLimits(PolicyModel):
    """Outbound messages per hour (sliding window kept in the store; 451 4.7.1 beyond it)."""

    per_sender_per_hour: int | None = Field(
        default=None, ge=1, description="Messages one envelope sender address may send in any hour; unset = no limit.",
    )
    per_tenant_per_hour: int | None = Field(
        default=None, ge=1, description="Messages the whole tenant may send in any hour; unset = no limit.",
    )


class Outbound(PolicyModel):
    networks: list[Network] = Field(default_factory=list, description="Client networks allowed to send outbound.")
    auth: OutboundAuth | None = Field(default=None, description="SMTP AUTH users who may send as this tenant.")
    sender_domains: list[DomainName] = Field(
        default_factory=list,
        description="More domains this tenant may send as (envelope sender and header From) besides `domains`,"
        " subdomains included; never another tenant's domain.",
    )
    dkim: DkimKey | None = Field(default=None, description="DKIM signing of outbound mail.")
    limits: OutboundLimits = Field(default_factory=OutboundLimits, description="Outbound rate limits.")


_URI_FORBIDDEN = frozenset(',;"\\')


def check_report_uri(value: str) -> str:
    """A report destination: `mailto:ADDRESS` (DMARC, TLS-RPT) or `https://…` (TLS-RPT only, checked
    by the caller). Commas and `!` would end the URI in a DMARC tag, so they are refused (RFC 7489 §6.4)."""
    uri = value.strip()
    scheme, sep, rest = uri.partition(":")
    if scheme.lower() == "mailto" and sep:
        check_address_pattern(rest.split("!", 1)[0])
        if "*" in rest:
            raise ValueError(f"invalid report address {value!r}: no '*' in a mailto: URI")
    elif not (scheme.lower() == "https" and rest.startswith("//") and len(rest) > 2):
        raise ValueError(f"invalid report URI {value!r}: expected mailto:ADDRESS or https://…")
    if any(c in _URI_FORBIDDEN or not 33 <= ord(c) <= 126 for c in uri):
        raise ValueError(f"invalid report URI {value!r}: no spaces, commas, semicolons, quotes or non-ASCII")
    return uri


def check_mailto(value: str) -> str:
    uri = check_report_uri(value)
    if not uri.lower().startswith("mailto:"):
        raise ValueError(f"invalid DMARC report URI {value!r}: expected mailto:ADDRESS")
    return uri


MailtoUri = Annotated[str, AfterValidator(check_mailto)]
ReportUri = Annotated[str, AfterValidator(check_report_uri)]


class DmarcAlignment(StrEnum):
    """DMARC identifier alignment mode (RFC 7489 §6.3 `adkim`/`aspf`): relaxed or strict."""

    relaxed = "r"
    strict = "s"


class DmarcRecord(PolicyModel):
    """The `_dmarc` TXT record (RFC 7489 §6.3); unset tags are left out (their defaults apply)."""

    policy: DmarcPolicy = Field(default=DmarcPolicy.none, description="DMARC p= for the tenant's domains.")
    rua: MailtoUri | list[MailtoUri] | None = Field(
        default=None, description="Aggregate report address(es) (mailto:…), rua=."
    )
    ruf: MailtoUri | list[MailtoUri] | None = Field(
        default=None, description="Failure report address(es) (mailto:…), ruf=."
    )
    pct: int | None = Field(default=None, ge=0, le=100, description="Percentage of failing mail the policy applies to.")
    sp: DmarcPolicy | None = Field(default=None, description="Policy for subdomains (sp=); p= when unset.")
    adkim: DmarcAlignment | None = Field(default=None, description="DKIM alignment: r (relaxed) or s (strict).")
    aspf: DmarcAlignment | None = Field(default=None, description="SPF alignment: r (relaxed) or s (strict).")


class SpfAll(StrEnum):
    """The final `all` mechanism of the SPF record (RFC 7208 §5.1)."""

    fail = "-all"
    softfail = "~all"
    neutral = "?all"


class SpfRecord(PolicyModel):
    """The SPF TXT record at each tenant domain: the gateway's MX host addresses (outbound mail
    leaves from them), then `include:` of other senders, then `all`."""

    include: list[DnsName] = Field(
        default_factory=list, description="Domains whose SPF is included (other senders of the tenant's mail)."
    )
    all: SpfAll = Field(default=SpfAll.fail, description="Result for every other sender: -all, ~all or ?all.")


class MtaStsMode(StrEnum):
    """MTA-STS policy mode (RFC 8461 §3.2)."""

    enforce = "enforce"
    testing = "testing"
    none = "none"


class MtaSts(PolicyModel):
    """MTA-STS (RFC 8461): the `_mta-sts` TXT record and the policy file served at
    https://mta-sts.DOMAIN/.well-known/mta-sts.txt listing the gateway's MX hosts."""

    mode: MtaStsMode = Field(default=MtaStsMode.testing, description="enforce, testing or none.")
    max_age: int = Field(
        default=604_800, ge=86_400, le=31_557_600, description="Seconds senders cache the policy (1 day to 1 year)."
    )


class TlsRpt(PolicyModel):
    """SMTP TLS reporting (RFC 8460): the `_smtp._tls` TXT record."""

    rua: ReportUri | list[ReportUri] = Field(description="Report destination(s): mailto:… or https://….")


class TenantDns(PolicyModel):
    """The DNS records `liveprism dns` publishes for each of the tenant's domains (besides MX,
    which always names the gateway's MX hosts, and DKIM, from `outbound.dkim`)."""

    dmarc: DmarcRecord = Field(default_factory=DmarcRecord, description="Published DMARC record.")
    spf: SpfRecord = Field(default_factory=SpfRecord, description="Published SPF record.")
    mta_sts: MtaSts | None = Field(default=None, description="MTA-STS record and policy; not published when unset.")
    tls_rpt: TlsRpt | None = Field(default=None, description="TLS-RPT record; not published when unset.")


class Tenant(PolicyModel):
    """tenants/<name>.yaml: one customer, its domains and its own mail servers."""

    name: str = Field(pattern=_NAME_RE, description="Unique tenant name (lowercase, digits, - and _).")
    domains: list[DomainName] = Field(min_length=1, description="Domains whose mail this tenant receives.")
    routes: list[Route] = Field(default_factory=list, description="The tenant's servers; lowest priority first.")
    recipients: Recipients = Field(default_factory=Recipients, description="Recipient validation at RCPT.")
    lists: list[str] = Field(default_factory=list, description="Lists applied to this tenant's mail.")
    rules: list[str] = Field(default_factory=list, description="Rule sets applied to this tenant's mail.")
    scoring: ScoringOverride = Field(default_factory=ScoringOverride, description="Overrides gateway scoring.")
    outbound: Outbound = Field(default_factory=Outbound, description="Outbound relay settings.")
    dns: TenantDns = Field(default_factory=TenantDns, description="DNS records to publish.")
    checks: Annotated[dict[str, CheckOverride], AfterValidator(_check_override_keys)] = Field(
        default_factory=dict,
        description="Per check result (hit id such as spf:fail, dmarc:reject, dnsbl:ZONE, virus:*): "
        "this tenant's score and/or action instead of the gateway's.",
    )


# ---------------------------------------------------------------- lists/<name>.yaml


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


# ---------------------------------------------------------------- rules/<name>.yaml


class TextMatch(PolicyModel):
    regex: str | None = Field(default=None, description="RE2 pattern searched in the text.")
    contains: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list, description="Keywords; matches when any occurs (case-insensitive)."
    )

    @model_validator(mode="after")
    def _one_matcher(self) -> TextMatch:
        if self.regex is None and not self.contains:
            raise ValueError("needs `regex` or `contains`")
        return self


class HeaderMatch(TextMatch):
    name: str = Field(pattern=r"^[!-9;-~]+$", description="Header field name (case-insensitive).")


class AttachmentMatch(PolicyModel):
    extension: list[str] = Field(default_factory=list, description="File name extensions, without dot.")
    filename: str | None = Field(default=None, description="RE2 pattern searched in the file name.")
    content_type: list[str] = Field(
        default_factory=list, description="Content types: type/subtype or type/* (case-insensitive)."
    )
    nested: bool = Field(default=False, description="Only attachments inside an attached message (rfc822).")

    @field_validator("extension")
    @classmethod
    def _ext(cls, value: list[str]) -> list[str]:
        return [e.strip().lower().lstrip(".") for e in value]

    @field_validator("content_type")
    @classmethod
    def _ctype(cls, value: list[str]) -> list[str]:
        return [c.strip().lower() for c in value]

    @model_validator(mode="after")
    def _one_matcher(self) -> AttachmentMatch:
        if not (self.extension or self.filename or self.content_type):
            raise ValueError("needs `extension`, `filename` or `content_type`")
        return self


class MimeMatch(PolicyModel):
    malformed: bool = Field(description="true: the message has MIME defects (the malformed-mime hit).")


class HeaderCondition(PolicyModel):
    header: HeaderMatch = Field(description="Matches a decoded header value.")


class BodyCondition(PolicyModel):
    body: TextMatch = Field(description="Matches the decoded text of any text or HTML part.")


class AttachmentCondition(PolicyModel):
    attachment: AttachmentMatch = Field(description="Matches any attachment, at any depth.")


class MimeCondition(PolicyModel):
    mime: MimeMatch = Field(description="Matches the MIME structure.")


class CheckCondition(PolicyModel):
    check: str = Field(description="A check: " + ", ".join(CHECK_RESULTS) + ".")
    result: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="Results that make it true (spf: fail, softfail, …; dnsbl/uribl: zone names; virus: "
        "virus names); empty: any result the check reports as a hit (dnsbl/uribl/virus: listed/found). "
        "dmarc `fail` also matches `quarantine` and `reject`.",
    )

    @field_validator("check")
    @classmethod
    def _check(cls, value: str) -> str:
        if value not in CHECK_RESULTS:
            raise ValueError(f"unknown check {value!r}: expected one of {', '.join(CHECK_RESULTS)}")
        return value

    @model_validator(mode="after")
    def _results(self) -> CheckCondition:
        allowed = CHECK_RESULTS[self.check]
        if self.check in ("dnsbl", "uribl"):
            object.__setattr__(self, "result", [check_domain(zone) for zone in self.result])
        elif allowed:
            unknown = [r for r in self.result if r not in allowed]
            if unknown:
                raise ValueError(
                    f"unknown {self.check} result {', '.join(unknown)}: expected one of {', '.join(allowed)}"
                )
        return self


class AnyCondition(PolicyModel):
    any: list[Condition] = Field(min_length=1, description="True when any sub-condition is true.")


class AllCondition(PolicyModel):
    all: list[Condition] = Field(min_length=1, description="True when every sub-condition is true.")


class NotCondition(PolicyModel):
    not_: Condition = Field(alias="not", description="True when the sub-condition is false.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


CONDITION_KEYS = ("any", "all", "not", "header", "body", "attachment", "mime", "check")


def _condition_kind(value: Any) -> str | None:
    """Discriminate a condition by its (single) key; None when no known key is present."""
    if isinstance(value, dict):
        return next((key for key in CONDITION_KEYS if key in value), None)
    if isinstance(value, PolicyModel):
        return _CONDITION_TAGS.get(type(value))
    return None


Condition = Annotated[
    Annotated[AnyCondition, Tag("any")]
    | Annotated[AllCondition, Tag("all")]
    | Annotated[NotCondition, Tag("not")]
    | Annotated[HeaderCondition, Tag("header")]
    | Annotated[BodyCondition, Tag("body")]
    | Annotated[AttachmentCondition, Tag("attachment")]
    | Annotated[MimeCondition, Tag("mime")]
    | Annotated[CheckCondition, Tag("check")],
    Discriminator(
        _condition_kind,
        custom_error_type="condition_kind",
        custom_error_message="a condition needs exactly one of: " + ", ".join(CONDITION_KEYS),
    ),
]


class Then(PolicyModel):
    score: float | None = Field(default=None, description="Added to the message score when the rule matches.")
    action: Action | None = Field(default=None, description="Action taken when the rule matches.")
    message: str | None = Field(default=None, description="Text of the SMTP reply for reject/tempfail.")

    @model_validator(mode="after")
    def _something(self) -> Then:
        if self.score is None and self.action is None:
            raise ValueError("`then` needs `score` or `action`")
        return self


class Rule(PolicyModel):
    id: str = Field(pattern=_RULE_ID_RE, description="Unique across the whole policy, kebab-case.")
    description: str | None = Field(default=None, description="What the rule catches and why.")
    direction: Direction = Field(default=Direction.inbound, description="Mail flow the rule applies to.")
    when: Condition = Field(description="The condition: any / all / not, nested freely.")
    then: Then = Field(description="Score and/or action when the condition holds.")

    @field_validator("when", mode="before")
    @classmethod
    def _non_empty_when(cls, value: Any) -> Any:
        # A field validator (not a model validator) so the error is located at `when` and the
        # rule's other fields are still validated in the same run.
        if not value:
            raise ValueError("`when` is empty: give a condition (" + ", ".join(CONDITION_KEYS) + ")")
        return value


class RuleSet(PolicyModel):
    """rules/<name>.yaml: a named set of content rules."""

    name: str = Field(pattern=_NAME_RE, description="Unique rule set name, referenced by gateway and tenants.")
    description: str | None = Field(default=None, description="What the rule set is for.")
    rules: list[Rule] = Field(default_factory=list, description="The rules, evaluated together.")


_CONDITION_TAGS: dict[type, str] = {
    AnyCondition: "any",
    AllCondition: "all",
    NotCondition: "not",
    HeaderCondition: "header",
    BodyCondition: "body",
    AttachmentCondition: "attachment",
    MimeCondition: "mime",
    CheckCondition: "check",
}

for _model in (AnyCondition, AllCondition, NotCondition, Rule):
    _model.model_rebuild()

FILE_KINDS: dict[str, type[PolicyModel]] = {
    "gateway": Gateway,
    "tenants": Tenant,
    "lists": PolicyList,
    "rules": RuleSet,
}
