"""Which processes the tests started, found by a mark in their environment (inherited by every descendant).

pytest sets :data:`MARK_VARIABLE` in its own environment when the session starts, so every process any
test starts, and everything those start (orphans included: a process keeps its environment when its parent
dies), carries the session's mark. A test that needs its own processes only passes its own mark to the
command it starts. Nothing here waits on or reaps a process (that would steal the exit status a test's
``Popen.wait`` expects).
"""

from __future__ import annotations

import multiprocessing.resource_tracker
import os
import time
import uuid
from typing import Callable

import psutil

MARK_VARIABLE = "SCISEG_TEST_PROCESS_MARK"


def new_mark() -> str:
    """A fresh mark (to put in a command's environment as :data:`MARK_VARIABLE`)."""
    return uuid.uuid4().hex


def marked_processes(mark: str) -> list[psutil.Process]:
    """The live (not zombie) processes, other than this one and its resource tracker, that carry ``mark``."""
    own = {os.getpid(), getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)}
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid in own or process.status() == psutil.STATUS_ZOMBIE:
                continue
            if process.environ().get(MARK_VARIABLE) == mark:
                found.append(process)
        except psutil.Error:
            continue
    return found


def wait_until_gone(find: Callable[[], list], timeout_s: float = 60.0) -> list:
    """Wait until ``find()`` returns nothing; what it last returned. The timeout is only a safety net."""
    deadline = time.monotonic() + timeout_s
    left = find()
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = find()
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
