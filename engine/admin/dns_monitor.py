"""The periodic DNS drift check behind `liveprism_dns_drift{domain,record}` (issue: DNS as code).

While the admin listener runs, every `admin.dns_check_interval` seconds (0 = never) the records
`liveprism dns` plans for the served policy are compared with live DNS through a resolver of the
policy's `dns:` settings, exactly as `liveprism dns --check` does (`engine.dns_as_code.drift`). The last
result is kept as values — (domain, record kind) → 1.0 drifted / 0.0 agrees — and exported at
scrape time. A check that fails as a whole (policy unreadable) keeps the previous values and is
logged; DNS errors of single records count as drift, as in `dns --check`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path

from engine.dns.resolver import Resolver
from engine.dns_as_code.drift import drift_metric_values, policy_drift
from engine.policy.loader import load_policy

log = logging.getLogger("liveprism.admin.dns")


class DnsDriftMonitor:
    """Runs the drift check of the policy in `directory()` every `interval` seconds."""

    def __init__(self, directory: Path, interval: float) -> None:
        self._directory = directory
        self.interval = interval
        self.values: dict[tuple[str, str], float] = {}
        self.checked_at = 0.0
        self._task: asyncio.Task[None] | None = None

    async def check_once(self) -> dict[tuple[str, str], float]:
        """One check of the policy as it is on disk now; updates and returns `values`."""
        source = await asyncio.to_thread(load_policy, self._directory)
        if source.gateway is None:
            log.warning("dns drift check skipped: %s/gateway.yaml does not load", self._directory)
            return self.values
        gateway = source.gateway.model
        report = await policy_drift(gateway, [t.model for t in source.tenants], self._directory,
                                    Resolver(gateway.dns))
        self.values = drift_metric_values(report)
        self.checked_at = time.time()
        drifted = sorted(f"{domain}/{record}" for (domain, record), value in self.values.items() if value)
        log.info("dns drift check: %d record sets, drift in %s", len(self.values), ", ".join(drifted) or "none")
        return self.values

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except Exception:  # a monitor never takes the gateway down
                log.exception("dns drift check failed")
            await asyncio.sleep(self.interval)
