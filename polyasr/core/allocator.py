"""Large buffers in mappings of their own, so that freeing one gives its memory back.

glibc serves a block of at least its *mmap threshold* from a mapping of its
own, returned to the system when the block is freed; smaller blocks come from
heaps that shrink only from the top. The threshold starts at 128 KiB but, by
default, rises to the size of every large block freed (up to 32 MiB). After
the first decodes have freed blocks of a few MB, a long dictation's steady
stream of such buffers (audio windows, decode inputs, torch's tensors on the
CPU), made on one thread and freed on another, is served from the heaps and
leaves holes there that stay resident: the CUDA server grew by several MB per
minute of dictation, and never gave them back. Fixing the threshold at its
starting value keeps every large buffer in its own mapping.

The CUDA entry point sets it; MLX allocates and frees large buffers on every
call and keeps its own cache, and runs on macOS, whose allocator is not glibc.
An operator's ``MALLOC_MMAP_THRESHOLD_`` is left to win, and where the C
library has no ``mallopt`` nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's own starting value


def keep_large_buffers_mapped(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold at ``threshold`` bytes; whether it was set."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
