"""The files of a policy directory: which ones are policy files, reading them safely, the content hash.

Contract:
- `policy_files(root)`: `gateway.yaml` / `gateway.yml`, `tenants/*.yaml`, `lists/*.yaml`,
  `rules/*.yaml` (`.yml` too), as sorted relative POSIX paths; hidden files and anything that is
  not a regular file (or a symlink to one) are ignored.
- A policy file must lie inside the policy directory once symlinks are resolved: a symlink to
  another file of the directory works, one that leads outside it (the file itself, or its
  `tenants/`-style directory) is refused by `read_policy_text` and never read. The directory
  itself may be a symlink (deploys switch `policies -> releases/N`): containment is judged
  against its resolved path.
- `read_policy_text` reads at most `MAX_POLICY_FILE_BYTES` (+1, to notice a larger file) and
  decodes UTF-8 with universal newlines (CRLF and CR become LF); it returns the text or a
  `Problem` at FILE:1:1, never raises.
- `content_hash(root, files)` is a sha256 over (relative path, length, bytes) of each file in
  sorted path order, read in chunks: identical trees hash identically on any machine. A file
  that leads outside the directory contributes its resolved path instead of its bytes.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from engine.policy.problem import Problem

GATEWAY_FILES = ("gateway.yaml", "gateway.yml")
KIND_DIRS = ("tenants", "lists", "rules")
YAML_SUFFIXES = (".yaml", ".yml")
# The largest policy file read: far above any real policy (the 10,000-rule benchmark is 5 MB in
# all), far below what would exhaust memory while parsing.
MAX_POLICY_FILE_BYTES = 16 * 1024 * 1024
_HASH_CHUNK = 1 << 20


def policy_files(root: Path) -> list[str]:
    """Relative POSIX paths of the policy files under `root`, sorted."""
    found: list[str] = [name for name in GATEWAY_FILES if (root / name).is_file()]
    for kind in KIND_DIRS:
        directory = root / kind
        if not directory.is_dir():
            continue
        for child in directory.iterdir():
            if child.suffix in YAML_SUFFIXES and not child.name.startswith(".") and child.is_file():
                found.append(f"{kind}/{child.name}")
    return sorted(found)


def outside_target(root: Path, rel: str) -> Path | None:
    """Where `root/rel` really is when symlinks lead it outside `root` (resolved); None when inside."""
    try:
        target = (root / rel).resolve()
        return None if target.is_relative_to(root.resolve()) else target
    except (OSError, RuntimeError):  # a symlink loop: reading it will fail and say so
        return None


def read_policy_text(root: Path, rel: str) -> str | Problem:
    """The UTF-8 text of the policy file `root/rel`, or the Problem (at FILE:1:1) why it cannot be used."""
    outside = outside_target(root, rel)
    if outside is not None:
        return Problem(
            "error",
            rel,
            1,
            1,
            f"symlink to {outside}, outside the policy directory: policy files must lie inside it",
        )
    try:
        with (root / rel).open("rb") as stream:
            data = stream.read(MAX_POLICY_FILE_BYTES + 1)
    except OSError as exc:
        return Problem("error", rel, 1, 1, f"cannot read: {exc.strerror or exc}")
    if len(data) > MAX_POLICY_FILE_BYTES:
        return Problem(
            "error",
            rel,
            1,
            1,
            f"file too large: a policy file may hold at most {MAX_POLICY_FILE_BYTES // (1024 * 1024)} MiB",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Problem("error", rel, 1, 1, f"not UTF-8 text: {exc.reason} at byte {exc.start}")
    return text.replace("\r\n", "\n").replace("\r", "\n")


def content_hash(root: Path, files: Sequence[str]) -> str:
    """sha256 over (relative path, length, bytes) of each file, in sorted path order."""
    digest = hashlib.sha256()
    for rel in sorted(files):
        outside = outside_target(root, rel)
        if outside is not None:  # refused by the loader, never read: its target stands for it
            digest.update(f"{rel}\0outside\0{outside}\0".encode())
            continue
        with (root / rel).open("rb") as stream:
            digest.update(f"{rel}\0{os.fstat(stream.fileno()).st_size}\0".encode())
            while chunk := stream.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
