"""Give the memory of a closed case back to the system (glibc's allocator keeps it otherwise).

Measured on the review server (``benchmarks/review_app.py``, ``Testing/test_review_memory.py``: 384x216x52
scans in a browser): the scene was emptied of a case's nodes on every change (72 nodes after each opening),
yet the resident memory grew by 25-50 MB per opening for the first openings (775 -> 919 MB over eight).
With ``malloc_trim(0)`` after each opening it stayed flat: the memory was freed but kept by glibc. Its
dynamic mmap threshold is the cause: once a large block allocated with mmap (an image, a labelmap, a
rendered view) is freed, the threshold rises to its size (up to 32 MB), so the next case's buffers of that
size come from the heap, whose free holes stay resident.

:func:`keep_large_buffers_in_mmap` fixes the threshold (``mallopt(M_MMAP_THRESHOLD)``, which also turns
the dynamic adjustment off): every buffer of 1 MiB or more is mapped on its own and unmapped when freed.
:func:`release_freed_memory` returns what is still free in the heaps (``malloc_trim(0)``, 0.1 ms) after a
case is closed. Both do nothing where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

M_MMAP_THRESHOLD = -3  # glibc's <malloc.h>
MMAP_THRESHOLD_BYTES = 1 << 20  # 1 MiB: a 4 M voxel scan's image (8 MB) and labelmaps (4 MB) are far above


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        library = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(library, "gnu_get_libc_version") or not hasattr(library, "malloc_trim"):
        return None  # musl, macOS: no such allocator behaviour to correct
    return library


@lru_cache(maxsize=1)
def keep_large_buffers_in_mmap() -> bool:
    """Allocate every block of ``MMAP_THRESHOLD_BYTES`` or more with mmap, for the whole process (once).

    Returns True when glibc accepted the setting.
    """
    library = _glibc()
    if library is None:
        return False
    return bool(library.mallopt(ctypes.c_int(M_MMAP_THRESHOLD), ctypes.c_int(MMAP_THRESHOLD_BYTES)))


def release_freed_memory() -> None:
    """Give glibc's free heap pages back to the system.

    No ``gc.collect()`` (80-200 ms here): the caller frees the case by reference counting first.
    """
    library = _glibc()
    if library is not None:
        library.malloc_trim(ctypes.c_size_t(0))
