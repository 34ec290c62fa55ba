"""``sciseg review``: check the inputs and the bind rule, print the address (with the token once), run the front.

The front (:mod:`front`) gives every browser tab its own session (worker process); see :mod:`launcher`.
"""

from __future__ import annotations

import errno
import importlib.util
from pathlib import Path
from urllib.parse import quote

from ..errors import InputError
from .auth import TOKEN_ENVIRONMENT, access_token
from .launcher import DEFAULT_IDLE_MINUTES, DEFAULT_MAX_SESSIONS


def review_url(host: str, port: int, token: str | None) -> str:
    """The address a rater opens; the token travels as the ``secret`` query parameter (wslink's hello)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?secret={quote(token, safe='')}" if token else "")


def run_review(bids: Path, queue: Path | None, model: str, host: str, port: int, allow_remote: bool,
               max_sessions: int = DEFAULT_MAX_SESSIONS, idle_minutes: float = DEFAULT_IDLE_MINUTES) -> None:
    """Validate everything before importing trame-slicer, then serve until interrupted."""
    bids = Path(bids)
    if not bids.is_dir():
        raise InputError(f"{bids}: no such BIDS folder; give the dataset root with --bids.")
    if queue is not None and not Path(queue).is_file():
        raise InputError(f"{queue}: no such queue file; create it with 'sciseg queue score' or leave --queue out.")
    if max_sessions < 1:
        raise InputError(f"--max-sessions {max_sessions}: give at least 1 (one session per open browser tab).")
    if not idle_minutes > 0:
        raise InputError(f"--idle-minutes {idle_minutes}: give a positive number of minutes.")
    token, generated = access_token(host, allow_remote)
    if importlib.util.find_spec("trame_slicer") is None:
        raise InputError("the review app needs the web extra: pip install 'sciseg[web]' (trame-slicer[standalone]).")
    from .front import FrontSettings, run_front

    settings = FrontSettings(root=bids.resolve(), queue=Path(queue).resolve() if queue is not None else None, model=model,
                             token=token, max_sessions=max_sessions, idle_s=idle_minutes * 60)
    print(f"SCIseg review of {bids.resolve()} at {review_url(host, port, token)}", flush=True)
    print(f"each browser tab gets its own session (at most {max_sessions} at once; a session ends after "
          f"{idle_minutes:g} min without its tab, unless it has unsaved edits)", flush=True)
    if generated:
        print(f"the access token is the secret in that address, generated for this run and shown only there "
              f"(set {TOKEN_ENVIRONMENT} to choose it)", flush=True)
    try:
        run_front(settings, host, port)
    except OSError as error:
        if error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES):
            raise InputError(f"cannot listen on {host}:{port} ({error.strerror}); choose another --port or --host.") from error
        raise
