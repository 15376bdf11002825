"""One message through a compiled graph, as `serve` would take it, and where its envelope comes from.

`run(graph, envelope, raw)` drives the gateway's transaction object
(`engine.graph.transaction.simulate`: connect, MAIL, RCPT, DATA on one `Evaluation`, as `serve`
does); the BDD steps and `liveprism plan` both call it, so a scenario and a blast-radius replay
can never disagree with the gateway.

`envelope_for(path, raw)`: a corpus message's envelope is its sidecar `NAME.envelope` (JSON:
`mail_from`, `rcpts`, optional `client_ip`, `helo`, `direction`) when there is one, else the
From header (sender) and the To and Cc headers (recipients).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import BytesHeaderParser
from email.policy import compat32
from email.utils import getaddresses
from pathlib import Path

from engine.graph.filter_graph import FilterGraph
from engine.graph.transaction import Outcome, simulate
from engine.graph.verdict import Hit
from engine.policy.models import Direction

DEFAULT_CLIENT_IP = "192.0.2.1"  # TEST-NET-1 (RFC 5737): on no list of the example policy
DEFAULT_HELO = "client.example"


@dataclass(frozen=True, slots=True)
class ReplayEnvelope:
    """The SMTP envelope a replayed message arrives with."""

    mail_from: str
    rcpts: tuple[str, ...]
    client_ip: str = DEFAULT_CLIENT_IP
    helo: str = DEFAULT_HELO
    direction: Direction = Direction.inbound
    auth_tenant: str | None = None  # outbound: the tenant of the client's SMTP AUTH user


def run(
    graph: FilterGraph, envelope: ReplayEnvelope, raw: bytes, external_hits: Sequence[Hit] = (),
    early_hits: Sequence[Hit] = (),
) -> Outcome:
    """Every SMTP stage of one transaction against `graph` (connect, MAIL, RCPT, DATA); `early_hits`
    are check results known after MAIL FROM, `external_hits` those of DATA."""
    return simulate(
        graph,
        raw=raw,
        mail_from=envelope.mail_from,
        rcpts=list(envelope.rcpts),
        client_ip=envelope.client_ip,
        helo=envelope.helo,
        direction=envelope.direction,
        external_hits=external_hits,
        early_hits=early_hits,
        auth_tenant=envelope.auth_tenant,
    )


def header_envelope(raw: bytes) -> tuple[str, tuple[str, ...]]:
    """(sender, recipients) from the From, To and Cc headers of `raw` (addresses only, in order)."""
    message = BytesHeaderParser(policy=compat32).parsebytes(raw)
    senders = [addr for _, addr in getaddresses([str(v) for v in message.get_all("From", [])]) if addr]
    rcpts: list[str] = []
    for name in ("To", "Cc"):
        for _, addr in getaddresses([str(v) for v in message.get_all(name, [])]):
            if addr and addr not in rcpts:
                rcpts.append(addr)
    return (senders[0] if senders else ""), tuple(rcpts)


class EnvelopeError(ValueError):
    """A sidecar envelope file that is not the JSON object described in the module docstring."""


def sidecar_path(path: Path) -> Path:
    """Where the sidecar envelope of corpus message `path` lives: NAME.envelope beside NAME.eml."""
    return path.with_suffix(".envelope")


def envelope_for(path: Path, raw: bytes) -> ReplayEnvelope:
    """The envelope of a corpus message: its sidecar, else its headers. Raises EnvelopeError for a bad sidecar."""
    sidecar = sidecar_path(path)
    mail_from, rcpts = header_envelope(raw)
    if not sidecar.is_file():
        return ReplayEnvelope(mail_from, rcpts)
    try:
        data = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EnvelopeError(f"{sidecar}: {exc}") from exc
    if not isinstance(data, dict):
        raise EnvelopeError(f"{sidecar}: expected a JSON object")
    unknown = set(data) - {"mail_from", "rcpts", "client_ip", "helo", "direction"}
    if unknown:
        raise EnvelopeError(f"{sidecar}: unknown keys {sorted(unknown)}")
    given_rcpts = data.get("rcpts", list(rcpts))
    if not isinstance(given_rcpts, list) or not all(isinstance(r, str) for r in given_rcpts):
        raise EnvelopeError(f"{sidecar}: rcpts must be a list of addresses")
    try:
        direction = Direction(data.get("direction", "inbound"))
    except ValueError as exc:
        raise EnvelopeError(f"{sidecar}: direction must be inbound or outbound") from exc
    return ReplayEnvelope(
        str(data.get("mail_from", mail_from)),
        tuple(given_rcpts),
        str(data.get("client_ip", DEFAULT_CLIENT_IP)),
        str(data.get("helo", DEFAULT_HELO)),
        direction,
    )
