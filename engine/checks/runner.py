"""The checks of one SMTP transaction, run concurrently and turned into policy hits.

Algorithm. A `CheckRun` lives for one transaction. Each check starts as an asyncio task as soon
as its input is known: DNSBL at connect (`serve`: at EHLO/HELO), SPF and the sender-domain RHSBL at
MAIL (envelope sender, HELO), DKIM, ARC, DMARC (after SPF and DKIM), link-domain URIBL and
antivirus at the end of DATA (the message). `early_hits` hands over, before DATA, the results a
refusing action (reject/tempfail) depends on — waiting for them, bounded by the per-check
timeout — so that a listed client can be refused at MAIL/RCPT. `data` waits for every task
together for at most `checks.budget` seconds; a check still running then is cancelled and
reported as `temperror` (antivirus: an error, hence `on_error`). So a verdict is always produced
in bounded time, even when DNS never answers.

Hits (`engine.graph.verdict.Hit`), their scores and actions from `gateway.yaml` `checks:`:
- `dnsbl:<zone>` (client listed), `uribl:<zone>` (sender domain or a link domain listed);
- `spf:<result>`, `dkim:<result>` (best over all signatures: pass > fail > policy > neutral >
  permerror > temperror > none), `arc:<result>`;
- `dmarc:<result>`: pass, none, temperror, permerror, or for a failure the disposition of the
  sender's published policy: `reject`, `quarantine` or (p=none / pct= sampled out) `fail`. With
  `honour_policy` (the default) `reject`/`quarantine` carry that action. A passing ARC chain
  whose latest sealer is in `arc.trusted_sealers` turns a DMARC failure into `pass`
  (RFC 7489 §7.2 local policy override, RFC 8617 §7.2);
- `virus:<name>` (kind `antivirus`, action `on_virus`: overrides everything in the evaluator);
  `antivirus:error` (clamd down, timed out, over its limit) with `on_error`: kind `antivirus`
  when that action refuses (reject/tempfail: nothing unscanned gets through, not even an allowed
  sender), an ordinary hit otherwise.
Missing results are never turned into failures: a timeout is `temperror`. Every DNS question
and the scan are recorded as `Lookup`s (name, type, status, answers, time) for `explain`.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from engine.checks import clamd, dnsbl
from engine.checks.arc import ArcResult, verify_arc
from engine.checks.authres import authentication_results, header_field
from engine.checks.dkim import DkimResult, verify_dkim
from engine.checks.dmarc import DmarcResult, check_dmarc
from engine.checks.spf import SpfResult, check_spf
from engine.dkim import dkimpy_patch
from engine.dns.resolver import DnsAnswer, Resolver
from engine.graph.verdict import KIND_ANTIVIRUS, Hit
from engine.mime.view import MessageView
from engine.policy.models import Action, Checks, Direction, DnsSettings, Gateway

dkimpy_patch.install()

KIND_CHECK = "check"
SOURCE = "gateway.yaml checks"
_REFUSING = frozenset({Action.reject, Action.tempfail})
_DKIM_ORDER = ("pass", "fail", "policy", "neutral", "permerror", "temperror", "none")


@dataclass(frozen=True, slots=True)
class Lookup:
    """One question a check asked (DNS, or the clamd scan) and what came back, for `explain`."""

    check: str
    name: str
    rdtype: str
    status: str
    answers: tuple[str, ...] = ()
    elapsed: float = 0.0
    cached: bool = False
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "check": self.check, "name": self.name, "type": self.rdtype, "status": self.status,
            "answers": list(self.answers), "ms": round(self.elapsed * 1000, 1), "cached": self.cached,
            "detail": self.detail,
        }


class RecordingResolver:
    """A resolver view that records every answer as a `Lookup` of one check."""

    def __init__(self, inner: dnsbl.DnsClient, check: str, sink: list[Lookup]) -> None:
        self._inner = inner
        self._check = check
        self._sink = sink
        self.timeout: float = float(getattr(inner, "timeout", 2.0))

    async def query(self, name: str, rdtype: str, *, timeout: float | None = None) -> DnsAnswer:
        answer = await self._inner.query(name, rdtype, timeout=timeout)
        self._sink.append(Lookup(self._check, answer.name, answer.rdtype, answer.status, answer.records,
                                 answer.elapsed, answer.cached, answer.error))
        return answer


@dataclass(frozen=True, slots=True)
class CheckReport:
    """Everything the checks of one message found."""

    hits: tuple[Hit, ...]  # all hits of the transaction, in check order
    new_hits: tuple[Hit, ...]  # those not yet handed over by `early_hits`
    lookups: tuple[Lookup, ...]
    results: dict[str, Any] = field(default_factory=dict)  # check name -> the check module's result
    elapsed: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"elapsed_ms": round(self.elapsed * 1000, 1), "lookups": [lookup.to_json() for lookup in self.lookups]}

    def authentication_results_field(self, authserv_id: str) -> bytes:
        """The whole Authentication-Results field (CRLF-terminated), or b"" when no check ran."""
        value = self.authentication_results(authserv_id)
        return header_field(value) if value is not None else b""

    def authentication_results(self, authserv_id: str) -> str | None:
        """The Authentication-Results value (RFC 8601) of the checks that ran; None when none did."""
        spf, dkim = self.results.get("spf"), self.results.get("dkim")
        dmarc, arc = self.results.get("dmarc"), self.results.get("arc")
        if not any(isinstance(r, SpfResult | DmarcResult | ArcResult | tuple) for r in (spf, dkim, dmarc, arc)):
            return None
        return authentication_results(
            authserv_id,
            spf=spf if isinstance(spf, SpfResult) else None,
            dkim=tuple(r for r in dkim if isinstance(r, DkimResult)) if isinstance(dkim, tuple) else (),
            dmarc=dmarc if isinstance(dmarc, DmarcResult) else None,
            arc=arc if isinstance(arc, ArcResult) else None,
        )


def _result_hit(checks: Checks, name: str, result: str, message: str = "") -> Hit:
    settings = getattr(checks, name)
    scores: dict[str, float] = settings.scores
    actions: dict[str, Action] = settings.actions
    return Hit(f"{name}:{result}", KIND_CHECK, scores.get(result, 0.0), actions.get(result), f"{SOURCE}.{name}",
               message or None)


class CheckRun:
    """The checks of one transaction (see the module docstring). Not thread-safe; one event loop."""

    def __init__(self, checks: Checks, resolver: dnsbl.DnsClient, *, hostname: str = "unknown",
                 enabled: bool = True) -> None:
        self.checks = checks
        self.hostname = hostname
        self._resolver = resolver
        self._enabled = enabled
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._lookups: list[Lookup] = []
        self._results: dict[str, Any] = {}
        self._handed: set[Hit] = set()
        self._task_hits: dict[str, list[Hit]] = {}
        self._expired: set[str] = set()  # checks cancelled by their own time limit
        self._started = time.monotonic()
        self.client_ip = ""
        self.helo = ""
        self.sender = ""

    # ------------------------------------------------------------ stages

    def _start(self, name: str, coro: Coroutine[Any, Any, Any], timeout: float | None = None) -> None:
        """Run `coro` as the task of check `name`, cancelled (and reported as timed out) when it is
        still running 0.5 s after its limit (the checks stop themselves at the limit). One timer
        per task rather than an `asyncio.timeout` wrapper: the same bound at a third of the cost."""
        if name in self._tasks:
            return
        limit = self.checks.timeout if timeout is None else timeout
        task = self._tasks[name] = asyncio.ensure_future(coro)
        expiry = asyncio.get_running_loop().call_later(limit + 0.5, self._expire, name, task)
        task.add_done_callback(functools.partial(_ended, expiry))

    def _expire(self, name: str, task: asyncio.Task[Any]) -> None:
        if not task.done():
            self._expired.add(name)
            task.cancel()

    def _dns(self, check: str) -> RecordingResolver:
        return RecordingResolver(self._resolver, check, self._lookups)

    def connect(self, client_ip: str, helo: str = "") -> None:
        """The client is known: start the DNSBL lookups."""
        self.client_ip, self.helo = client_ip, helo
        if self._enabled and self.checks.dnsbl:
            self._start("dnsbl", dnsbl.check_ip(self._dns("dnsbl"), client_ip, self.checks.dnsbl))

    def mail(self, sender: str, helo: str | None = None) -> None:
        """MAIL FROM is known (\"\" = null sender): start SPF and the sender-domain RHSBL."""
        self.sender = sender
        if helo is not None:
            self.helo = helo
        if not self._enabled:
            return
        domain = sender.rpartition("@")[2].strip("<>").lower()
        if self.checks.uribl and domain:
            self._start("uribl-sender", dnsbl.check_domains(self._dns("uribl"), [domain], self.checks.uribl))
        if self.checks.spf.enabled or self.checks.dmarc.enabled:
            self._start("spf", check_spf(self._dns("spf"), client_ip=self.client_ip, helo=self.helo, mail_from=sender,
                                         timeout_budget=self.checks.timeout, receiver=self.hostname))

    async def early_hits(self) -> tuple[Hit, ...]:
        """Hits available before DATA that were not handed over yet. Waits (bounded by each
        check's timeout) for the started checks whose results can refuse the transaction."""
        waiting = [task for name, task in self._tasks.items() if self._can_refuse(name) and not task.done()]
        if waiting:
            await asyncio.wait(waiting)
        hits = [hit for name, task in self._tasks.items() if task.done() for hit in self._hits_of(name, task)]
        return self._hand_over(hits)

    def _can_refuse(self, name: str) -> bool:
        if name == "dnsbl":
            return any(zone.action in _REFUSING for zone in self.checks.dnsbl)
        if name == "uribl-sender":
            return any(zone.action in _REFUSING for zone in self.checks.uribl)
        if name == "spf":
            return any(action in _REFUSING for action in self.checks.spf.actions.values())
        return False

    def _hand_over(self, hits: Sequence[Hit]) -> tuple[Hit, ...]:
        new = tuple(hit for hit in hits if hit not in self._handed)
        self._handed.update(new)
        return new

    async def data(self, raw: bytes, view: MessageView) -> CheckReport:
        """The message is in: start the content checks, wait for everything within the budget."""
        if self._enabled:
            self._start_content(raw, view)
        pending = [task for task in self._tasks.values() if not task.done()]
        if pending:
            await asyncio.wait(pending, timeout=self.checks.budget)
        hits: list[Hit] = []
        for name, task in self._tasks.items():
            if not task.done():
                task.cancel()
                spent = f"budget of {self.checks.budget:g} s spent"
                self._lookups.append(Lookup(name, "-", "-", "timeout", detail=spent))
            hits.extend(self._hits_of(name, task))
        hits = self._dmarc_override(hits)
        new = self._hand_over(hits)
        return CheckReport(tuple(hits), new, tuple(self._lookups), dict(self._results),
                           time.monotonic() - self._started)

    def cancel(self) -> None:
        """Stop whatever still runs (the client left, or RSET)."""
        for task in self._tasks.values():
            task.cancel()

    # ------------------------------------------------------------ content checks

    def _start_content(self, raw: bytes, view: MessageView) -> None:
        checks = self.checks
        if checks.uribl and checks.max_link_domains:
            self._start("uribl-links", self._link_lookups(raw, view))
        if checks.dkim.enabled or checks.dmarc.enabled:
            self._start("dkim", verify_dkim(self._dns("dkim"), raw, timeout_budget=checks.timeout))
        if checks.arc.enabled:
            self._start("arc", verify_arc(self._dns("arc"), raw, timeout_budget=checks.timeout))
        if checks.dmarc.enabled:  # waits for SPF and DKIM, then asks for the DMARC record
            self._start("dmarc", self._dmarc(view), timeout=checks.timeout * 3)
        antivirus = checks.antivirus
        if antivirus is not None:
            self._start("antivirus", clamd.scan(antivirus.clamd, raw, timeout=antivirus.timeout,
                                                chunk_size=antivirus.chunk_size),
                        timeout=antivirus.timeout + 1)

    async def _link_lookups(self, raw: bytes, view: MessageView) -> tuple[dnsbl.ListResult, ...]:
        limit = self.checks.max_link_domains
        if dnsbl.needs_full_parse(raw, view):  # base64 HTML: decoded by the stdlib parser, off the loop
            domains = await asyncio.to_thread(dnsbl.link_domains, raw, limit)
        else:
            domains = dnsbl.link_domains(raw, limit, view)
        sender_domain = self.sender.rpartition("@")[2].lower()  # asked at MAIL already
        domains = tuple(domain for domain in domains if domain != sender_domain)
        return await dnsbl.check_domains(self._dns("uribl"), domains, self.checks.uribl)

    async def _dmarc(self, view: MessageView) -> DmarcResult | None:
        """DMARC once SPF and DKIM are known; None (→ temperror) when either never answered."""
        spf_result = await _settled(self._tasks.get("spf"))
        dkim_results = await _settled(self._tasks.get("dkim"))
        if not isinstance(spf_result, SpfResult) or dkim_results is None:
            return None
        domains = [address.rpartition("@")[2] for address in view.from_addresses]
        seed = next(iter(view.headers.get("message-id", ())), "")
        return await check_dmarc(self._dns("dmarc"), header_from_domain=domains, spf=spf_result,
                                 dkim=tuple(dkim_results), seed=seed, timeout_budget=self.checks.timeout)

    # ------------------------------------------------------------ results -> hits

    def _hits_of(self, name: str, task: asyncio.Task[Any]) -> list[Hit]:
        """The hits of one ended (or abandoned) check, computed once."""
        known = self._task_hits.get(name)
        if known is None:
            known = self._task_hits[name] = self._compute_hits(name, task)
        return known

    def _compute_hits(self, name: str, task: asyncio.Task[Any]) -> list[Hit]:
        result = None
        timed_out = task.cancelled() and name in self._expired
        if task.done() and not task.cancelled():
            exc = task.exception()
            if exc is None:
                result = task.result()
            elif isinstance(exc, TimeoutError):
                timed_out = True
            else:
                self._lookups.append(Lookup(name, "-", "-", "error", detail=f"{type(exc).__name__}: {exc}"))
        if timed_out:
            limit = f"check timeout of {self.checks.timeout:g} s"
            self._lookups.append(Lookup(name, "-", "-", "timeout", detail=limit))
        self._results[name] = result
        checks = self.checks
        if name == "dnsbl":
            return [self._list_hit("dnsbl", r) for r in result or () if r.listed]
        if name in ("uribl-sender", "uribl-links"):
            return self._uribl_hits(result or ())
        if name == "spf":
            if not checks.spf.enabled:
                return []
            if result is None:
                return [_result_hit(checks, "spf", "temperror", "no SPF result in time")]
            return [_result_hit(checks, "spf", str(result.result), f"{getattr(result, 'domain', '')}")]
        if name == "dkim":
            if not checks.dkim.enabled:
                return []
            return [self._dkim_hit(result)]
        if name == "arc":
            if result is None:
                return [_result_hit(checks, "arc", "temperror", "no ARC result in time")]
            sealers = ", ".join(getattr(result, "sealers", ()) or ())
            return [_result_hit(checks, "arc", str(result.result), f"sealers: {sealers}" if sealers else "")]
        if name == "dmarc":
            return [self._dmarc_hit(result)]
        if name == "antivirus":
            return self._antivirus_hits(result)
        return []

    def _list_hit(self, kind: str, result: dnsbl.ListResult) -> Hit:
        zone = next(z for z in getattr(self.checks, kind) if z.zone == result.zone)
        return Hit(f"{kind}:{result.zone}", KIND_CHECK, zone.score, zone.action, f"{SOURCE}.{kind}",
                   f"{result.subject} listed ({result.reason})")

    def _uribl_hits(self, results: Sequence[dnsbl.ListResult]) -> list[Hit]:
        hits: list[Hit] = []
        for result in results:
            if not result.listed:
                continue
            hit = self._list_hit("uribl", result)
            # one hit per zone and message: a zone's score counts once, however many links it lists
            if not any(h.id == hit.id for h in self._handed) and all(h.id != hit.id for h in hits):
                hits.append(hit)
        return hits

    def _dkim_hit(self, results: Sequence[Any] | None) -> Hit:
        if results is None:
            return _result_hit(self.checks, "dkim", "temperror", "no DKIM result in time")
        if not results:
            return _result_hit(self.checks, "dkim", "none", "no signature")
        best = min(results, key=lambda r: _DKIM_ORDER.index(r.result) if r.result in _DKIM_ORDER else 99)
        detail = "; ".join(f"d={r.domain} s={r.selector} {r.result}"
                           + (f" ({r.reason})" if getattr(r, "reason", "") else "") for r in results)
        return _result_hit(self.checks, "dkim", str(best.result), detail)

    def _dmarc_hit(self, result: Any) -> Hit:
        checks = self.checks
        if result is None:
            return _result_hit(checks, "dmarc", "temperror", "SPF or DKIM gave no result in time")
        token = str(result.result)
        disposition = str(getattr(result, "disposition", "none") or "none")
        if token == "fail" and disposition in ("reject", "quarantine"):
            token = disposition
        hit = _result_hit(checks, "dmarc", token, f"{getattr(result, 'domain', '')} p={getattr(result, 'policy', '')}"
                          f" disposition={disposition}")
        if hit.action is None and checks.dmarc.honour_policy and token in ("reject", "quarantine"):
            hit = Hit(hit.id, hit.kind, hit.score, Action(token), hit.source, hit.message)
        return hit

    def _dmarc_override(self, hits: list[Hit]) -> list[Hit]:
        """A DMARC failure forgiven by a passing ARC chain sealed by a trusted forwarder."""
        arc = self._results.get("arc")
        failed = next((h for h in hits if h.id in ("dmarc:fail", "dmarc:quarantine", "dmarc:reject")), None)
        if failed is None or not isinstance(arc, ArcResult):
            return hits
        sealer = arc.trusted_sealer(self.checks.arc.trusted_sealers)
        if sealer is None:
            return hits
        replacement = _result_hit(self.checks, "dmarc", "pass",
                                  f"{failed.id} overridden: ARC chain sealed by trusted {sealer}")
        return [replacement if h is failed else h for h in hits]

    def _antivirus_hits(self, result: clamd.ScanResult | None) -> list[Hit]:
        antivirus = self.checks.antivirus
        assert antivirus is not None
        source = f"{SOURCE}.antivirus"
        if result is not None:
            self._lookups.append(Lookup("antivirus", result.address, "INSTREAM", result.status,
                                        (result.virus,) if result.virus else (), result.elapsed, False,
                                        result.detail))
        if result is not None and result.status == "virus":
            return [Hit(f"virus:{result.virus}", KIND_ANTIVIRUS, 0.0, antivirus.on_virus, source,
                        f"virus found: {result.virus}")]
        if result is not None and result.status == "clean":
            return []
        reason = result.reason if result is not None else clamd.REASON_TIMEOUT
        kind = KIND_ANTIVIRUS if antivirus.on_error in _REFUSING else KIND_CHECK
        message = f"message not scanned: {reason}" if antivirus.on_error in _REFUSING else None
        return [Hit("antivirus:error", kind, 0.0, antivirus.on_error, source, message or f"not scanned: {reason}")]


def _ended(expiry: asyncio.TimerHandle, task: asyncio.Task[Any]) -> None:
    expiry.cancel()
    if not task.cancelled():
        task.exception()  # retrieved: a check nobody waits for (the client left) logs nothing


async def _settled(task: asyncio.Task[Any] | None) -> Any:
    """The task's result once it ends; None when it failed, timed out or was cancelled."""
    if task is None:
        return None
    try:
        return await asyncio.shield(task)
    except (asyncio.CancelledError, Exception):
        return None



def checks_configured(checks: Checks) -> bool:
    """Whether `checks` asks for any external check (DNSBL, URIBL, SPF, DKIM, DMARC, ARC, clamd)."""
    return bool(
        checks.dnsbl or checks.uribl or checks.antivirus is not None
        or checks.spf.enabled or checks.dkim.enabled or checks.dmarc.enabled or checks.arc.enabled
    )


def outbound_checks(checks: Checks) -> Checks:
    """The checks as they apply to tenants' own outbound mail: the antivirus only (DNSBL, URIBL,
    SPF, DKIM, DMARC and ARC judge strangers, not the tenant's own servers)."""
    off = {"enabled": False}
    return checks.model_copy(update={
        "dnsbl": [], "uribl": [],
        "spf": checks.spf.model_copy(update=off), "dkim": checks.dkim.model_copy(update=off),
        "dmarc": checks.dmarc.model_copy(update=off), "arc": checks.arc.model_copy(update=off),
    })


class Checker:
    """Makes the `CheckRun` of each transaction, all sharing one resolver (one TTL cache) that
    follows the current policy's `dns:` settings across reloads."""

    def __init__(self) -> None:
        self._resolver: Resolver | None = None
        self._settings: DnsSettings | None = None
        self._outbound: tuple[Checks, Checks] | None = None  # (gateway checks, their outbound view)
        dnsbl.registrable_domain("warm.example")  # parse the public suffix list now, not in a transaction

    def resolver(self, settings: DnsSettings) -> Resolver:
        if self._resolver is None:
            self._resolver = Resolver(settings)
        elif settings != self._settings:
            self._resolver.configure(settings)
        self._settings = settings
        return self._resolver

    def checks_for(self, checks: Checks, direction: Direction) -> Checks:
        """`checks` as they apply to mail of `direction` (outbound: `outbound_checks`, made once per policy)."""
        if direction is not Direction.outbound:
            return checks
        if self._outbound is None or self._outbound[0] is not checks:
            self._outbound = (checks, outbound_checks(checks))
        return self._outbound[1]

    def begin(self, gateway: Gateway, client_ip: str, helo: str,
              direction: Direction = Direction.inbound) -> CheckRun | None:
        """A started run for one transaction (DNSBL under way), or None when no check is configured."""
        checks = self.checks_for(gateway.checks, direction)
        if not checks_configured(checks):
            return None
        run = CheckRun(checks, self.resolver(gateway.dns), hostname=gateway.hostname)
        run.connect(client_ip, helo)
        return run
