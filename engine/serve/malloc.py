"""Large buffers go back to the operating system when freed (issue 7 item 10, memory budget).

glibc serves allocations of `M_MMAP_THRESHOLD` bytes or more with their own mmap, released by
munmap on free, but it raises that threshold to the size of each such block freed (up to 32 MiB)
and the heap trim threshold with it. After the first 25 MB message, the next ones came from the
heaps of the threads that allocated them and stayed there when freed: a message read in one
executor thread and its text decoded in another held twice the memory, for good. Setting the
threshold explicitly turns the adjustment off (mallopt(3)): a message buffer is always its own
mapping, and its memory is gone once it is freed. Blocks of a MiB cost one mmap/munmap pair each,
a few per large message.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Final

M_MMAP_THRESHOLD: Final = -3  # <malloc.h>
THRESHOLD: Final = 1024 * 1024


def return_large_buffers(threshold: int = THRESHOLD) -> bool:
    """Serve allocations of `threshold` bytes or more by mmap for the rest of the process; False
    where there is no glibc `mallopt` (musl, macOS), where the allocator behaves as it does."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
