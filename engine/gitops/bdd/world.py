"""The state of one scenario: which policy, what message, which envelope, and the outcome.

Steps only fill this in (`Given`), run it (`When`) and read it (`Then`); the evaluation itself is
`engine.graph.replay.run`, the gateway's own path. Paths are relative to the repository root
(pytest's rootdir). A failing `Then` raises `ScenarioFailure` carrying the verdict trace.
"""

from __future__ import annotations

import asyncio
import mimetypes
import threading
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import formatdate, make_msgid
from pathlib import Path

from engine.checks.runner import CheckRun, checks_configured, outbound_checks
from engine.gitops.bdd.resolver import StaticResolver
from engine.graph.build.compiler import load_graph
from engine.graph.filter_graph import FilterGraph
from engine.graph.replay import DEFAULT_CLIENT_IP, DEFAULT_HELO, ReplayEnvelope, envelope_for, run
from engine.graph.transaction import Outcome
from engine.graph.verdict import Hit
from engine.mime.view import parse_message
from engine.policy.loader import content_hash, policy_files
from engine.policy.models import Direction


class ScenarioFailure(AssertionError):
    """A `Then` that does not hold; the message ends with the verdict trace."""

    step: str = ""  # the failing step and its FILE:LINE, set by the plugin


class PolicyError(Exception):
    """The scenario's policy does not load or is invalid (the message lists the problems)."""


_graphs: dict[tuple[str, str], FilterGraph] = {}
_graphs_lock = threading.Lock()


def compiled(policy_dir: Path) -> FilterGraph:
    """The compiled graph of `policy_dir`, cached by its content hash for the test session."""
    root = policy_dir.resolve()
    if not (root / "gateway.yaml").is_file() and not (root / "gateway.yml").is_file():
        raise PolicyError(f"{policy_dir}: no gateway.yaml (is this a policy directory?)")
    key = (str(root), content_hash(root, policy_files(root)))
    with _graphs_lock:
        graph = _graphs.get(key)
    if graph is not None:
        return graph
    result = load_graph(root)
    if result.graph is None:
        problems = "\n".join(
            f"  {p.format('text', policy_dir)}" for p in result.problems if p.severity == "error"
        )
        raise PolicyError(f"the policy in {policy_dir} is invalid:\n{problems}")
    with _graphs_lock:
        _graphs[key] = result.graph
    return result.graph


@dataclass
class Attachment:
    filename: str
    content: bytes
    content_type: str
    forwarded: bool = False  # inside an attached message (message/rfc822)


@dataclass
class Scenario:
    """Everything the steps of one scenario said, and the outcome once it ran."""

    root: Path
    policy: str = "policies"
    mail_from: str | None = None
    rcpts: list[str] = field(default_factory=list)
    subject: str | None = None
    headers: list[tuple[str, str]] = field(default_factory=list)
    body_lines: list[str] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    message_file: Path | None = None
    client_ip: str = DEFAULT_CLIENT_IP
    helo: str = DEFAULT_HELO
    auth_tenant: str | None = None  # outbound: the client authenticated as a user of this tenant
    resolver: StaticResolver = field(default_factory=StaticResolver)
    external_hits: list[Hit] = field(default_factory=list)
    outcome: Outcome | None = None
    graph: FilterGraph | None = None

    def path(self, relative: str) -> Path:
        """A path of the scenario, relative to the repository root."""
        given = Path(relative)
        return given if given.is_absolute() else self.root / given

    def policy_graph(self) -> FilterGraph:
        if self.graph is None:
            self.graph = compiled(self.path(self.policy))
        return self.graph

    # ------------------------------------------------------------ the message

    def raw_message(self) -> bytes:
        """The message file as given, or one built with `email.message.EmailMessage` (CRLF)."""
        if self.message_file is not None:
            return self.message_file.read_bytes()
        message = EmailMessage()
        message["From"] = self.mail_from or "sender@example.com"
        message["To"] = ", ".join(self.rcpts) or "undisclosed-recipients:;"
        message["Subject"] = self.subject if self.subject is not None else "Scenario message"
        message["Date"] = formatdate(0, usegmt=True)
        message["Message-ID"] = make_msgid(domain="scenario.liveprism.example")
        for name, value in self.headers:
            if name in message:
                del message[name]
            message[name] = value
        message.set_content("\n".join(self.body_lines or ["Hello."]) + "\n")
        forwarded = [a for a in self.attachments if a.forwarded]
        for attachment in self.attachments:
            if not attachment.forwarded:
                _attach(message, attachment)
        if forwarded:
            inner = EmailMessage()
            inner["From"] = "someone@elsewhere.example"
            inner["Subject"] = "Forwarded message"
            inner.set_content("See the attachment.\n")
            for attachment in forwarded:
                _attach(inner, attachment)
            message.add_attachment(inner)
        return message.as_bytes(policy=SMTP)

    def envelope(self, direction: Direction, raw: bytes) -> ReplayEnvelope:
        """The explicit envelope, else the message file's sidecar or headers."""
        if self.message_file is not None:
            from_file = envelope_for(self.message_file, raw)
            mail_from = self.mail_from if self.mail_from is not None else from_file.mail_from
            rcpts = tuple(self.rcpts) or from_file.rcpts
        else:
            mail_from, rcpts = self.mail_from or "", tuple(self.rcpts)
        return ReplayEnvelope(mail_from, rcpts, self.client_ip, self.helo, direction, self.auth_tenant)

    # ------------------------------------------------------------ running and reading

    def run(self, direction: Direction) -> Outcome:
        graph = self.policy_graph()
        raw = self.raw_message()
        envelope = self.envelope(direction, raw)
        if not envelope.rcpts:
            raise ScenarioFailure("the message has no recipient: say `a message from \"A\" to \"B\"`")
        early, late = asyncio.run(check_hits(graph, envelope, raw, self.resolver))
        self.outcome = run(graph, envelope, raw, [*late, *self.external_hits], early_hits=early)
        return self.outcome

    def result(self) -> Outcome:
        if self.outcome is None:
            raise ScenarioFailure("nothing was sent yet: add `When it is received` before the Then steps")
        return self.outcome

    def trace(self) -> str:
        """The verdict trace: the reply of each SMTP stage, then each tenant copy with its hits at FILE:LINE."""
        outcome = self.result()
        decision = outcome.decision
        lines = [f"verdict trace (policy {decision.policy_version}):"]
        for stage, reply in outcome.replies:
            word, _, argument = stage.partition(" ")
            lines.append(f"  {(word.upper() + ' ' + argument).strip():<34} {reply}")
        for name, verdict in decision.tenants.items():
            lines.append(f"  copy for {name}: {verdict.action.value} (score {verdict.score:g}, reason {verdict.reason},"
                         f" stage {verdict.stage}) routes {', '.join(verdict.routes) or 'none'}")
            for hit in verdict.hits:
                action = hit.action.value if hit.action else "-"
                lines.append(f"    {hit.kind:<6} {hit.id:<34} score {hit.score:>5g}  action {action:<10} "
                             f"{self._where(hit.source)}")
        lines.append(f"  decision: {decision.action.value} at {decision.stage}; reply {decision.reply}")
        return "\n".join(lines)

    def _where(self, source: str) -> str:
        """A hit's FILE:LINE relative to the repository (policy files are given relative to the policy)."""
        if ".yaml:" in source or ".yml:" in source:
            return f"{self.policy.rstrip('/')}/{source}"
        return source

    def fail(self, message: str) -> ScenarioFailure:
        return ScenarioFailure(f"{message}\n\n{self.trace()}")


async def check_hits(
    graph: FilterGraph, envelope: ReplayEnvelope, raw: bytes, resolver: StaticResolver
) -> tuple[tuple[Hit, ...], tuple[Hit, ...]]:
    """The external check results of a scenario, as `serve` would get them (the same `CheckRun`),
    with every DNS question answered by the scenario's static resolver: the hits known after MAIL
    FROM (DNSBL, SPF: they may refuse early) and those of the end of DATA (outbound: the
    antivirus only; none when the policy configures no check)."""
    checks = graph.gateway.checks if envelope.direction is not Direction.outbound else outbound_checks(
        graph.gateway.checks)
    if not checks_configured(checks):
        return (), ()
    check_run = CheckRun(checks, resolver, hostname=graph.gateway.hostname)
    check_run.connect(envelope.client_ip, envelope.helo)
    check_run.mail(envelope.mail_from, envelope.helo)
    early = await check_run.early_hits()
    report = await check_run.data(raw, parse_message(raw))
    return early, report.new_hits


def _attach(message: EmailMessage, attachment: Attachment) -> None:
    maintype, _, subtype = attachment.content_type.partition("/")
    message.add_attachment(attachment.content, maintype=maintype, subtype=subtype or "octet-stream",
                           filename=attachment.filename)


def guess_type(filename: str) -> str:
    """The content type a mail client would give `filename` (application/octet-stream when unknown)."""
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"
