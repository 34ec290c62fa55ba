"""How a ``sciseg`` process learns it is cancelled: SIGINT, SIGTERM, or a cancel file (every platform).

One process-wide flag, set by

* SIGINT (Ctrl-C) or SIGTERM, from the moment :func:`install` ran (``python -m SCIsegLib`` runs it
  before importing anything else, so even a very early SIGTERM ends with exit code 130);
* the appearance of the file named by ``$SCISEG_CANCEL_FILE`` (checked every 0.1 s by a thread).
  The Slicer module's runner creates that file to cancel a child: no console and no signal needed,
  so it works on Windows, where a GUI process cannot send CTRL_BREAK_EVENT to a console-less child.

What the flag does depends on the phase:

* at start-up (interpreter, numpy, argument parsing) it is only recorded: raising inside an import
  would break it (numpy reports a cancelled import as a broken installation); :func:`checked` raises
  on entry when the flag is set;
* inside :func:`checked` (``main`` wraps every command in it) the next Python bytecode of the main
  thread raises :class:`~SCIsegLib.errors.CancelledError`, which ``main`` turns into exit code 130;
* inside :func:`cooperative` (``segment``, ``models install``) it only calls the registered callbacks
  (the segmentation's cancel token, checked between sliding-window tiles; the install's progress
  callback, checked between chunks): the command stops at its next check and removes what it started;
* a second SIGINT raises ``KeyboardInterrupt`` (the user insists).

A signal that arrives before the interpreter runs this module's :func:`install` (the first ~30 ms
of ``python -m SCIsegLib``) still ends the process with the signal's default action; the runner
therefore cancels with the cancel file first, which the child also reads when it starts.

Only the standard library is imported here, so installing it costs nothing at start-up.
"""

from __future__ import annotations

import _thread
import contextlib
import os
import signal
import threading
import time
from typing import Callable, Iterator

from .errors import CancelledError

#: Environment variable holding the path of the cancel file the child watches.
CANCEL_FILE_VARIABLE = "SCISEG_CANCEL_FILE"
#: How often the watcher thread looks for the cancel file, in seconds.
WATCH_INTERVAL_S = 0.1

_flag = threading.Event()
_callbacks: list[Callable[[], None]] = []
_modes: list[str] = []  # innermost last: "checked" (raise at once) or "cooperative" (callbacks only)
_installed = False


def cancelled() -> bool:
    """True once a cancel was requested (signal or cancel file)."""
    return _flag.is_set()


def raise_if_cancelled(message: str = "cancelled; no output was written.") -> None:
    """Raise :class:`CancelledError` when a cancel was requested."""
    if _flag.is_set():
        raise CancelledError(message)


def _handler(signum: int, frame: object) -> None:
    insists = signum == signal.SIGINT and _flag.is_set()
    _flag.set()
    for callback in list(_callbacks):
        callback()
    if insists:
        raise KeyboardInterrupt
    if _modes and _modes[-1] == "checked":
        raise CancelledError("cancelled; no output was written.")


def _watch(path: str) -> None:
    """Thread: when ``path`` appears, deliver SIGTERM's handler in the main thread (no real signal)."""
    while not _flag.is_set():
        if os.path.exists(path):
            _thread.interrupt_main(signal.SIGTERM)
            return
        time.sleep(WATCH_INTERVAL_S)


def install() -> None:
    """Route SIGINT, SIGTERM and ``$SCISEG_CANCEL_FILE`` to the cancel flag (idempotent; main thread only).

    Processes forked from this one afterwards start with Python's own signal handling (see :func:`_forked_child`).
    """
    global _installed
    if _installed:
        return
    _installed = True
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handler)
    if hasattr(os, "register_at_fork") and hasattr(signal, "pthread_sigmask"):
        os.register_at_fork(before=_before_fork, after_in_parent=_restore_mask, after_in_child=_forked_child)
    path = os.environ.get(CANCEL_FILE_VARIABLE)
    if path:
        threading.Thread(target=_watch, args=(path,), name="sciseg-cancel-file", daemon=True).start()


_CANCEL_SIGNALS = {signal.SIGINT, signal.SIGTERM}
_fork = threading.local()  # the forking thread's signal mask before the fork


def _before_fork() -> None:
    """SIGINT and SIGTERM wait (blocked) in the forking thread until the child has its own handling again."""
    _fork.mask = signal.pthread_sigmask(signal.SIG_BLOCK, _CANCEL_SIGNALS)


def _restore_mask() -> None:
    mask = getattr(_fork, "mask", None)
    if mask is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


def _forked_child() -> None:
    """In a process forked from the command (a ``fork`` multiprocessing pool: nnU-Net lists its dataset's files with
    one): SIGTERM ends it at once again and SIGINT raises ``KeyboardInterrupt``, as in any Python process.

    With the command's handler a forked worker would run Python code on SIGTERM, not end: ``Pool.terminate`` sends
    SIGTERM and waits for each worker, and a worker that gets it just before it blocks in C (waiting for the pool's
    task queue) never runs that code, and ``sciseg finetune`` waited for it forever. A SIGTERM that came during the
    fork was held blocked until now, so it ends the child too. The cancel flag is the command's.
    """
    global _installed
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _installed = False
        _modes.clear()
        _callbacks.clear()
    except ValueError:  # not the main thread of the main interpreter: nothing of ours was installed there
        pass
    finally:
        _restore_mask()


@contextlib.contextmanager
def checked() -> Iterator[None]:
    """Raise :class:`CancelledError` now if a cancel came during start-up, and at the moment one comes in the block."""
    raise_if_cancelled()
    _modes.append("checked")
    try:
        yield
    finally:
        _modes.pop()


@contextlib.contextmanager
def cooperative(callback: Callable[[], None] | None = None) -> Iterator[None]:
    """Inside this block a cancel only sets the flag and calls ``callback``; the code checks and stops itself.

    A cancel requested before the block calls ``callback`` at once, so the first check stops the work.
    """
    if callback is not None:
        _callbacks.append(callback)
        if _flag.is_set():
            callback()
    _modes.append("cooperative")
    try:
        yield
    finally:
        _modes.pop()
        if callback is not None:
            _callbacks.remove(callback)
