"""A rater's note and flags on one case, kept beside the case until they are changed, and written into each export.

One file per rater and case, ``derivatives/labels/.notes/sub-X/[ses-Y/]anat/<stem>/<rater key>.json``
(:func:`..drafts.rater_key` names it), written whole (temporary file + rename)::

    {"Rater": "alice", "Date": "2026-12-02T22:10:03.120+00:00", "SourceSha256": "...",
     "Flags": ["artifact", "unsure"], "Note": "motion at C3"}

Flags are a closed set (:data:`FLAGS`: ``accept`` = accept as is, ``artifact``, ``unsure``); a note is plain text of
at most :data:`MAX_NOTE_CHARS` characters (control characters other than newline and tab removed). Anything else is
refused with one sentence (:class:`..scan.CaseRefused`). A note of another content of the scan (sha256) is not
shown: it was written about another image.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..training.export import _anat_relative, labels_folder
from ..volume import publish_file
from .drafts import rater_key
from .scan import CaseRefused, Scan

NOTES = ".notes"
#: The flags a rater can set, in display order, with the words the review app shows.
FLAGS: dict[str, str] = {"accept": "accept as is", "artifact": "artifact", "unsure": "unsure"}
MAX_NOTE_CHARS = 2000
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class CaseNote:
    """One rater's note on a case: flags (keys of :data:`FLAGS`, display order), free text, who and when (ISO 8601 UTC)."""

    rater: str
    flags: tuple[str, ...] = ()
    note: str = ""
    date: str = ""

    @property
    def empty(self) -> bool:
        return not self.flags and not self.note

    def sidecar(self) -> dict:
        """What an export's sidecar records: ``{"Flags": [...], "Note": "..."}``."""
        return {"Flags": list(self.flags), "Note": self.note}

    def describe(self) -> str:
        """A case list's words: ``alice: artifact, unsure - "motion at C3"``."""
        words = ", ".join(FLAGS[flag] for flag in self.flags)
        note = f'"{self.note[:60]}{"..." if len(self.note) > 60 else ""}"' if self.note else ""
        return f"{self.rater or 'unnamed'}: {' - '.join(part for part in (words, note) if part)}"


def checked_flags(flags) -> tuple[str, ...]:
    """The flags in :data:`FLAGS` order, duplicates dropped; :class:`CaseRefused` for any other value."""
    if isinstance(flags, str) or not all(isinstance(flag, str) for flag in flags):
        raise CaseRefused(f"flags must be a list of {', '.join(FLAGS)}; got {flags!r}.")
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise CaseRefused(f"unknown flag(s) {', '.join(repr(flag) for flag in unknown)}; a case's flags are "
                          f"{', '.join(FLAGS)}.")
    return tuple(flag for flag in FLAGS if flag in flags)


def checked_note(note) -> str:
    """The note as stored: stripped, control characters (but newline and tab) removed; :class:`CaseRefused` when too long."""
    if not isinstance(note, str):
        raise CaseRefused(f"a note is text; got {type(note).__name__}.")
    note = _CONTROL.sub("", note).strip()
    if len(note) > MAX_NOTE_CHARS:
        raise CaseRefused(f"a note has at most {MAX_NOTE_CHARS} characters; this one has {len(note)}.")
    return note


def notes_folder(root: Path, scan: Scan) -> Path:
    """``derivatives/labels/.notes/sub-X/[ses-Y/]anat/<stem>`` (subject, session and stem validated by the scan)."""
    return labels_folder(root) / NOTES / _anat_relative(scan.subject, scan.session) / scan.stem


def write_note(folder: Path, scan: Scan, rater: str, flags, note: str) -> CaseNote:
    """Publish the rater's note on the scan atomically; an empty note (no flag, no text) removes the file."""
    if not rater.strip():
        raise CaseRefused("type your name (Rater) before setting a flag or a note: they are kept under it.")
    record = CaseNote(rater.strip(), checked_flags(flags), checked_note(note),
                      _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"))
    final = folder / f"{rater_key(rater)}.json"
    if record.empty:
        final.unlink(missing_ok=True)
        return record
    folder.mkdir(parents=True, exist_ok=True)
    content = {"Rater": record.rater, "Date": record.date, "SourceSha256": scan.sha256, **record.sidecar()}
    handle, temporary = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=folder)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(content, stream, indent=2)
            stream.flush()
            os.fsync(stream.fileno())
        publish_file(temporary, final)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return record


def read_note(path: Path, sha256: str | None = None) -> CaseNote | None:
    """The note in ``path``; None when it is unreadable, malformed, or (``sha256`` given) about another image."""
    try:
        content = json.loads(Path(path).read_text())
        if sha256 is not None and content.get("SourceSha256") != sha256:
            return None
        return CaseNote(str(content["Rater"]), checked_flags(content.get("Flags", [])),
                        checked_note(content.get("Note", "")), str(content.get("Date", "")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CaseRefused):
        return None


def notes_in(folder: Path, sha256: str | None = None) -> list[CaseNote]:
    """Every rater's readable note in a case's notes folder, newest first (temporary files skipped)."""
    found = [read_note(path, sha256) for path in folder.glob("[!.]*.json")] if folder.is_dir() else []
    return sorted((note for note in found if note is not None), key=lambda note: note.date, reverse=True)
