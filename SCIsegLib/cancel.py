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
    """Route SIGINT, SIGTERM and ``$SCISEG_CANCEL_FILE`` to the cancel flag (idempotent; main thread only)."""
    global _installed
    if _installed:
        return
    _installed = True
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _handler)
    path = os.environ.get(CANCEL_FILE_VARIABLE)
    if path:
        threading.Thread(target=_watch, args=(path,), name="sciseg-cancel-file", daemon=True).start()


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
