"""Hostile-input benchmark for engine.mime.view (issue 7 item 1): parse time of the shapes that used
to stall the event loop, at size n and 2n, and the growth ratio (≈2 = linear, ≈4 = quadratic).

Usage: python bench/mime_hostile.py [MB]   (default 6: the issue's 6 MB folded encoded-words)
Ratios, not absolute times, are the figure to compare (the machine is shared).
"""

import sys
import time
from collections.abc import Callable

from engine.mime.view import _Builder, parse_message


def folded_words(size: int) -> bytes:
    word = b"=?utf-8?b?" + b"QUJD" * 10 + b"?="
    return b"Subject: " + b"\r\n ".join([word] * (size // (len(word) + 3))) + b"\r\n\r\nbody\r\n"


def multipart(size: int) -> bytes:
    count = size // 10
    return b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + b"--b\r\n\r\nx\r\n" * count + b"--b--\r\n"


def unclosed_words(size: int) -> bytes:
    return b"Subject: " + b"=?a?q?x " * (size // 8) + b"\r\n\r\n"


def timed(function: Callable[[bytes], object], arg: bytes, repeats: int = 3) -> float:
    """Best of *repeats* runs (the machine is shared: the best run is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function(arg)
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    size = int(float(sys.argv[1] if len(sys.argv) > 1 else 6) * 1024 * 1024)
    print(f"{'shape':<22}{'n s':>9}{'2n s':>9}{'ratio':>8}  defects")
    for name, make in (("folded-words", folded_words), ("multipart", multipart), ("unclosed-words", unclosed_words)):
        small, large = make(size), make(2 * size)
        t1, t2 = timed(parse_message, small), timed(parse_message, large)
        print(f"{name:<22}{t1:>9.2f}{t2:>9.2f}{t2 / t1:>8.2f}  {','.join(parse_message(small).defects)}")

    def decode(raw: bytes) -> str:
        return _Builder().decode_words(raw.decode()[9:].partition("\r\n\r\n")[0])

    t1, t2 = timed(decode, folded_words(size)), timed(decode, folded_words(2 * size))
    print(f"{'decode_words (no cap)':<22}{t1:>9.2f}{t2:>9.2f}{t2 / t1:>8.2f}")


if __name__ == "__main__":
    main()
