"""``main`` (one run of ``sciseg``: parse, dispatch, turn errors into exit codes) and ``console_main``."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback

from .. import cancel
from ..exit_collection import skip_collections_at_exit
from ..errors import CancelledError, DownloadError, InputError, SCIsegError
from . import cohort, learn, measure, review, segment
from .common import EXIT_CANCELLED, EXIT_INPUT, EXIT_INTERNAL, JsonLines
from .parser import build_parser


#: Subcommand -> runner.
HANDLERS = {**segment.HANDLERS, **measure.HANDLERS, **learn.HANDLERS, **cohort.HANDLERS, **review.HANDLERS}
#: The runners that also take the JSON-lines event writer (None unless ``--progress jsonl``).
TAKE_EVENTS = frozenset({"segment", "models", "run"})


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sciseg`` and ``python -m SCIsegLib``; returns the exit code."""
    args = build_parser().parse_args(argv)
    jsonl = getattr(args, "progress", None) == "jsonl"
    events = JsonLines(sys.stdout) if jsonl else None
    # In jsonl mode stdout carries only events: anything a library prints goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if jsonl else contextlib.nullcontext()
    try:
        with redirect, cancel.checked():
            if args.command in TAKE_EVENTS:
                return HANDLERS[args.command](args, events)
            return HANDLERS[args.command](args)
    except CancelledError as error:
        _report(events, "cancelled", str(error))
        return EXIT_CANCELLED
    except (InputError, DownloadError) as error:
        _report(events, "error", str(error), kind="input")
        return EXIT_INPUT
    except (SCIsegError, OSError, MemoryError) as error:
        sentence = _file_error_sentence(error) if isinstance(error, OSError) else None
        if sentence is not None:  # a wrong path, a file where a folder goes, no rights, a full disk: the user's to fix
            _report(events, "error", sentence, kind="input")
            return EXIT_INPUT
        if args.verbose:
            traceback.print_exc()
        _report(events, "error", f"{error}" + ("" if args.verbose else " (run with --verbose for details)"), kind="internal")
        return EXIT_INTERNAL
    except Exception as error:  # noqa: BLE001 - last resort: one sentence, the traceback only on request
        if args.verbose:
            traceback.print_exc()
        name = type(error).__name__
        _report(events, "error", f"internal error ({name}: {error}); run with --verbose for the traceback.", kind="internal")
        return EXIT_INTERNAL


#: errno of file-system errors the user can fix (a wrong path, a file where a folder goes, rights, space).
_USER_ERRNO = {
    errno.ENOENT: "no such file or folder; check the path",
    errno.EISDIR: "is a folder where a file is needed; give a file",
    errno.ENOTDIR: "a file stands where a folder is needed; give a folder",
    errno.EEXIST: "a file stands where a folder is needed; give a folder",
    errno.EACCES: "permission denied; choose a file or folder you can read and write",
    errno.EPERM: "operation not permitted; choose a file or folder you can read and write",
    errno.EROFS: "the file system is read-only; write elsewhere",
    errno.ENOSPC: "no space left on the disk; free some space and run again",
    errno.ENAMETOOLONG: "the name is too long; use a shorter path",
}


def _file_error_sentence(error: OSError) -> str | None:
    """One sentence for a file-system error caused by the user's paths or disk, None for anything else."""
    reason = _USER_ERRNO.get(error.errno or -1)
    if reason is None:
        return None
    where = error.filename if error.filename is not None else "a file"
    return f"{where}: {reason}."


def _report(events: JsonLines | None, kind_of_event: str, message: str, kind: str | None = None) -> None:
    sys.stderr.write(f"sciseg: {message}\n")
    if events is not None:
        payload = {"event": kind_of_event, "message": message}
        if kind:
            payload["kind"] = kind
        events(payload)


def console_main() -> None:
    """``sciseg`` and ``python -m SCIsegLib``: run :func:`main` and exit with its code.

    A cancelled run leaves nnU-Net's tile-feeding thread (and torch's workers) behind; letting the
    interpreter tear them down can abort the process ("terminate called without an active exception"),
    so after a cancel the process ends at once, its outputs flushed (nothing else is pending: every
    file is written atomically and temporary files are removed before this point).
    SIGINT, SIGTERM and ``$SCISEG_CANCEL_FILE`` are routed by :mod:`SCIsegLib.cancel` (exit code 130).
    Any other end skips the interpreter's last garbage collections (:mod:`SCIsegLib.exit_collection`).
    """
    cancel.install()
    skip_collections_at_exit()
    try:
        code = main()
    except CancelledError as error:  # cancelled before main's own handling (start-up, argument parsing)
        sys.stderr.write(f"sciseg: {error}\n")
        code = EXIT_CANCELLED
    if code == EXIT_CANCELLED or _command_of(sys.argv[1:]) in QUICK_EXIT_COMMANDS:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


#: Commands that end at once after their last output (no interpreter teardown): tearing torch, OpenVINO and
#: nnU-Net down took 1-4 s of a cold ``sciseg segment`` on a loaded 2-core machine, for nothing (every output
#: is published and closed by then, and a segmentation starts no process that needs a clean exit).
QUICK_EXIT_COMMANDS = frozenset({"segment"})


def _command_of(argv: list[str]) -> str | None:
    """The subcommand named in ``argv`` (the first word that is not an option), or None."""
    return next((word for word in argv if not word.startswith("-")), None)
