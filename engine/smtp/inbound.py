"""The inbound (MX) listener's handler: strangers' mail, every configured check, no AUTH."""

from __future__ import annotations

from aiosmtpd.smtp import Session

from engine.graph.filter_graph import FilterGraph
from engine.graph.transaction import Evaluation
from engine.policy.models import Direction
from engine.smtp.envelope import GatewayEnvelope
from engine.smtp.handler import TransactionHandler
from engine.smtp.protocol import client_ip


class InboundHandler(TransactionHandler):
    """aiosmtpd handler for the inbound (MX) listener (see `TransactionHandler`)."""

    def _start_checks(self, session: Session, env: GatewayEnvelope, graph: FilterGraph) -> None:
        if env.checks is None or env.checks.checks is not graph.gateway.checks:
            env.checks = self._checker.begin(graph.gateway, client_ip(session), session.host_name or "")

    def _offers_auth(self) -> bool:
        """Never on the inbound listener: strangers have nothing to log in to."""
        return False

    def _begin(self, session: Session) -> Evaluation:
        return Evaluation.begin(self._current_graph(), client_ip(session), session.host_name or "", Direction.inbound)
