"""A running `liveprism serve` rejects a hostile policy edit cheaply and keeps serving (real gateway, real sink)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.gateway import send, start_gateway
from tests.support.messages import message
from tests.support.peers import start_sink
from tests.support.policies import acme_to
from tests.support.processes import wait_for

LEVELS = zip("abcdefgh", "bcdefghi", strict=True)  # each line: nine aliases of the line above
BOMB = "name: bomb\naction: block\na: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{this}: &{this} [" + ",".join([f"*{below}"] * 9) + "]\n" for below, this in LEVELS
)


def vm_hwm_kib(pid: int) -> int:
    """Peak resident set size of process `pid` (Linux /proc), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_hot_reload_of_an_alias_bomb_is_rejected_and_mail_still_flows(tmp_path: Path, procs: list[Any]) -> None:
    box = start_sink(tmp_path, procs)
    gateway = start_gateway(tmp_path, procs, acme_to(box.port))
    assert gateway.proc is not None
    (gateway.policy / "lists" / "bomb.yaml").write_text(BOMB)
    assert wait_for(lambda: "reload rejected" in gateway.log(), timeout=30), gateway.log()[-2000:]
    assert "lists/bomb.yaml:8:8: error: alias *e expands to 66,430 nodes" in gateway.log()
    # 9**9 leaves were never built: the gateway's peak memory stays that of a small policy
    assert vm_hwm_kib(gateway.proc.pid) < 400 * 1024
    assert send(gateway.port, "alice@example.com", ["bob@acme.example"], message())["data"][0] == 250
    assert wait_for(lambda: len(box.messages()) == 1, timeout=30), gateway.log()[-2000:]
