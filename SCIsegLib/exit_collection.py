"""A process that loaded torch, nnU-Net or OpenVINO ends without the interpreter's last garbage collections.

At exit CPython clears every module and runs full cyclic collections over all objects still alive: with torch
(its dynamo and sympy), nnU-Net and OpenVINO loaded that is millions of objects, and it took 2.4-2.8 s of a
process's end on a loaded 2-core machine, for nothing. :func:`gc.freeze` at exit moves every object to the
permanent generation, which those collections skip (0.4-0.5 s there). Everything else of a normal exit still
happens: the other atexit handlers (logging flushed, multiprocessing's children joined, ``weakref.finalize``
callbacks), objects freed by reference counting (open files flushed and closed) and the exit code; objects held
only in reference cycles are left to the operating system, as ``os._exit`` leaves everything.

A Dask worker's nanny waits 4 s for its process to end after a run, then kills it: the teardown alone could
exceed that (``Worker process still alive after 4.0 seconds, killing``).
"""

from __future__ import annotations

import atexit
import gc

_registered = False


def skip_collections_at_exit() -> None:
    """Freeze every object when this process exits (once per process; the handler runs after those added later)."""
    global _registered
    if not _registered:
        atexit.register(gc.freeze)
        _registered = True
