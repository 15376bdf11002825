"""The outbound listener (`listeners.outbound`): tenants' own servers submit mail for the world.

Admission (DESIGN.md "Outbound", RFC 4954):
- at connect, a client in some tenant's `outbound.networks` is admitted; any other gets
  `554 5.7.1` and is disconnected, unless SMTP AUTH is possible (STARTTLS configured and a tenant
  has `outbound.auth`): then it may authenticate, and MAIL before that gets `530 5.7.0`;
- AUTH PLAIN and LOGIN are offered only after STARTTLS (before it AUTH gets `538 5.7.11`); the
  password is checked against the argon2 hash of the user's tenant's users file, off the event
  loop; a failure answers `535 5.7.8` after a delay growing with the session's failures (1 s per
  failure, at most 5 s) and counts towards `limits.max_errors` like every 4xx/5xx reply; a user
  listed by two tenants never authenticates;
- an authenticated client sends as its user's tenant only; a network client as the tenant whose
  networks hold it. Which sender and header From that tenant may use is the `Evaluation`'s
  decision (`engine.graph.transaction`), shared with `explain --direction outbound`.

Rate limits (`outbound.limits`, messages per sliding hour, in the store so restarts and
`--workers` processes share them): checked at MAIL (451 4.7.1, nothing counted) and taken
atomically just before a message decided 250 is stored (451 4.7.1 at DATA when concurrent
sessions used the last slot meanwhile). A message counts once, whatever its recipients; refused
messages do not count.

External checks: only the antivirus runs on outbound mail (DNSBL, SPF, DKIM, DMARC, ARC and URIBL
judge strangers, not the tenant's own servers); content rules with `direction: outbound|both`,
lists and thresholds apply as inbound.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from engine import metrics
from engine.graph.addresses import normalise_address
from engine.graph.filter_graph import FilterGraph
from engine.graph.transaction import Evaluation
from engine.policy.models import Direction, Gateway
from engine.policy.users import UsersFile, read_users, users_path, verify_password
from engine.smtp.envelope import GatewayEnvelope, gateway_envelope
from engine.smtp.handler import TransactionHandler
from engine.smtp.headers import sanitise
from engine.smtp.protocol import GatewaySMTP, client_ip

log = logging.getLogger("liveprism.outbound")

RATE_WINDOW = 3600.0
AUTH_FAILURE_DELAY = 1.0  # seconds per failed AUTH in the session…
AUTH_FAILURE_DELAY_MAX = 5.0  # …at most
REPLY_NOT_ADMITTED = "554 5.7.1 not authorised to send through this gateway"
REPLY_AUTH_REQUIRED = "530 5.7.0 Authentication required"
REPLY_AUTH_FAILED = "535 5.7.8 Authentication credentials invalid"
REPLY_AUTH_OK = "235 2.7.0 Authentication successful"


@dataclass(frozen=True, slots=True)
class AuthIdentity:
    """Who authenticated (aiosmtpd keeps it as `session.auth_data`; `login` is its convention)."""

    login: str
    tenant: str


def auth_possible(gateway: Gateway, graph: FilterGraph) -> bool:
    """SMTP AUTH can succeed: STARTTLS is configured and some tenant has `outbound.auth`."""
    return bool(gateway.tls.cert and gateway.tls.key) and any(
        plan.outbound.auth is not None for plan in graph.tenants.values()
    )


class UsersCache:
    """Users files read on demand and kept while their file (or env variable) is unchanged, so an
    edited users file takes effect at the next AUTH without a reload."""

    def __init__(self) -> None:
        self._files: dict[tuple[str, Path], tuple[object, UsersFile | str]] = {}

    def _read(self, reference: str, policy_dir: Path) -> UsersFile | str:
        path = users_path(reference, policy_dir)
        stamp: object = os.environ.get(reference[4:])
        if path is not None:
            try:
                status = os.stat(path)
            except OSError as exc:
                return f"cannot read users file {path}: {exc}"
            stamp = (status.st_mtime_ns, status.st_size)
        cached = self._files.get((reference, policy_dir))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        found = read_users(reference, policy_dir)
        if isinstance(found, str):
            log.error("outbound.auth: %s", found)
        self._files[(reference, policy_dir)] = (stamp, found)
        return found

    def candidates(self, graph: FilterGraph, policy_dir: Path, login: str) -> list[tuple[str, str]]:
        """(tenant, hash) of every tenant whose users file lists `login`."""
        found = []
        for plan in graph.tenants.values():
            if plan.outbound.auth is None:
                continue
            users = self._read(plan.outbound.auth.users, policy_dir)
            if isinstance(users, UsersFile) and login in users.users:
                found.append((plan.name, users.users[login]))
        return found


class OutboundHandler(TransactionHandler):
    """aiosmtpd handler of the outbound listener: admission and rate limits around the shared
    stages of `TransactionHandler` (the `Evaluation` runs with `direction=outbound` and the AUTH user's tenant)."""

    def __init__(self, *, policy_dir: Callable[[], Path], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._policy_dir = policy_dir
        self._users = UsersCache()

    # ------------------------------------------------------------ admission

    def admitted(self, ip: str) -> str | None:
        """The refusal at connect for a client that can neither be admitted by network nor AUTH."""
        graph = self._current_graph()
        if graph.network_tenants(ip) or auth_possible(graph.gateway, graph):
            return None
        return REPLY_NOT_ADMITTED

    async def authenticate(self, login: bytes, password: bytes) -> AuthIdentity | None:
        """The identity of a user whose password matches its tenant's argon2 hash (None otherwise)."""
        user = login.decode("utf-8", "replace")
        graph = self._current_graph()
        candidates = self._users.candidates(graph, self._policy_dir(), user)
        if len(candidates) != 1:
            if candidates:
                log.error("AUTH user %r is listed by tenants %s: refused", sanitise(user),
                          ",".join(tenant for tenant, _ in candidates))
            return None
        tenant, hash_text = candidates[0]
        ok = await asyncio.to_thread(verify_password, hash_text, password.decode("utf-8", "replace"))
        return AuthIdentity(user, tenant) if ok else None

    # ------------------------------------------------------------ checks: antivirus only (`outbound_checks`)

    def _start_checks(self, session: Session, env: GatewayEnvelope, graph: FilterGraph) -> None:
        checks = self._checker.checks_for(graph.gateway.checks, Direction.outbound)
        if env.checks is None or env.checks.checks is not checks:
            env.checks = self._checker.begin(graph.gateway, client_ip(session), session.host_name or "",
                                             Direction.outbound)

    # ------------------------------------------------------------ stages

    def _offers_auth(self) -> bool:
        graph = self._current_graph()
        return auth_possible(graph.gateway, graph)

    def _begin(self, session: Session) -> Evaluation:
        identity = session.auth_data if session.authenticated else None
        tenant = identity.tenant if isinstance(identity, AuthIdentity) else None
        return Evaluation.begin(self._current_graph(), client_ip(session), session.host_name or "",
                                Direction.outbound, auth_tenant=tenant)

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        graph = self._current_graph()
        if not session.authenticated and not graph.network_tenants(client_ip(session)):
            self._observer.refused("mail", "auth-required")
            return REPLY_AUTH_REQUIRED
        reply = await super().handle_MAIL(server, session, envelope, address, mail_options)
        env = gateway_envelope(envelope)
        evaluation = env.evaluation
        if not reply.startswith("250") or evaluation is None:
            return reply
        limited = await self._rate_limited(evaluation, "mail", take=False)
        if limited is None:
            return reply
        if env.checks is not None:  # undo the accepted MAIL: the client may try again later
            env.checks.cancel()
            env.checks = None
        env.evaluation = None
        envelope.mail_from = None
        envelope.mail_options.clear()
        self._log_refusal(session, evaluation.mail_from, f"MAIL refused: {limited}", evaluation.graph)
        return limited

    async def _before_accept(self, evaluation: Evaluation) -> str | None:
        return await self._rate_limited(evaluation, "data", take=True)

    async def _rate_limited(self, evaluation: Evaluation, stage: str, *, take: bool) -> str | None:
        """The 451 4.7.1 when a limit of the sending tenant is reached; with `take`, a message
        under every limit is counted (atomically, in the store)."""
        tenant = evaluation.sender_tenant
        plan = evaluation.graph.tenants.get(tenant) if tenant is not None else None
        if plan is None:
            return None
        limits = plan.outbound.limits
        keys: list[tuple[str, int]] = []
        names: dict[str, str] = {}
        if limits.per_sender_per_hour is not None:
            key = "sender:" + (normalise_address(evaluation.mail_from) or f"<>:{plan.name}")  # bounces: per tenant
            keys.append((key, limits.per_sender_per_hour))
            names[key] = "per_sender_per_hour"
        if limits.per_tenant_per_hour is not None:
            key = f"tenant:{plan.name}"
            keys.append((key, limits.per_tenant_per_hour))
            names[key] = "per_tenant_per_hour"
        if not keys:
            return None
        now = time.time()
        try:
            if take:
                over = await self._store.rate_take(tuple(keys), now, RATE_WINDOW)
            else:
                over = await self._store.rate_exceeded(tuple(keys), now, RATE_WINDOW)
        except Exception:
            log.exception("rate limit store failed; replying 451")
            return "451 4.3.0 temporary failure, try again later"
        if over is None:
            return None
        limit = names[over]
        metrics.outbound_rate_limited(plan.name, limit, stage)
        self._observer.refused(stage, "rate-limit")
        return f"451 4.7.1 outbound rate limit reached ({limit}), try again later"


class OutboundSMTP(GatewaySMTP):
    """The outbound listener's protocol: admission at connect and SMTP AUTH checked off the event
    loop (aiosmtpd parses PLAIN/LOGIN; its `_authenticate` hook only hands the credentials on)."""

    def __init__(self, handler: OutboundHandler, *args: Any, **kwargs: Any) -> None:
        super().__init__(handler, *args, auth_require_tls=True, auth_required=False, **kwargs)
        self._outbound = handler
        self.auth_failures = 0

    async def _handle_client(self) -> None:
        assert self.session is not None
        refusal = self._outbound.admitted(client_ip(self.session))
        if refusal is None:
            await super()._handle_client()
            return
        metrics.count_reply(refusal)
        self._outbound._observer.refused("connect", "not-authorised")
        transport = cast(asyncio.WriteTransport | None, self.transport)  # uvloop's is not a subclass
        if transport is not None:
            transport.write(f"{refusal}\r\n".encode())
            transport.close()

    def _authenticate(self, mechanism: str, auth_data: Any) -> AuthResult:
        """aiosmtpd calls this synchronously after parsing PLAIN/LOGIN: hand the credentials to
        `_verified`, which checks them asynchronously."""
        return AuthResult(success=False, handled=False, auth_data=auth_data)

    async def auth_PLAIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._verified(await super().auth_PLAIN(server, args))

    async def auth_LOGIN(self, server: Any, args: list[str]) -> AuthResult:
        return await self._verified(await super().auth_LOGIN(server, args))

    async def _verified(self, parsed: AuthResult) -> AuthResult:
        credentials = parsed.auth_data
        if parsed.success or parsed.handled or not isinstance(credentials, LoginPassword):
            return parsed  # aiosmtpd already answered (bad base64, aborted)
        identity = await self._outbound.authenticate(credentials.login, credentials.password)
        metrics.auth_attempt(identity is not None)
        peer = client_ip(self.session) if self.session is not None else "unknown"
        user = sanitise(credentials.login.decode("utf-8", "replace"))
        if identity is None:
            self.auth_failures += 1
            log.warning("AUTH failed: client=%s user=%r failures=%d", peer, user, self.auth_failures)
            await asyncio.sleep(min(AUTH_FAILURE_DELAY * self.auth_failures, AUTH_FAILURE_DELAY_MAX))
            return AuthResult(success=False, handled=False, message=REPLY_AUTH_FAILED)
        log.info("AUTH ok: client=%s user=%r tenant=%s", peer, user, identity.tenant)
        return AuthResult(success=True, auth_data=identity, message=REPLY_AUTH_OK)
