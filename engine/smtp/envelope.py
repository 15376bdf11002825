"""The per-transaction state of an SMTP session: aiosmtpd's `Envelope` plus the evaluation.

`GatewaySMTP._create_envelope` (aiosmtpd's envelope factory, called at connect, after RSET and
after each DATA) makes one of these, so the state of a transaction lives and dies with aiosmtpd's
envelope and needs no attributes set on aiosmtpd's own objects.
"""

from __future__ import annotations

import time
from pathlib import Path

from aiosmtpd.smtp import Envelope

from engine.checks.runner import CheckRun
from engine.graph.transaction import Evaluation


class GatewayEnvelope(Envelope):
    """aiosmtpd's envelope with the transaction's `Evaluation` (None until MAIL FROM)."""

    def __init__(self) -> None:
        super().__init__()
        self.evaluation: Evaluation | None = None
        self.started = time.monotonic()
        self.refused: list[str] = []  # "rcpt: reply" of refused recipients, for the transaction log
        self.checks: CheckRun | None = None  # the external checks of this transaction (from EHLO/MAIL on)
        self.spool: Path | None = None  # a large message is in this file (`original_content` is then b"")
        self.size = 0  # message bytes after DATA, in memory or in `spool`


def gateway_envelope(envelope: Envelope) -> GatewayEnvelope:
    """Our envelope (GatewaySMTP creates only these); any other is a wiring error."""
    if isinstance(envelope, GatewayEnvelope):
        return envelope
    raise TypeError("the gateway's handlers need GatewaySMTP (its envelopes carry the evaluation)")
