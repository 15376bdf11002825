"""rules/<name>.yaml: the matchers, the `Condition` union (any / all / not, nested), `Rule` and
`RuleSet`."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

from engine.policy.models.base import _NAME_RE, _RULE_ID_RE, PolicyModel, check_domain
from engine.policy.models.checks import CHECK_RESULTS
from engine.policy.models.enums import Action, Direction


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
