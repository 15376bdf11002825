"""`liveprism reload [DIR]`: POST /reload on the running gateway's admin API.

The admin address, port and token come from DIR's gateway.yaml (`admin:`); prints the version
applied (exit 0) or the problems that made the gateway keep its current policy (exit 1); exit 2
when the gateway cannot be asked (no `admin:`, no token, not running, refused).
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from engine.policy.loader import Problem, load_file
from engine.policy.models import Gateway

TIMEOUT = 600.0


def run_reload(directory: Path) -> int:
    from engine.admin.server import resolve_token

    problems: list[Problem] = []
    loaded = load_file(directory, "gateway.yaml", Gateway, problems)
    if loaded is None:
        for problem in problems:
            print(problem.format("text", directory), file=sys.stderr)
        return 2
    admin = loaded.model.admin
    if admin is None:
        print(f"error: {directory / 'gateway.yaml'} has no admin: listener to ask", file=sys.stderr)
        return 2
    token = resolve_token(admin, directory)
    if token is None:
        print(f"error: the admin token ({admin.token}) is not set or cannot be read", file=sys.stderr)
        return 2
    host = f"[{admin.address}]" if ":" in admin.address else admin.address
    request = urllib.request.Request(
        f"http://{host}:{admin.port}/reload", method="POST", headers={"Authorization": f"Bearer {token}"}, data=b""
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            body: dict[str, Any] = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            body = json.loads(exc.read())
        except ValueError:
            body = {}
        if exc.code != 422:
            print(f"error: the gateway answered {exc.code}: {body.get('error', exc.reason)}", file=sys.stderr)
            return 2
    except (urllib.error.URLError, OSError) as exc:
        print(f"error: cannot reach the gateway's admin API on {host}:{admin.port}: {exc}", file=sys.stderr)
        return 2
    if body.get("applied"):
        workers = body.get("workers") or {}
        print(f"applied: policy {body['version']}" + (f" (workers: {workers})" if len(workers) > 1 else ""))
        return 0
    for line in body.get("problems", []):
        print(line)
    print(f"rejected: policy {body.get('attempted') or '?'} is invalid; still serving {body.get('version')}",
          file=sys.stderr)
    return 1
