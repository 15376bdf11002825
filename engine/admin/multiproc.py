"""The multiprocess-metrics directory, set up before anything imports `prometheus_client`.

prometheus_client picks its value storage when it is first imported: with `PROMETHEUS_MULTIPROC_DIR`
set, every process (front end, workers, relay: they inherit the environment) writes its own files
there and a scrape adds them up. So `serve` calls `prepare()` first thing, and `cleanup()` at exit.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare() -> Path:
    """A fresh, private directory for this gateway's metric files, exported in the environment."""
    if "prometheus_client" in sys.modules:  # too late for this process: its own values stay in memory
        print("warning: prometheus_client was imported before the metrics directory was set; "
              "/metrics will miss this process's counts", file=sys.stderr)
    path = Path(tempfile.mkdtemp(prefix="liveprism-metrics-"))
    os.environ[ENV] = str(path)
    return path


def hand_over(uid: int, gid: int) -> None:
    """Give the directory (and the files already in it) to the account `serve --user` becomes, so
    the processes it starts after dropping privileges can write their own files there."""
    directory = os.environ.get(ENV)
    if not directory:
        return
    for path in (Path(directory), *Path(directory).iterdir()):
        os.chown(path, uid, gid)


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
