"""Prometheus metrics of the gateway (exposed by `GET /metrics` on the admin listener).

Processes: the front end, its worker processes and the relay each count what they do; `serve`
sets `PROMETHEUS_MULTIPROC_DIR` (`STATE/metrics`, emptied at start) before any of them imports
`prometheus_client`, so every process writes its values to its own mmap'ed files and one scrape
of the parent adds them up (prometheus_client's multiprocess mode). Chosen over workers reporting
to the parent because a scrape then always sees every increment up to that instant, a worker
that dies keeps its counts, and the hot path stays one in-memory write.

What is known only at scrape time (queue, archive and quarantine sizes from the store; the policy
served and the reload bookkeeping; which version each worker serves) comes from a collector the
parent registers per scrape (`Snapshot`).

Naming: `liveprism_` prefix, `_total` counters, `_seconds` and `_bytes` base units; label values
reuse the verdict's reason tokens and hit kinds (`engine.graph.verdict`).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from engine.graph.verdict import Decision

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

MESSAGES = Counter(
    "liveprism_messages_total", "Tenant copies decided after DATA, by direction, tenant, action and reason token.",
    ["direction", "tenant", "action", "reason"],
)
HITS = Counter("liveprism_hits_total", "Hits in decided copies, by rule/list/check id and hit kind.", ["id", "kind"])
ACCEPT_LATENCY = Histogram(
    "liveprism_accept_latency_seconds", "From MAIL FROM to the final reply after DATA.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
SESSIONS = Counter("liveprism_smtp_sessions_total", "SMTP connections accepted.")
SESSIONS_OPEN = Gauge("liveprism_smtp_sessions_open", "SMTP connections open now.", multiprocess_mode="livesum")
REPLIES = Counter("liveprism_smtp_replies_total", "SMTP replies sent, by code class (2xx, 4xx, 5xx).", ["code_class"])
REFUSALS = Counter(
    "liveprism_refusals_total", "Transactions (MAIL) and recipients (RCPT) refused before DATA, by stage and"
    " reason token.", ["stage", "reason"],
)
DELIVERY_ATTEMPTS = Counter(
    "liveprism_delivery_attempts_total", "Delivery attempts per recipient, by result (sent, deferred, bounced,"
    " expired) and route (host:port, or none).", ["result", "route"],
)

RELAY_EVENTS = Counter(
    "liveprism_relay_events_total", "Relay decisions worth alerting on, by event token (dsn-dropped-private-hop,"
    " mta-sts-enforce-mx-mismatch, mta-sts-testing-mx-mismatch, dkim-signed, dkim-key-unavailable).", ["event"],
)
OUTBOUND_RATE_LIMITED = Counter(
    "liveprism_outbound_rate_limited_total", "Outbound transactions refused with 451 4.7.1 by outbound.limits,"
    " by tenant, limit (per_sender_per_hour, per_tenant_per_hour) and stage (mail, data).",
    ["tenant", "limit", "stage"],
)
AUTH_ATTEMPTS = Counter(
    "liveprism_smtp_auth_total", "SMTP AUTH attempts on the outbound listener, by result (success, failure).",
    ["result"],
)

_CODE_CLASSES = {"2": "2xx", "3": "3xx", "4": "4xx", "5": "5xx"}


def count_reply(reply: str) -> None:
    """One SMTP reply sent (called with the reply line)."""
    REPLIES.labels(_CODE_CLASSES.get(reply[:1], "other")).inc()


def session_opened() -> None:
    SESSIONS.inc()
    SESSIONS_OPEN.inc()


def session_closed() -> None:
    SESSIONS_OPEN.dec()


def outbound_rate_limited(tenant: str, limit: str, stage: str) -> None:
    """An outbound transaction refused by `outbound.limits.<limit>` at `stage`."""
    OUTBOUND_RATE_LIMITED.labels(tenant, limit, stage).inc()


def auth_attempt(success: bool) -> None:
    AUTH_ATTEMPTS.labels("success" if success else "failure").inc()


def delivery_attempt(result: str, route: str) -> None:
    """One recipient's delivery attempt ended with `result` at `route`."""
    DELIVERY_ATTEMPTS.labels(result, route).inc()


def relay_event(event: str) -> None:
    """One relay event (a kebab-case token, see RELAY_EVENTS)."""
    RELAY_EVENTS.labels(event).inc()


class TransactionObserver:
    """Told once per transaction decided after DATA (`observe`: copies, hits, accept time) and once
    per refusal before it (`refused`)."""

    def refused(self, stage: str, reason: str) -> None:
        REFUSALS.labels(stage, reason or "policy").inc()

    def observe(self, decision: Decision, direction: str, seconds: float) -> None:
        ACCEPT_LATENCY.observe(seconds)
        for verdict in decision.tenants.values():
            MESSAGES.labels(direction, verdict.tenant, verdict.action.value, verdict.reason).inc()
            for hit in verdict.hits:
                HITS.labels(hit.id, hit.kind).inc()


# ---------------------------------------------------------------- scrape


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the parent knows at scrape time (filled in by the admin server)."""

    policy_version: str
    git_commit: str
    source: str
    reload_attempts: int
    reload_failures: int
    reload_last_success: float
    workers: dict[str, str] = field(default_factory=dict)  # worker index -> version served
    git: dict[str, str] = field(default_factory=dict)  # applied / attempted revisions, when syncing
    git_failures: int = 0
    dns_drift: dict[tuple[str, str], float] = field(default_factory=dict)  # (domain, record) -> 1 drifted, 0 ok


class _SnapshotCollector:
    def __init__(self, snapshot: Callable[[], Snapshot], state: Path | None) -> None:
        self._snapshot = snapshot
        self._state = state

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        info = GaugeMetricFamily("liveprism_policy_info", "The policy served (always 1).",
                                 labels=["version", "git_commit", "source"])
        info.add_metric([snap.policy_version, snap.git_commit, snap.source], 1)
        yield info
        workers = GaugeMetricFamily("liveprism_worker_policy_info", "The policy each SMTP worker serves (always 1).",
                                    labels=["worker", "version"])
        for worker, version in sorted(snap.workers.items()):
            workers.add_metric([worker, version], 1)
        yield workers
        yield CounterMetricFamily("liveprism_reload_attempts", "Policy reload attempts.", value=snap.reload_attempts)
        yield CounterMetricFamily("liveprism_reload_failures", "Policy reloads rejected (invalid policy).",
                                  value=snap.reload_failures)
        yield GaugeMetricFamily("liveprism_reload_last_success_timestamp_seconds",
                                "Unix time of the last successful (re)load.", value=snap.reload_last_success)
        if snap.git:
            git = GaugeMetricFamily("liveprism_git_sync_info", "Git sync: last applied and attempted revision.",
                                    labels=["applied", "attempted", "attempt_result"])
            git.add_metric([snap.git.get("applied", ""), snap.git.get("attempted", ""),
                            snap.git.get("attempt_result", "")], 1)
            yield git
            yield CounterMetricFamily("liveprism_git_sync_failures", "Git sync passes that failed (fetch or invalid).",
                                      value=snap.git_failures)
        if snap.dns_drift:
            drift = GaugeMetricFamily("liveprism_dns_drift", "1 when a planned DNS record of a tenant domain differs"
                                      " from live DNS (missing, different, extra, bypass, error), 0 when it agrees.",
                                      labels=["domain", "record"])
            for (domain, record), value in sorted(snap.dns_drift.items()):
                drift.add_metric([domain, record], value)
            yield drift
        if self._state is not None:
            yield from store_metrics(self._state / "index.sqlite3")


def store_metrics(db: Path) -> Iterable[Metric]:
    """Queue, archive and quarantine sizes, read from the store's SQLite index (read-only)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
    except sqlite3.Error:
        return []
    try:
        now = time.time()
        queue = GaugeMetricFamily("liveprism_queue_deliveries", "Deliveries in the queue, by state.", labels=["state"])
        counts = dict(conn.execute("SELECT state, count(*) FROM deliveries GROUP BY state").fetchall())
        for state in ("queued", "inflight"):
            queue.add_metric([state], counts.get(state, 0))
        (oldest,) = conn.execute("SELECT min(created_at) FROM deliveries").fetchone()
        age = GaugeMetricFamily("liveprism_queue_oldest_age_seconds", "Age of the oldest delivery in the queue.",
                                value=max(0.0, now - oldest) if oldest is not None else 0.0)
        (archived, archived_bytes) = conn.execute(
            "SELECT count(*), coalesce(sum(m.size), 0) FROM archive a JOIN messages m USING (queue_id)"
        ).fetchone()
        (held,) = conn.execute("SELECT count(*) FROM quarantine WHERE status = 'held'").fetchone()
        return [
            queue, age,
            GaugeMetricFamily("liveprism_archive_messages", "Messages in the archive.", value=archived),
            GaugeMetricFamily("liveprism_archive_size_bytes", "Bytes of archived messages.", value=archived_bytes),
            GaugeMetricFamily("liveprism_quarantine_messages", "Copies held in quarantine.", value=held),
        ]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def scrape(snapshot: Callable[[], Snapshot], state: Path | None) -> bytes:
    """The exposition text: every process's counters (multiprocess mode) plus the snapshot."""
    registry = CollectorRegistry()
    directory = os.environ.get(MULTIPROC_ENV)
    if directory:
        MultiProcessCollector(registry, directory)  # type: ignore[no-untyped-call]
    else:  # a single process (unit tests): this process's own metrics
        for metric in (MESSAGES, HITS, ACCEPT_LATENCY, SESSIONS, SESSIONS_OPEN, REPLIES, REFUSALS, DELIVERY_ATTEMPTS):
            registry.register(metric)
    registry.register(_SnapshotCollector(snapshot, state))
    return generate_latest(registry)


def process_exited(pid: int) -> None:
    """Drop a dead process's live gauges (its counters stay counted)."""
    if os.environ.get(MULTIPROC_ENV):
        mark_process_dead(pid)  # type: ignore[no-untyped-call]
