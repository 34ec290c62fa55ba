"""Names from users that become paths: validated, and the path they make checked to stay in its folder."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError

_BIDS_LABEL = re.compile(r"^[A-Za-z0-9]+$")
_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def bids_label(value: str, what: str) -> str:
    """A BIDS entity label (``01`` of ``sub-01``): letters and digits only, as BIDS requires."""
    if not _BIDS_LABEL.match(value or ""):
        raise InputError(f"the {what} label {value!r} is not a BIDS label; use letters and digits only (e.g. 01).")
    return value


def plain_name(value: str, what: str) -> str:
    """A file or folder name: letters, digits, '_', '.', '+', '-', not starting with a dot; no separators."""
    if not _FILE_NAME.match(value or "") or ".." in value:
        raise InputError(f"the {what} {value!r} cannot be used as a file name; use letters, digits, '_' and '-'.")
    return value


def contained(path: Path, root: Path, what: str) -> Path:
    """``path`` when it resolves inside ``root`` (links followed); else an InputError."""
    resolved, base = Path(path).resolve(), Path(root).resolve()
    if resolved != base and base not in resolved.parents:
        raise InputError(f"the {what} would be written to {resolved}, outside {base}; check the names given.")
    return path
