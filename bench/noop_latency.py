"""A second client's NOOP round trips while a real `liveprism serve` processes the issue-7 messages
(6 MB of folded RFC 2047 encoded-words; a 200,000-part multipart).

Usage: python bench/noop_latency.py [REPO]   (REPO: the checkout whose engine `serve` runs; default
this one, so that another worktree, e.g. an older main, can be measured with the same client)
Prints, per message, how long its sender waited for the DATA reply and the NOOP round trips (p95, max).
"""

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tests.e2e.test_hardening as e2e
import tests.support.gateway as gateway_module
import tests.support.peers as peers
import tests.support.policies as policies
import tests.support.processes as processes
from tests.support.gateway import Line, start_gateway
from tests.support.messages import folded_subject, many_parts
from tests.support.peers import start_sink
from tests.support.policies import acme_to


def main() -> None:
    repo = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else processes.REPO
    for module in (gateway_module, peers, policies):  # serve, sink and the example rules of that checkout
        module.REPO = repo  # type: ignore[attr-defined]
    opened = Line.__init__

    def patient(self: Line, port: int) -> None:  # the old engine stalls for long: wait for it
        opened(self, port)
        self.sock.settimeout(600)

    Line.__init__ = patient  # type: ignore[method-assign]
    tmp = Path(tempfile.mkdtemp(prefix="noop-latency-"))
    procs: list[object] = []
    try:
        box = start_sink(tmp, procs)
        gateway = start_gateway(tmp, procs, acme_to(box.port), max_message_size=30 * 1024 * 1024)
        models = repo / "engine/policy/models"  # a package since the layout issue, one file before
        files = list(models.glob("*.py")) if models.is_dir() else [repo / "engine/policy/models.py"]
        sources = [path.read_text() for path in files]
        if any("max_junk_commands" in text for text in sources):  # (else unknown key)
            gateway.restart_with("command_timeout: 60", "command_timeout: 60, max_junk_commands: 1000000")
        words = folded_subject(6 * 1024 * 1024 // (len(e2e.LONG_WORD) + 3), e2e.LONG_WORD)
        for name, raw in (("words-6MB", words), ("parts-200k", many_parts(200_000))):
            latencies, reply, wait = e2e.noop_latencies_while_processing(gateway.port, raw)
            latencies.sort()
            p95 = latencies[len(latencies) * 95 // 100] * 1000
            print(f"{name:<11} reply={reply[:3]} sender waited {wait:6.2f} s  NOOPs {len(latencies):5d}"
                  f"  p95 {p95:6.0f} ms  max {latencies[-1] * 1000:7.0f} ms", flush=True)
    finally:
        for proc in reversed(procs):
            proc.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
