"""Who has a case open now: one lease file per case and review session, refreshed by a heartbeat.

``derivatives/labels/.leases/sub-X/[ses-Y/]anat/<stem>/<holder>.json`` (``holder``: 16 hex characters, one per
session, :func:`new_holder`), written whole (temporary file + rename) when the session opens the case and again at
each heartbeat (every :data:`HEARTBEAT_S` seconds), removed when it closes the case::

    {"Rater": "bob", "Host": "ws-12", "Pid": 4242, "Opened": 1764713400.1, "Heartbeat": 1764713460.3}

A lease is ignored (and removed by the next reader) when its heartbeat is older than :data:`STALE_S` seconds
(wall clock, seconds since the epoch), or at once when it was written on this host by a process that no longer
exists (a worker killed with ``kill -9``). Nothing here locks a case: another rater is told, never stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import secrets
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ..training.export import _anat_relative, labels_folder
from ..volume import publish_file
from .scan import CaseRefused, Scan

LEASES = ".leases"
HEARTBEAT_S = 20.0
STALE_S = 90.0
_HOLDER = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class Lease:
    """A session that has the case open: its holder id, rater, host, process id, and times (s since the epoch)."""

    holder: str
    rater: str
    host: str
    pid: int
    opened: float
    heartbeat: float

    def describe(self) -> str:
        """``bob (open since 21:50 UTC)``."""
        since = _dt.datetime.fromtimestamp(self.opened, _dt.timezone.utc).strftime("%H:%M")
        return f"{self.rater or 'an unnamed rater'} (open since {since} UTC)"


def new_holder() -> str:
    """A session's holder id: 16 random hex characters."""
    return secrets.token_hex(8)


def checked_holder(holder: str) -> str:
    if not isinstance(holder, str) or not _HOLDER.fullmatch(holder):
        raise CaseRefused(f"{holder!r} is not a review session's holder id (16 hex characters).")
    return holder


def lease_folder(root: Path, scan: Scan) -> Path:
    """``derivatives/labels/.leases/sub-X/[ses-Y/]anat/<stem>``."""
    return labels_folder(root) / LEASES / _anat_relative(scan.subject, scan.session) / scan.stem


def write_lease(folder: Path, holder: str, rater: str, opened: float | None = None, now: float | None = None) -> Lease:
    """Publish (or refresh: the heartbeat) this session's lease of the case, atomically."""
    now = time.time() if now is None else now
    lease = Lease(checked_holder(holder), rater.strip(), socket.gethostname(), os.getpid(),
                  now if opened is None else opened, now)
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{holder}.json"
    handle, temporary = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump({"Rater": lease.rater, "Host": lease.host, "Pid": lease.pid, "Opened": lease.opened,
                       "Heartbeat": lease.heartbeat}, stream)
        publish_file(temporary, final)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return lease


def remove_lease(folder: Path, holder: str) -> None:
    (folder / f"{checked_holder(holder)}.json").unlink(missing_ok=True)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, but not ours to signal
        return False
    return False


def _read(path: Path) -> Lease | None:
    try:
        content = json.loads(path.read_text())
        return Lease(path.stem, str(content["Rater"]), str(content["Host"]), int(content["Pid"]),
                     float(content["Opened"]), float(content["Heartbeat"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def live_leases(folder: Path, *, exclude: str | None = None, now: float | None = None) -> list[Lease]:
    """The sessions other than ``exclude`` that have the case open now, earliest first.

    Stale leases (heartbeat older than :data:`STALE_S`, or a dead process of this host) are skipped and removed.
    """
    now = time.time() if now is None else now
    host, found = socket.gethostname(), []
    for path in folder.glob("[!.]*.json") if folder.is_dir() else ():
        if not _HOLDER.fullmatch(path.stem) or path.stem == exclude:
            continue
        lease = _read(path)
        if lease is None:
            continue
        if now - lease.heartbeat > STALE_S or (lease.host == host and _process_gone(lease.pid)):
            path.unlink(missing_ok=True)
            continue
        found.append(lease)
    return sorted(found, key=lambda lease: lease.opened)


def others_sentence(leases: list[Lease]) -> str:
    """``also open in another session by bob (open since 21:50 UTC)``; empty when nobody else has it open."""
    if not leases:
        return ""
    return "also open in another session by " + ", ".join(lease.describe() for lease in leases)
