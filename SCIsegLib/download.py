"""HTTP(S) downloads that resume, restart cleanly and never leave a half file under the final name."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable

from .errors import CancelledError, DownloadError

CHUNK_BYTES = 1 << 16


def download_file(
    url: str,
    target: Path,
    *,
    progress: Callable[[int, int | None], None] | None = None,
    timeout_s: float = 60.0,
) -> Path:
    """Download ``url`` to ``target``.

    The bytes go to ``target + '.part'`` first. If a ``.part`` file exists from an interrupted
    download, the transfer resumes with an HTTP Range request; a server that ignores Range (200)
    or answers 416 makes it restart from zero. The file is renamed to ``target`` only once the
    number of bytes announced by the server has arrived.

    Args:
        url: http(s) address.
        target: final path of the file.
        progress: called with (bytes done, total bytes or None) after every chunk; a
            :class:`CancelledError` it raises stops the download and deletes the ``.part`` file.
        timeout_s: socket timeout in seconds.
    """
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
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length is not None else None
            done = offset
            try:
                with open(partial, "ab" if resumed else "wb") as handle:
                    while True:
                        block = response.read(CHUNK_BYTES)
                        if not block:
                            break
                        handle.write(block)
                        done += len(block)
                        if progress:
                            progress(done, total)
            except CancelledError:  # the progress callback's cancel: a cancelled download leaves nothing behind
                partial.unlink(missing_ok=True)
                raise
            except (OSError, urllib.error.URLError) as error:
                raise DownloadError(
                    f"the download of {url} broke off after {done} bytes ({error}); run the same command again to resume."
                ) from None
        if total is not None and done != total:
            raise DownloadError(
                f"the download of {url} stopped at {done} of {total} bytes; run the same command again to resume."
            )
        os.replace(partial, target)
        return target
    raise DownloadError(f"the server refused to resume {url}; delete {partial} and try again.")
