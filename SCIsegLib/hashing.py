"""sha256 of files, read in 1 MiB blocks (models, source images, exported labels)."""

from __future__ import annotations

import hashlib
import os
from typing import Callable


def file_sha256(path: str | os.PathLike[str], progress: Callable[[int, int], None] | None = None) -> str:
    """Hex sha256 of a file's bytes; ``progress`` gets (bytes read, file size) after every 1 MiB block."""
    digest = hashlib.sha256()
    total = os.path.getsize(path) if progress else 0
    done = 0
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
            if progress:
                done += len(block)
                progress(done, total)
    return digest.hexdigest()
