"""The gateway under test as a real process: `Gateway` (`liveprism serve` on a policy dir the test
wrote; `AdminGateway` with the admin API), `start_gateway` (write the lab policy, start, register
in `procs`), and two SMTP clients:
`send` (smtplib, one transaction, never raising on refusals) and `Line` (a raw socket).

    box = start_sink(tmp_path, procs)                                   # tests/support/peers.py
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))         # tests/support/policies.py
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], raw)["data"][0] == 250
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.policies import write_policy
from tests.support.processes import LOCALHOST, REPO, free_port, liveprism, run_liveprism, stop, wait_port

HELO = "client.test.example"
TOKEN = "test-admin-token-0123456789"  # of the admin API, given in the environment (`admin_settings`)
TOKEN_ENV = "LIVEPRISM_TEST_ADMIN_TOKEN"


@dataclass
class Gateway:
    """A real `liveprism serve` process on a policy dir written by the test.

    `args` are more `serve` options (`--workers 2`, `--git-remote …`), `env` more environment
    variables, `admin_port` a second port to wait for (the admin listener) when not 0."""

    policy: Path
    state: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)
    args: tuple[str, ...] | list[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    admin_port: int = 0
    timeout: float = 20.0  # to start listening

    def start(self) -> Gateway:
        self.log_path = self.state.parent / "gateway.log"
        log = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            liveprism("serve", str(self.policy), "--state", str(self.state), *self.args),
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env},
        )
        wait_port(self.port, timeout=self.timeout, proc=self.proc)
        if self.admin_port:
            wait_port(self.admin_port, timeout=self.timeout, proc=self.proc)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop(self.proc, sig)

    def restart_with(self, old: str, new: str) -> None:
        """Replace `old` by `new` in gateway.yaml (it must be there) and restart the gateway."""
        path = self.policy / "gateway.yaml"
        text = path.read_text()
        assert old in text, f"{old!r} not in gateway.yaml"
        path.write_text(text.replace(old, new))
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_liveprism(*args, timeout=60)


@dataclass
class AdminGateway(Gateway):
    """`liveprism serve` with the admin listener (`admin_settings`), its token in the environment; `http`
    asks the admin API."""

    env: dict[str, str] = field(default_factory=lambda: {TOKEN_ENV: TOKEN})
    timeout: float = 60.0

    def http(self, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        request = urllib.request.Request(f"http://{LOCALHOST}:{self.admin_port}{path}", method=method,
                                         headers=headers, data=b"" if method == "POST" else None)
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        try:
            return status, json.loads(body)
        except ValueError:
            return status, body.decode()

    def policy_status(self) -> dict[str, Any]:
        status, body = self.http("GET", "/policy")
        assert status == 200, body
        return dict(body)


def admin_settings(admin_port: int, extra: str = "") -> str:
    """The gateway.yaml line of an admin listener on 127.0.0.1:`admin_port`, token from TOKEN_ENV."""
    return f"admin: {{address: 127.0.0.1, port: {admin_port}, token: 'env:{TOKEN_ENV}'{extra}}}"


def start_gateway(tmp_path: Path, procs: list[Any], tenants: Mapping[str, Mapping[str, object]],
                  **policy: Any) -> Gateway:
    """`write_policy(tmp_path / "policy", port=<free>, tenants=tenants, **policy)`, then a started
    `Gateway` on it (state in tmp_path/state), registered in `procs`."""
    port = free_port()
    root = write_policy(tmp_path / "policy", port=port, tenants=tenants, **policy)
    gateway = Gateway(root, tmp_path / "state", port)
    procs.append(gateway)
    return gateway.start()


def send(port: int, sender: str, rcpts: list[str], raw: bytes, source: str = LOCALHOST) -> dict[str, Any]:
    """One transaction with smtplib, without raising on refusals: {"mail": (code, text), "rcpt":
    {addr: code}, "data": (code, text) or None when not sent, "final": (code, text) of the first
    refusal or of the reply to DATA}."""
    with smtplib.SMTP(LOCALHOST, port, timeout=30, source_address=(source, 0)) as client:
        client.ehlo(HELO)
        code, text = client.mail(sender)
        if code != 250:
            return {"mail": (code, text.decode()), "rcpt": {}, "data": None, "final": (code, text.decode())}
        rcpt_codes, refusal = {}, None
        for rcpt in rcpts:
            code, text = client.rcpt(rcpt)
            rcpt_codes[rcpt] = code
            if code != 250 and refusal is None:
                refusal = (code, text.decode())
        if not any(code == 250 for code in rcpt_codes.values()):
            return {"mail": (250, ""), "rcpt": rcpt_codes, "data": None, "final": refusal}
        code, text = client.data(raw)
        return {"mail": (250, ""), "rcpt": rcpt_codes, "data": (code, text.decode()), "final": (code, text.decode())}


class Line:
    """A raw SMTP client socket: send a command, read one (possibly multi-line) reply."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOCALHOST, port), timeout=60)
        self.buffer = b""
        self.reply()

    def reply(self) -> str:
        while True:
            lines = self.buffer.split(b"\r\n")
            for index, line in enumerate(lines[:-1]):
                if len(line) >= 4 and line[3:4] == b" ":
                    self.buffer = b"\r\n".join(lines[index + 1 :])
                    return b"\r\n".join(lines[: index + 1]).decode("utf-8", "replace")
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed; unread {self.buffer!r}")
            self.buffer += chunk

    def cmd(self, line: str | bytes) -> str:
        self.sock.sendall((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return self.reply()

    def close(self) -> None:
        self.sock.close()
