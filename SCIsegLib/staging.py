"""Temporary files and all-or-nothing publishing of a set of output files.

Every file we write first goes to a hidden temporary beside its final name,
``.<final name>.sciseg-<host>-<pid>-<random>.part[.nii.gz]``, registered by the writer before a byte
is written. A *set* of files (the masks and sidecars of one input) is published in this order:

1. every file is complete under its temporary name;
2. the set's marker ``<stem>_sciseg_outputs.json`` (the list of files with their sha256 and bytes) is
   written to its own temporary name: this hidden file is the journal of the publication;
3. an earlier marker of the same stem is removed (its set stops being published before any of its files
   is replaced);
4. the files are renamed to their final names (atomic renames), then the marker last.

A set counts as written only when its marker exists and lists files that are there with the same bytes
(:func:`published_set`); readers and resume logic check that. A process killed at any moment leaves
either a complete set with its marker, or no marker and at most a journal, which the next run in that
folder (:func:`recover_folder`) finishes (every file still there: renamed and marked) or undoes (the
final files it had renamed are deleted), and the temporaries of dead processes are removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path

#: Suffix of the marker that publishes the outputs of one input: ``<stem>_sciseg_outputs.json``.
MARKER_SUFFIX = "_sciseg_outputs.json"

#: Temporaries left by another machine (shared file systems) are removed once this old, in seconds.
STALE_OTHER_HOST_S = 24 * 3600

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"^\.(?P<final>.+)\.sciseg-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[A-Za-z0-9_]+\.part(\.[A-Za-z.]+)?$")
_KEEP_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def new_temporary(final: Path, register: list[Path]) -> Path:
    """Create an empty hidden temporary beside ``final`` and append it to ``register`` before anything is
    written to it; the name carries this machine and process, so a later run knows when it is stale."""
    extension = next((s for s in _KEEP_SUFFIXES if final.name.lower().endswith(s)), "")
    handle, name = tempfile.mkstemp(
        prefix=f".{final.name}.sciseg-{_HOST}-{os.getpid()}-", suffix=f".part{extension}", dir=final.parent
    )
    register.append(Path(name))
    os.close(handle)
    return Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish(temporary: Path, final: Path) -> None:
    """Give a temporary the usual permissions (0666 minus umask) and rename it atomically to ``final``."""
    os.chmod(temporary, 0o666 & ~_umask())
    os.replace(temporary, final)


def _digest(path: Path) -> str:
    hasher = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            hasher.update(block)
    return hasher.hexdigest()


def marker_path(folder: Path, stem: str) -> Path:
    return folder / f"{stem}{MARKER_SUFFIX}"


def publish_set(folder: Path, stem: str, staged: list[tuple[Path, Path]], register: list[Path], info: dict) -> Path:
    """Publish complete temporaries ``(temporary, final)`` as one set, marker last (see the module text)."""
    files = {final.name: {"sha256": _digest(temporary), "bytes": temporary.stat().st_size} for temporary, final in staged}
    marker = marker_path(folder, stem)
    journal = new_temporary(marker, register)
    journal.write_text(json.dumps({"Complete": True, **info, "Files": files}, indent=2))
    marker.unlink(missing_ok=True)
    for temporary, final in staged:
        publish(temporary, final)
    publish(journal, marker)
    return marker


def published_set(folder: Path, stem: str, *, verify_sha256: bool = False) -> dict[str, Path] | None:
    """The files of ``stem``'s published set (final name -> path), or None when it is absent or incomplete."""
    marker = marker_path(folder, stem)
    try:
        listed = json.loads(marker.read_text())["Files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    paths: dict[str, Path] = {}
    for name, expected in listed.items():
        path = folder / name
        if Path(name).name != name or not path.is_file() or path.stat().st_size != expected["bytes"]:
            return None
        if verify_sha256 and _digest(path) != expected["sha256"]:
            return None
        paths[name] = path
    return paths


def _owner_gone(host: str, pid: int, path: Path) -> bool:
    if host != _HOST:
        try:
            return time.time() - path.stat().st_mtime > STALE_OTHER_HOST_S
        except OSError:
            return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover_folder(folder: Path) -> dict[str, int]:
    """Finish or undo publications interrupted in ``folder`` and delete the temporaries of dead processes.

    Returns counts: ``{"completed": sets finished, "undone": sets rolled back, "removed": temporaries deleted}``.
    Only our own hidden ``.sciseg-<host>-<pid>-`` temporaries are touched, never a file of a live process.
    """
    counts = {"completed": 0, "undone": 0, "removed": 0}
    try:
        names = os.listdir(folder)
    except OSError:
        return counts
    stale: list[tuple[Path, re.Match]] = []
    for name in names:
        match = _TEMPORARY.match(name)
        if match and _owner_gone(match["host"], int(match["pid"]), folder / name):
            stale.append((folder / name, match))
    for journal, match in stale:
        if match["final"].endswith(MARKER_SUFFIX):
            counts["completed" if _finish(folder, journal, match) else "undone"] += 1
    for path, _ in stale:
        try:
            path.unlink()
            counts["removed"] += 1
        except FileNotFoundError:
            pass
    return counts


def _finish(folder: Path, journal: Path, match: re.Match) -> bool:
    """Roll an interrupted publication forward when every file is there, else back; True when completed."""
    try:
        files: dict = json.loads(journal.read_text())["Files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # killed while writing the journal: nothing was renamed yet
    owner = f".sciseg-{match['host']}-{match['pid']}-"
    moves: list[tuple[Path, Path]] = []
    ready = True
    for name, expected in files.items():
        final = folder / name
        if final.is_file() and _digest(final) == expected["sha256"]:
            continue
        candidates = [p for p in folder.glob(f".{glob_escape(name)}{owner}*.part*") if _digest(p) == expected["sha256"]]
        if candidates:
            moves.append((candidates[0], final))
        else:
            ready = False
    if ready:
        for temporary, final in moves:
            publish(temporary, final)
        publish(journal, marker_path(folder, match["final"][: -len(MARKER_SUFFIX)]))
        return True
    for name, expected in files.items():
        final = folder / name
        if final.is_file() and _digest(final) == expected["sha256"]:
            final.unlink()
    return False


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", name)
