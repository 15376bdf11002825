"""The admin HTTP listener (gateway.yaml `admin:`): health, readiness, metrics, policy, reload.

aiohttp, on the gateway's own asyncio loop: no thread and no second event loop, so the handlers
read the live policy and the worker table directly, and `POST /reload` runs the same reload path
as the file watcher and SIGHUP.

- `GET /healthz`: 200 while the process runs;
- `GET /readyz`: 200, or 503 with the reasons (`policy`, `store`, `relay`) in JSON;
- `GET /metrics`: Prometheus text exposition (`engine.metrics`), all processes in one scrape,
  with `liveprism_dns_drift{domain,record}` from the periodic DNS check (`dns_monitor`);
- `GET /policy`: the version served, when and from where; the last attempt and its problems;
  the version each worker serves; the git sync revisions;
- `POST /reload`: `Authorization: Bearer TOKEN` required (401 without, 403 wrong, 503 when the
  configured token cannot be read); 200 with the version applied, 422 with the problems.

The token is read on every request from where `admin.token` points (`env:NAME`, or a file,
relative to the policy directory), so a rotated token needs no restart; tokens are compared in
constant time.
"""

from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from engine import metrics
from engine.admin.dns_monitor import DnsDriftMonitor
from engine.graph.build.live import LivePolicy, ReloadResult
from engine.policy.models import AdminSettings

log = logging.getLogger("liveprism.admin")


@dataclass
class AdminContext:
    """What the admin API reads and drives; the service fills it in."""

    policy: LivePolicy
    reload: Callable[[str], Awaitable[ReloadResult]]  # trigger -> result (directory reload or git sync pass)
    ready: Callable[[], Awaitable[list[str]]]  # reasons the gateway is not ready ([] = ready)
    workers: Callable[[], dict[str, str]]  # worker index -> version served
    git: Callable[[], dict[str, Any] | None]  # git sync status, None when not syncing
    state: Path | None = None
    dns_drift: Callable[[], dict[tuple[str, str], float]] = dict  # the last DNS drift check (dns_monitor)


def resolve_token(settings: AdminSettings, policy_dir: Path) -> str | None:
    """The configured token, or None when its environment variable or file is missing or empty."""
    reference = settings.token
    if reference.startswith("env:"):
        value = os.environ.get(reference[4:], "")
    else:
        path = Path(reference)
        try:
            value = (path if path.is_absolute() else policy_dir / path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None
    value = value.strip()
    return value or None


def build_app(context: AdminContext) -> web.Application:
    app = web.Application()

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "pid": os.getpid()})

    async def readyz(request: web.Request) -> web.Response:
        reasons = await context.ready()
        return web.json_response({"ready": not reasons, "reasons": reasons}, status=503 if reasons else 200)

    async def metrics_view(request: web.Request) -> web.Response:
        body = metrics.scrape(lambda: _snapshot(context), context.state)
        return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})

    async def policy_view(request: web.Request) -> web.Response:
        return web.json_response(_policy_json(context))

    async def reload_view(request: web.Request) -> web.Response:
        settings = context.policy.graph.gateway.admin
        expected = resolve_token(settings, context.policy.directory) if settings is not None else None
        if expected is None:
            return web.json_response({"error": "the admin token is not configured or cannot be read"}, status=503)
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return web.json_response({"error": "bearer token required"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="liveprism"'})
        if not hmac.compare_digest(given.strip().encode(), expected.encode()):
            log.warning("POST /reload with a wrong token from %s", request.remote)
            return web.json_response({"error": "wrong token"}, status=403)
        result = await context.reload("api")
        return web.json_response(_reload_json(result, context), status=200 if result.applied else 422)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_view)
    app.router.add_get("/policy", policy_view)
    app.router.add_post("/reload", reload_view)
    return app


def _snapshot(context: AdminContext) -> metrics.Snapshot:
    policy = context.policy
    status = policy.status()
    git = context.git() or {}
    return metrics.Snapshot(
        policy_version=policy.graph.version, git_commit=status["git_commit"], source=policy.source,
        reload_attempts=policy.attempts, reload_failures=policy.failures, reload_last_success=policy.last_success,
        workers=context.workers(),
        git={key: str(git.get(key) or "") for key in ("applied", "attempted", "attempt_result")} if git else {},
        git_failures=int(git.get("failures", 0)) if git else 0,
        dns_drift=context.dns_drift(),
    )


def _policy_json(context: AdminContext) -> dict[str, Any]:
    data = context.policy.status()
    data["workers"] = context.workers()
    data["git"] = context.git()
    return data


def _reload_json(result: ReloadResult, context: AdminContext) -> dict[str, Any]:
    return {
        "applied": result.applied,
        "version": result.served,
        "attempted": result.attempt.version,
        "problems": list(result.attempt.problems),
        "workers": context.workers(),
        "attempt": result.attempt.to_json(),
    }


class AdminServer:
    """Starts and stops the listener on the running loop."""

    def __init__(self, context: AdminContext, settings: AdminSettings) -> None:
        self.dns_monitor = DnsDriftMonitor(context.policy.policy_dir, settings.dns_check_interval)
        context.dns_drift = lambda: self.dns_monitor.values
        self._app = build_app(context)
        self._settings = settings
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._settings.address, self._settings.port, reuse_address=True)
        await site.start()
        log.info("admin API on http://%s:%d", self._settings.address, self._settings.port)
        self.dns_monitor.start()

    async def stop(self) -> None:
        await self.dns_monitor.stop()
        if self._runner is not None:
            await self._runner.cleanup()
