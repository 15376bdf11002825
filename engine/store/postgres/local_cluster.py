"""A PostgreSQL cluster of one's own, for the tests, the benchmarks and a developer's machine.

Never used by `serve`: a gateway is given a `storage.url`. This is the plain recipe of the
README's cluster section in code: Debian's `postgresql` binaries, one `initdb`, one `postgres`.

Contract: `LocalCluster.create()` makes a fresh data directory under a new temporary directory
(mode 0700, owned by the user the server runs as: PostgreSQL refuses to run as root, so when
this process is root the cluster belongs to `RUN_AS`, `nobody` by default, and every server
command runs through `runuser`), configured to listen on 127.0.0.1 at a free port only, its Unix
socket in that directory, with `fsync` and `synchronous_commit` on (the durability the store
promises is measured and tested as it runs in production). `start` waits until connections are
accepted; `stop` ends the postmaster by the PID in `postmaster.pid` (SIGINT: PostgreSQL's fast
shutdown) and waits for it; `pg_ctl_stop` is `pg_ctl stop -m fast`; `destroy` stops it and removes
the directory. No system service is touched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("LIVEPRISM_PG_BIN", "/usr/lib/postgresql/15/bin"))
RUN_AS = os.environ.get("LIVEPRISM_PG_USER", "nobody")
SUPERUSER = "postgres"
START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class LocalCluster:
    """One initdb'd cluster in `root` (see the module docstring)."""

    root: Path
    port: int
    user: str | None  # the OS user the server runs as (None: this process's own user)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    @classmethod
    def create(cls, *, settings: dict[str, str] | None = None) -> LocalCluster:
        """initdb a new cluster (not started yet); `settings` are added to postgresql.conf."""
        root = Path(tempfile.mkdtemp(prefix="liveprism-pg-"))
        user: str | None = None
        if os.geteuid() == 0:
            user = RUN_AS
            entry = pwd.getpwnam(user)
            os.chown(root, entry.pw_uid, entry.pw_gid)
        cluster = cls(root, free_port(), user)
        cluster._run(PG_BIN / "initdb", "-D", str(cluster.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                     "--locale=C", "--no-instructions")
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(cluster.port),
            "unix_socket_directories": f"'{root}'",
            "fsync": "on",
            "synchronous_commit": "on",
            "max_connections": "200",
            "logging_collector": "off",
            **(settings or {}),
        }
        with open(cluster.data / "postgresql.conf", "a", encoding="utf-8") as out:
            out.write("\n# liveprism local cluster\n")
            out.writelines(f"{name} = {value}\n" for name, value in conf.items())
        return cluster

    def _command(self, *args: str | Path) -> list[str]:
        command = [str(arg) for arg in args]
        return ["runuser", "-u", self.user, "--", *command] if self.user else command

    def _run(self, *args: str | Path) -> None:
        done = subprocess.run(self._command(*args), capture_output=True, text=True, cwd=self.root, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, args))} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> int:
        """Start the server; returns the postmaster's PID once it accepts connections."""
        self._run(PG_BIN / "pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(int(START_TIMEOUT)),
                  "start")
        pid = self.pid()
        if pid is None:
            raise RuntimeError(f"postgres did not start: {self.log_tail()}")
        return pid

    def pid(self) -> int | None:
        """The running postmaster's PID (from postmaster.pid), None when it is not running."""
        try:
            first = (self.data / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, PermissionError):
            return None
        with contextlib.suppress(ValueError, ProcessLookupError):
            pid = int(first)
            os.kill(pid, 0)
            return pid
        return None

    def stop(self, timeout: float = 60.0) -> None:
        """Fast shutdown by PID (SIGINT to the postmaster), waiting until it is gone."""
        pid = self.pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):  # it would not stop: immediate shutdown
            os.kill(pid, signal.SIGQUIT)

    def pg_ctl_stop(self) -> None:
        """`pg_ctl stop -m fast`, waiting for the shutdown."""
        self._run(PG_BIN / "pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        """Stop the server (if running) and remove its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
