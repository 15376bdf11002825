"""tenants/<name>.yaml: routes, recipients, outbound relay, the DNS records to publish, and `Tenant`."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, Field

from engine.policy.models.base import (
    _NAME_RE,
    AddressPattern,
    DnsName,
    DomainName,
    Network,
    PolicyModel,
    check_address_pattern,
)
from engine.policy.models.checks import CheckOverride, _check_override_keys
from engine.policy.models.enums import AcceptMode, DmarcPolicy, RouteTls
from engine.policy.models.gateway import ScoringOverride


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
