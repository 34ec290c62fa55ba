"""HTTP(S) downloads that resume, restart cleanly and never leave a half file under the final name."""

from __future__ import annotations

import http.client
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .errors import CancelledError, DownloadError

CHUNK_BYTES = 1 << 16
#: The largest download accepted (a SCIseg release zip is a few hundred MB): announced or streamed beyond it, refused.
MAX_DOWNLOAD_BYTES = 2 * 1024**3
#: Free space kept on the disk beyond an announced download (the zip is unpacked next to it).
DISK_MARGIN_BYTES = 64 * 1024**2


def check_free_space(folder: Path, needed_bytes: int, what: str) -> None:
    """Raise :class:`DownloadError` when ``folder``'s disk has less than ``needed_bytes`` + a margin free."""
    free = shutil.disk_usage(folder).free
    if needed_bytes + DISK_MARGIN_BYTES > free:
        raise DownloadError(f"{what} needs {needed_bytes / 1024**2:.0f} MB but {folder} has {free / 1024**2:.0f} MB free; "
                            "free some space and try again.")


def download_file(
    url: str,
    target: Path,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    timeout_s: float = 60.0,
    verify: Callable[[Path], None] | None = None,
    max_bytes: int | None = None,
) -> Path:
    """Download ``url`` to ``target``.

    The bytes go to ``target + '.part'`` first. If a ``.part`` file exists from an interrupted
    download, the transfer resumes with an HTTP Range request; a server that ignores Range (200)
    or answers 416 makes it restart from zero. The file is renamed to ``target`` only once the
    number of bytes announced by the server (``Content-Length``, or the total of ``Content-Range``)
    has arrived and ``verify`` accepts it. A server that announces no size cannot be trusted to have
    sent everything: then ``verify`` is the only judge, and a file it refuses is deleted (it cannot
    be resumed without a known size).

    Args:
        url: http(s) address.
        target: final path of the file.
        progress: called with (bytes done, total bytes or None) after every chunk; a
            :class:`CancelledError` it raises stops the download and deletes the ``.part`` file.
        timeout_s: socket timeout in seconds.
        verify: raises ``DownloadError`` or ``ValueError`` when the received file is not usable
            (e.g. a zip without its central directory); called before the rename.
        max_bytes: the largest file accepted (default :data:`MAX_DOWNLOAD_BYTES`): a larger announced size is
            refused before any byte is written, a stream that grows past it is stopped and deleted. An announced
            size is also compared with the free space of ``target``'s disk.
    """
    limit = max_bytes if max_bytes is not None else MAX_DOWNLOAD_BYTES
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    for attempt in range(2):  # the second attempt restarts from zero after a refused resume
        offset = partial.stat().st_size if partial.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "SCIseg"})
        if offset:
            request.add_header("Range", f"bytes={offset}-")
        try:
            response = urllib.request.urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as error:
            if error.code == 416 and offset and attempt == 0:
                partial.unlink()
                continue
            raise DownloadError(f"downloading {url} failed: HTTP {error.code} {error.reason}.") from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise DownloadError(f"cannot reach {url} ({reason}); check the network or download the zip by hand.") from None
        with response:
            resumed = offset > 0 and response.status == 206
            if not resumed:
                offset = 0
            total = _announced_total(response.headers, offset if resumed else 0)
            if total is not None and total > limit:
                partial.unlink(missing_ok=True)
                raise DownloadError(f"{url} announces {total / 1024**2:.0f} MB, more than the {limit / 1024**2:.0f} MB a "
                                    "model download may take; nothing was written.")
            if total is not None:
                check_free_space(target.parent, total - offset, f"the download of {url}")
            done = offset
            try:
                with open(partial, "ab" if resumed else "wb") as handle:
                    while True:
                        block = response.read(CHUNK_BYTES)
                        if not block:
                            break
                        done += len(block)
                        if done > limit:
                            raise _TooLarge()
                        handle.write(block)
                        if progress:
                            progress(done, total)
            except CancelledError:  # the progress callback's cancel: a cancelled download leaves nothing behind
                partial.unlink(missing_ok=True)
                raise
            except _TooLarge:
                partial.unlink(missing_ok=True)
                raise DownloadError(f"{url} sent more than the {limit / 1024**2:.0f} MB a model download may take; "
                                    "the download was stopped and deleted.") from None
            except (OSError, urllib.error.URLError, http.client.HTTPException) as error:
                raise DownloadError(
                    f"the download of {url} broke off after {done} bytes ({error}); run the same command again to resume."
                ) from None
        if total is not None and done != total:
            if done > total:
                partial.unlink(missing_ok=True)
                raise DownloadError(f"the server sent {done} bytes for {url} but announced {total}; the file was deleted, try again.")
            raise DownloadError(
                f"the download of {url} stopped at {done} of {total} bytes; run the same command again to resume."
            )
        if verify is not None:
            try:
                verify(partial)
            except (DownloadError, ValueError) as error:
                partial.unlink(missing_ok=True)
                size = "its size was announced" if total is not None else "the server did not announce its size"
                raise DownloadError(
                    f"the download of {url} is not usable ({error}; {size}); the file was deleted, try again.") from None
        elif total is None and done == 0:
            partial.unlink(missing_ok=True)
            raise DownloadError(f"the server sent nothing for {url}; try again later.")
        os.replace(partial, target)
        return target
    raise DownloadError(f"the server refused to resume {url}; delete {partial} and try again.")


class _TooLarge(Exception):
    """The stream grew past the download limit."""


def _announced_total(headers, offset: int) -> int | None:
    """Total size in bytes announced by the server: ``Content-Range``'s total, else offset + ``Content-Length``."""
    content_range = headers.get("Content-Range") or ""
    if "/" in content_range and content_range.rsplit("/", 1)[1].strip().isdigit():
        return int(content_range.rsplit("/", 1)[1])
    length = headers.get("Content-Length")
    if length is None or not length.strip().isdigit():
        return None
    return offset + int(length)
