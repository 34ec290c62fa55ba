"""Whatever a ``sciseg`` command starts ends with it, however the command is stopped.

A command's descendants (nnU-Net's spawn pools, the multiprocessing resource tracker, Dask's worker
processes, segmentation children) must not outlive it: a ``kill -9`` of ``sciseg finetune`` once left a
pool worker holding 400 MB, blocked forever. A process cannot act when it is SIGKILLed, so another
process watches it:

* **POSIX**: at start-up, before any thread or heavy import, the command makes sure it leads a process
  group of its own (``setpgid``; every descendant inherits the group unless it starts a session of its
  own) and forks a tiny **guardian** that leaves the group and waits for the command to end: on Linux
  through ``PR_SET_PDEATHSIG`` (the kernel signals the guardian when its parent dies, whatever the
  cause), on macOS through a kqueue ``NOTE_EXIT`` event, elsewhere by polling its parent pid. When the
  command has ended (normally, by a signal, or SIGKILL), the guardian sends SIGTERM to the group, waits
  for it to empty (at most :data:`GRACE_S`), SIGKILLs what is left, and exits.
* Where the command is part of a terminal's foreground job it stays in that group (leaving it would cut
  it off from Ctrl-C, which the terminal sends to the whole job); the guardian then follows the
  command's descendants by a snapshot taken every :data:`SNAPSHOT_INTERVAL_S` (the command is made a
  child subreaper on Linux, so descendants orphaned during its life stay in its tree) and ends those.
* A ``sciseg`` command started by another one inside the group that one guards (``$SCISEG_GUARDED_GROUP``)
  starts no guardian: the outer guardian covers it.
* **Windows**: the command puts itself in a Job Object with ``JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE``; its
  descendants join the job, and when the command ends (however) Windows closes the handle and ends every
  process of the job. Verified by reading Microsoft's documentation only (no Windows machine here).

Only the standard library is imported before the guardian forks (``psutil`` is imported by the guardian
when it must list processes).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Callable, Iterable

#: Set in the environment of the command and its descendants: the process group a guardian watches.
GROUP_VARIABLE = "SCISEG_GUARDED_GROUP"
#: How long the guardian waits after SIGTERM for the group to empty before SIGKILL, in seconds.
GRACE_S = 5.0
#: How often the guardian of a command in a terminal's job records the command's descendants, in seconds.
SNAPSHOT_INTERVAL_S = 0.5
#: The guardian's process name on Linux (``ps -e``, ``top``, psutil's ``name()``); its command line is the command's.
GUARDIAN_NAME = "sciseg-guardian"

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15
_PR_SET_CHILD_SUBREAPER = 36


@dataclass(frozen=True)
class GroupPlan:
    """How the command binds its descendants.

    ``mode``: ``"own-group"`` (the command leads its own process group, possibly after ``setpgid``),
    ``"terminal-job"`` (it stays in the terminal's foreground job; the guardian follows its descendants),
    ``"covered"`` (an enclosing sciseg command's guardian covers this group), ``"job-object"`` (Windows).
    ``leave_group``: call ``setpgid(0, 0)`` first.
    """

    mode: str
    leave_group: bool = False


def plan_binding(
    *, os_name: str, pid: int, pgid: int, guarded_group: str | None, terminal_foreground_pgid: int | None
) -> GroupPlan:
    """Decide how a command with these ids binds its descendants (pure; see the module docstring).

    ``terminal_foreground_pgid``: the foreground process group of the controlling terminal, or None
    when the command has no terminal.
    """
    if os_name == "nt":
        return GroupPlan("job-object")
    if guarded_group is not None and guarded_group == str(pgid):
        return GroupPlan("covered")
    if terminal_foreground_pgid is not None and terminal_foreground_pgid == pgid:
        return GroupPlan("terminal-job")
    return GroupPlan("own-group", leave_group=pgid != pid)


def _terminal_foreground_pgid() -> int | None:
    """The controlling terminal's foreground process group, or None (no terminal)."""
    for stream in (0, 1, 2):
        try:
            if os.isatty(stream):
                return os.tcgetpgrp(stream)
        except OSError:
            continue
    try:
        fd = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        return None
    try:
        return os.tcgetpgrp(fd)
    except OSError:
        return None
    finally:
        os.close(fd)


def bind_descendants() -> GroupPlan:
    """Make every descendant of this command end with it (call first thing in the command's main).

    Returns the plan applied. Never raises: a platform that refuses a step leaves the command running
    as before (the plan says what was tried).
    """
    if os.name == "nt":
        _join_kill_on_close_job()
        return GroupPlan("job-object")
    plan = plan_binding(os_name=os.name, pid=os.getpid(), pgid=os.getpgrp(),
                        guarded_group=os.environ.get(GROUP_VARIABLE),
                        terminal_foreground_pgid=_terminal_foreground_pgid())
    if plan.mode == "covered":
        return plan
    if plan.leave_group:
        try:
            os.setpgid(0, 0)
        except OSError:
            return GroupPlan("covered")  # not allowed here (a session leader): run as before
    if plan.mode == "terminal-job":
        _set_child_subreaper()
    os.environ[GROUP_VARIABLE] = str(os.getpgrp())
    _start_guardian(plan)
    return plan


def _set_child_subreaper() -> None:
    """Linux: descendants orphaned while this process lives are re-parented to it (kept in its tree)."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
        except (OSError, AttributeError):
            pass


def _start_guardian(plan: GroupPlan) -> None:
    command_pid, group = os.getpid(), os.getpgrp()
    try:
        pid = os.fork()
    except OSError:
        return
    if pid:
        return
    try:  # the guardian: never returns into the command's code
        _guard(command_pid, group, plan)
    finally:
        os._exit(0)


def _guard(command_pid: int, group: int, plan: GroupPlan) -> None:
    """The guardian's life: detach, wait for the command to end, then end its descendants."""
    os.setpgid(0, 0)  # out of the group it will signal
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_NAME, GUARDIAN_NAME.encode()[:15], 0, 0, 0)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(signum, signal.SIG_IGN)  # a terminal's Ctrl-C is the command's, not ours
    devnull = os.open(os.devnull, os.O_RDWR)
    for stream in (0, 1, 2):
        os.dup2(devnull, stream)  # never hold the command's pipes open (a reader waits for their EOF)
    os.closerange(3, _max_fd())
    snapshot: list[tuple[int, float]] = []
    if plan.mode == "terminal-job":
        snapshot = _follow_descendants(command_pid)
    else:
        _wait_for_exit(command_pid)
    if plan.mode == "terminal-job":
        end_processes(snapshot)
    else:
        end_group(group)


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 4096


def _wait_for_exit(command_pid: int) -> None:
    """Block until the process ``command_pid`` (this guardian's parent) has ended."""
    if sys.platform.startswith("linux"):
        import ctypes

        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0)
        if os.getppid() != command_pid:  # it ended before the request was in place
            return
        signal.sigwait({signal.SIGUSR1})
        return
    if sys.platform == "darwin":
        import select

        queue = select.kqueue()
        event = select.kevent(command_pid, filter=select.KQ_FILTER_PROC, flags=select.KQ_EV_ADD,
                              fflags=select.KQ_NOTE_EXIT)
        try:
            queue.control([event], 1, None)
        except (ProcessLookupError, OSError):
            pass  # already gone
        return
    while os.getppid() == command_pid:
        time.sleep(0.2)


def _follow_descendants(command_pid: int) -> list[tuple[int, float]]:
    """Record the command's descendants (pid, start time) until the command ends; the last record."""
    import psutil

    snapshot: list[tuple[int, float]] = []
    while os.getppid() == command_pid:
        try:
            snapshot = [(p.pid, p.create_time()) for p in psutil.Process(command_pid).children(recursive=True)
                        if p.pid != os.getpid()]
        except psutil.Error:
            break
        time.sleep(SNAPSHOT_INTERVAL_S)
    return snapshot


def is_guardian(process) -> bool:
    """True when the psutil ``process`` is a guardian (Linux names it; elsewhere it is a forked copy of its parent)."""
    import psutil

    try:
        if sys.platform.startswith("linux"):
            return process.name() == GUARDIAN_NAME
        parent = process.parent()
        return parent is not None and process.cmdline() == parent.cmdline() and process.pid != parent.pid
    except psutil.Error:
        return False


def group_members(group: int) -> list[int]:
    """The pids of the live (not zombie) processes of process group ``group``."""
    import psutil

    members = []
    for process in psutil.process_iter(["pid", "status"]):
        try:
            if process.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(process.pid) == group:
                members.append(process.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def end_group(group: int, grace_s: float = GRACE_S) -> None:
    """SIGTERM every process of ``group``, wait until it is empty (at most ``grace_s``), then SIGKILL the rest."""
    _terminate_then_kill(lambda signum: _signal_group(group, signum), lambda: bool(group_members(group)), grace_s)


def end_processes(snapshot: Iterable[tuple[int, float]], grace_s: float = GRACE_S) -> None:
    """End the recorded processes still alive (the same pid AND start time: never a recycled pid)."""
    import psutil

    def alive() -> list[psutil.Process]:
        processes = []
        for pid, started in snapshot:
            try:
                process = psutil.Process(pid)
                if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                    processes.append(process)
            except psutil.Error:
                continue
        return processes

    def send(signum: int) -> None:
        for process in alive():
            try:
                process.send_signal(signum)
            except psutil.Error:
                pass

    _terminate_then_kill(send, lambda: bool(alive()), grace_s)


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate_then_kill(send: Callable[[int], None], any_alive: Callable[[], bool], grace_s: float) -> None:
    send(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while any_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if any_alive():
        send(signal.SIGKILL)


# Windows: a Job Object that ends every process in it when its last handle (held by the command) closes.
_JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000
_JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS = 9
_job_handle: object | None = None


def _join_kill_on_close_job() -> bool:
    """Put this process (and so every descendant it starts) into a kill-on-close Job Object (Windows)."""
    global _job_handle
    try:
        import ctypes
        from ctypes import wintypes

        class IoCounters(ctypes.Structure):
            _fields_ = [(name, ctypes.c_ulonglong) for name in (
                "ReadOperationCount", "WriteOperationCount", "OtherOperationCount",
                "ReadTransferCount", "WriteTransferCount", "OtherTransferCount")]

        class BasicLimitInformation(ctypes.Structure):
            _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                        ("LimitFlags", wintypes.DWORD), ("MinimumWorkingSetSize", ctypes.c_size_t),
                        ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", wintypes.DWORD),
                        ("Affinity", ctypes.c_size_t), ("PriorityClass", wintypes.DWORD),
                        ("SchedulingClass", wintypes.DWORD)]

        class ExtendedLimitInformation(ctypes.Structure):
            _fields_ = [("BasicLimitInformation", BasicLimitInformation), ("IoInfo", IoCounters),
                        ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                        ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        kernel32.CreateJobObjectW.restype = wintypes.HANDLE
        kernel32.GetCurrentProcess.restype = wintypes.HANDLE
        job = kernel32.CreateJobObjectW(None, None)
        if not job:
            return False
        info = ExtendedLimitInformation()
        info.BasicLimitInformation.LimitFlags = _JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
        if not kernel32.SetInformationJobObject(wintypes.HANDLE(job), _JOB_OBJECT_EXTENDED_LIMIT_INFORMATION_CLASS,
                                                ctypes.byref(info), ctypes.sizeof(info)):
            return False
        if not kernel32.AssignProcessToJobObject(wintypes.HANDLE(job), wintypes.HANDLE(kernel32.GetCurrentProcess())):
            return False  # e.g. inside a job that forbids nesting (before Windows 8): run as before
        _job_handle = job  # kept open for the life of the process; closed by Windows when it ends
        return True
    except (OSError, AttributeError, ImportError):
        return False
