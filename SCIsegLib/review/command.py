"""``sciseg review``: check the inputs and the bind rule, print the address (with the token once), serve."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import InputError
from .auth import TOKEN_ENVIRONMENT, access_token


def review_url(host: str, port: int, token: str | None) -> str:
    """The address a rater opens; the token travels as the ``secret`` query parameter (wslink's hello)."""
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?secret={token}" if token else "")


def run_review(bids: Path, queue: Path | None, model: str, host: str, port: int, allow_remote: bool) -> None:
    """Validate everything before importing trame-slicer, then serve until interrupted."""
    bids = Path(bids)
    if not bids.is_dir():
        raise InputError(f"{bids}: no such BIDS folder; give the dataset root with --bids.")
    if queue is not None and not Path(queue).is_file():
        raise InputError(f"{queue}: no such queue file; create it with 'sciseg queue score' or leave --queue out.")
    token, generated = access_token(host, allow_remote)
    if importlib.util.find_spec("trame_slicer") is None:
        raise InputError("the review app needs the web extra: pip install 'sciseg[web]' (trame-slicer[standalone]).")
    from .app import serve

    print(f"SCIseg review of {bids.resolve()} at {review_url(host, port, token)}", flush=True)
    if generated:
        print(f"access token (shown once; set {TOKEN_ENVIRONMENT} to choose it): {token}", flush=True)
    serve(bids, queue=queue, model=model, host=host, port=port, token=token)
