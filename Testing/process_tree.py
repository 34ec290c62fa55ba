"""What the test process's descendants are: the suite-wide orphan check and the kill-anywhere tests.

On Linux the pytest process makes itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): a process
whose parent dies is re-parented to pytest instead of init, so every process any test started, orphaned
or not, stays in pytest's tree where :func:`live_descendants` sees it.
"""

from __future__ import annotations

import ctypes
import multiprocessing.resource_tracker
import os
import sys
import time

import psutil

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def reap_zombies() -> None:
    """Collect the exit status of adopted children that have ended (they would stay zombies)."""
    for child in psutil.Process().children():
        try:
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            continue


def live_descendants(exclude: set[int] = frozenset()) -> list[psutil.Process]:
    """This process's live descendants (zombies reaped and left out), less ``exclude`` and our resource tracker."""
    reap_zombies()
    own_tracker = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
    alive = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.pid in exclude or process.pid == own_tracker or process.status() == psutil.STATUS_ZOMBIE:
                continue
            alive.append(process)
        except psutil.Error:
            continue
    return alive


def wait_until_gone(pids_or_test, timeout_s: float = 60.0) -> list[psutil.Process]:
    """Wait until no process of the given set (or no live descendant outside the set) is alive; what is left.

    ``pids_or_test``: a callable returning the processes that must end. The timeout is only a safety net.
    """
    deadline = time.monotonic() + timeout_s
    left = pids_or_test()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = pids_or_test()
    return left


def describe(processes: list[psutil.Process]) -> str:
    """One line per process: pid, parent, command line."""
    lines = []
    for process in processes:
        try:
            lines.append(f"pid {process.pid} (parent {process.ppid()}): {' '.join(process.cmdline())[:200]}")
        except psutil.Error:
            lines.append(f"pid {process.pid}: gone")
    return "\n".join(lines)
