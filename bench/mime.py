"""Micro-benchmark for engine.mime.view.parse_message: prints µs per message.

Usage: python bench/mime.py [PATH ...]   (default: /tmp/msgs/msg-2k.eml /tmp/msgs/msg-50k.eml /tmp/msgs/eml-2k)

A file is parsed repeatedly (best of 5 runs). A directory is parsed once per file, in order: every
message has its own MIME boundary, so this also pays for the boundary regex the stdlib parser
compiles per new boundary, which a loop over one file hides (the ``re`` module caches it).
"""

import sys
import time
from pathlib import Path

from engine.mime.view import parse_message

DEFAULT_PATHS = ("/tmp/msgs/msg-2k.eml", "/tmp/msgs/msg-50k.eml", "/tmp/msgs/eml-2k")


def file_us(raw: bytes, budget_s: float = 1.0, repeats: int = 5) -> float:
    """Best-of-*repeats* mean time of parse_message(raw) in µs, each repeat running ~budget_s/repeats."""
    start = time.perf_counter()
    parse_message(raw)
    loops = max(1, int(budget_s / repeats / max(time.perf_counter() - start, 1e-6)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(loops):
            parse_message(raw)
        best = min(best, (time.perf_counter() - start) / loops)
    return best * 1e6


def corpus_us(raws: list[bytes]) -> float:
    """Mean time of parse_message in µs over *raws*, each parsed once."""
    start = time.perf_counter()
    for raw in raws:
        parse_message(raw)
    return (time.perf_counter() - start) / len(raws) * 1e6


def main(paths: list[str]) -> None:
    for path in map(Path, paths or DEFAULT_PATHS):
        if path.is_dir():
            raws = [file.read_bytes() for file in sorted(path.iterdir()) if file.is_file()]
            mean = sum(map(len, raws)) / len(raws)
            print(f"{path}: {len(raws)} messages of {mean:.0f} bytes, {corpus_us(raws):.1f} µs/message")
        else:
            raw = path.read_bytes()
            print(f"{path}: {len(raw)} bytes, {file_us(raw):.1f} µs/message")


if __name__ == "__main__":
    main(sys.argv[1:])
