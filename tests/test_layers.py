"""One import direction in the engine (DESIGN.md "Architecture"): policy, mime ← graph ← smtp,
relay ← service, cli; the store below smtp and relay, never above them.

Each package of `engine` has a rank; a module may import engine modules of its own rank or
lower, never higher, and the two transports (smtp, relay) never import each other. A new
package must be given its rank here: that is the moment to decide where it sits.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.processes import REPO

ENGINE = REPO / "engine"

RANKS = {
    "policy": 0,
    "mime": 0,
    "serve.aio": 0,  # the event loop choice (uvloop); imports nothing of the engine, the relay child uses it too
    "serve.malloc": 0,  # glibc allocator setting of the long-running processes (serve and its relay child)
    "dkim": 1,  # canonicalisation, keys, verification, the dkimpy patch: used by the check and by signing
    "dns": 1,  # the serving resolver: policy settings only
    "graph": 2,  # the filter graph, its once-per-policy build, the per-message evaluation, replays
    "checks": 2,  # detection only; results become graph hits
    "dns_as_code": 2,  # the records each tenant domain must publish, rendered and compared with live DNS
    "store": 3,  # receives the graph's copy plans; never imports smtp or relay
    "metrics": 3,  # Prometheus counters the smtp and relay hot paths increment; scraped by admin
    "smtp": 4,
    "relay": 4,
    "gitops": 5,  # the GitOps wing: plan, the pytest-bdd plugin, promote's YAML edits; drives the graph like serve
    "admin": 5,
    "serve": 6,  # the serve process: front end, SMTP workers, relay child, git sync, privilege drop
    "cli": 7,
    "__main__": 8,
}
PEERS_THAT_MUST_NOT_MEET = {frozenset({"smtp", "relay"})}


def _ranked(module: str) -> str:
    """The RANKS key of an engine module: its own `package.module` entry if it has one, else its package."""
    parts = module.split(".")[1:]
    return ".".join(parts[:2]) if ".".join(parts[:2]) in RANKS else parts[0]


def _engine_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("engine."))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("engine.") and not node.level:
            for alias in node.names:  # `from engine.serve import aio` imports the module engine.serve.aio
                submodule = f"{node.module}.{alias.name}"
                is_module = (ENGINE.parent / (submodule.replace(".", "/") + ".py")).exists()
                found.add(submodule if is_module else node.module)
    return found


def test_engine_imports_point_down_the_layers() -> None:
    wrong = []
    for path in sorted(ENGINE.rglob("*.py")):
        relative = path.relative_to(ENGINE)
        if relative.parts == ("__init__.py",):
            continue
        own = _ranked("engine." + ".".join(relative.with_suffix("").parts))
        assert own in RANKS, f"engine/{own}: give the new package a rank in tests/test_layers.py"
        for module in _engine_imports(path):
            other = _ranked(module)
            assert other in RANKS, f"{module}: give the new package a rank in tests/test_layers.py"
            if RANKS[other] > RANKS[own] or frozenset({own, other}) in PEERS_THAT_MUST_NOT_MEET:
                wrong.append(f"engine/{relative} imports {module}")
    assert wrong == []


def _module_name(path: Path) -> str:
    parts = path.relative_to(ENGINE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_two_modules_import_each_other() -> None:
    """Not even lazily or under TYPE_CHECKING: a pair that needs each other is one module, or a third holds the seam."""
    imports = {_module_name(path): _engine_imports(path) for path in ENGINE.rglob("*.py")}
    circles = sorted(
        f"{a} <-> {b}" for a, targets in imports.items() for b in targets if a < b and a in imports.get(b, set())
    )
    assert circles == []
