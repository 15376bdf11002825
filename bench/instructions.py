"""Instructions per message for the full evaluation path, counted by valgrind (repeatable on a busy
machine, unlike wall-clock time): the worked example policy (policies/), a 2 KB and a 50 KB
message, MAIL + RCPT + parse + DATA for one tenant, as serve runs it.

Usage:  python bench/instructions.py [REPO ...]      # REPO: a checkout to measure (default: this one)
It runs each REPO twice under `valgrind --tool=callgrind` (0 and N messages) and prints the
difference divided by N, so start-up and policy loading are not counted. Comparing a checkout of
an older commit with this one gives the before/after ratio of a change.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
N = 200
CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from engine.graph.build.compiler import load_graph
from engine.mime.view import parse_message
from engine.graph.transaction import Evaluation
sys.path.insert(0, str(Path(sys.argv[1]) / "bench"))
from graph import make_message
graph = load_graph(Path(sys.argv[1]) / "policies").graph
raw = make_message(int(sys.argv[3]), 1)
for _ in range(int(sys.argv[2])):
    if hasattr(graph, "begin"):
        evaluation = Evaluation.begin(graph, "192.0.2.1", "client.example")
        evaluation.mail("alice.martin@example.com")
        evaluation.rcpt("bob.jones@acme.example")
        evaluation.data(parse_message(raw))
    else:  # checkouts before the Evaluation object (issue 6)
        graph.mail("192.0.2.1", "alice.martin@example.com")
        graph.rcpt("192.0.2.1", "alice.martin@example.com", "bob.jones@acme.example")
        graph.data(client_ip="192.0.2.1", mail_from="alice.martin@example.com",
                   recipients={"acme": ["bob.jones@acme.example"]}, view=parse_message(raw))
"""


def instructions(repo: Path, count: int, size: int) -> int:
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", CHILD,
         str(repo), str(count), str(size)],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"Collected : (\d+)", done.stderr)
    assert match, done.stderr[-2000:]
    return int(match.group(1))


def main() -> None:
    repos = [Path(arg).resolve() for arg in sys.argv[1:]] or [HERE]
    results: dict[tuple[Path, int], float] = {}
    for size in (2048, 51200):
        for repo in repos:
            per_message = (instructions(repo, N, size) - instructions(repo, 0, size)) / N
            results[(repo, size)] = per_message
            print(f"{repo}  {size // 1024} KB: {per_message / 1e6:.3f} M instructions per message", flush=True)
    if len(repos) > 1:
        for size in (2048, 51200):
            base = results[(repos[0], size)]
            for repo in repos[1:]:
                print(f"# ratio {repo.name}/{repos[0].name} ({size // 1024} KB): {results[(repo, size)] / base:.3f}")


if __name__ == "__main__":
    main()
