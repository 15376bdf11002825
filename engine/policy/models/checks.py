"""gateway.yaml `checks:`: the external checks, the results they report, and the per-result
overrides a tenant may set."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, field_validator

from engine.policy.models.base import DomainName, PolicyModel, check_domain
from engine.policy.models.enums import Action

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
