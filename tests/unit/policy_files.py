"""A minimal valid policy written to a temporary directory, for the loader and validator tests."""

from __future__ import annotations

from pathlib import Path

GATEWAY = "hostname: mx.example.com\n"
ACME = """\
name: acme
domains: [acme.example]
routes:
  - {host: mail1.acme.internal, port: 25}
"""


def write_policy(root: Path, files: dict[str, str], *, base: bool = True) -> Path:
    """Write `files` (relative path -> text) under `root`, on top of a minimal valid policy."""
    everything = {"gateway.yaml": GATEWAY, "tenants/acme.yaml": ACME} if base else {}
    everything.update(files)
    for rel, text in everything.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root
