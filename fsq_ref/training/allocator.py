"""Keep freed memory in the process instead of handing it back to the OS: a CPU speed-up for training steps.

XLA on the CPU allocates every intermediate buffer of a step with `malloc` and frees it when the step ends. glibc's
defaults return large freed blocks to the kernel (buffers over the mmap threshold are unmapped, the top of each heap
is trimmed, and every worker thread gets an arena of its own whose spare heaps are deleted), so the next step faults
the same memory back in page by page: about 77,000 page faults (300 MB zeroed by the kernel) in each MaskGIT
training step of the fashion-mnist preset, a quarter of its time. With one arena, no trimming and a 1 GiB mmap
threshold the process keeps its peak footprint and reuses it; the step then has no page faults.

`keep_freed_memory` must run before JAX starts its CPU backend (its worker threads pick their arenas when they first
allocate); the `fsq` command line calls it first thing. Library users can call it themselves; set FSQ_MALLOC=system
to leave the allocator alone. It does nothing where the C library is not glibc (macOS, musl).
"""

import ctypes
import ctypes.util
import os

# mallopt's parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

MMAP_THRESHOLD = 1 << 30  # blocks above 1 GiB still get their own mapping (and go back to the OS when freed)


def keep_freed_memory() -> bool:
    """Configure glibc's malloc to keep and reuse freed memory; True if it was configured."""
    if os.environ.get("FSQ_MALLOC") == "system":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no C library found, or one without mallopt
        return False
    settings = ((M_ARENA_MAX, 1), (M_TRIM_THRESHOLD, 2**31 - 1), (M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return all(mallopt(param, value) == 1 for param, value in settings)
