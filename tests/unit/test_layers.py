"""One import direction in the engine (DESIGN.md "Architecture"): policy, mime ← graph ← smtp,
relay ← service, cli; the store below smtp and relay, never above them.

Each package of `engine` has a rank; a module may import engine modules of its own rank or
lower, never higher, and the two transports (smtp, relay) never import each other. A new
package must be given its rank here: that is the moment to decide where it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "engine"

RANKS = {
    "aio": 0,
    "malloc": 0,  # glibc allocator setting of the long-running processes; imports nothing of the engine
    "policy": 0,
    "mime": 0,
    "dns": 1,  # the resolver and DNS-as-code records: policy settings only
    "graph": 2,
    "gitsync": 2,  # git fetch / checkout / symlink swap of policy releases; no engine imports
    "checks": 2,  # detection only; results become graph hits
    "store": 3,  # receives the graph's copy plans; never imports smtp or relay
    "metrics": 3,  # Prometheus counters the smtp and relay hot paths increment; scraped by admin
    "smtp": 4,
    "relay": 4,
    "testing": 5,  # the pytest-bdd step library drives the graph like serve does
    "admin": 5,
    "plan": 5,
    "sink": 5,
    "privileges": 5,  # serve --user: drops root; imports nothing of the engine
    "service": 6,
    "workers": 6,  # SMTP worker processes of `serve --workers N`; they run service's FrontEnd
    "cli": 7,
    "__main__": 8,
}
PEERS_THAT_MUST_NOT_MEET = {frozenset({"smtp", "relay"})}


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def _engine_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("engine."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine.") and not node.level:
            found.add(node.module)
    return found


def test_engine_imports_point_down_the_layers() -> None:
    wrong = []
    for path in sorted(ENGINE.rglob("*.py")):
        relative = path.relative_to(ENGINE)
        own = relative.parts[0].removesuffix(".py")
        if own == "__init__":
            continue
        assert own in RANKS, f"engine/{own}: give the new package a rank in tests/unit/test_layers.py"
        for module in _engine_imports(path):
            other = _package(module)
            assert other in RANKS, f"{module}: give the new package a rank in tests/unit/test_layers.py"
            if RANKS[other] > RANKS[own] or frozenset({own, other}) in PEERS_THAT_MUST_NOT_MEET:
                wrong.append(f"engine/{relative} imports {module}")
    assert wrong == []
