"""gateway.yaml: listeners, limits, storage, delivery, DNS, scoring, logging, admin and `Gateway`
(its `checks:` are in `engine.policy.models.checks`)."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator

from engine.policy.models.base import PolicyModel, check_address_pattern, check_domain
from engine.policy.models.checks import Checks


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
