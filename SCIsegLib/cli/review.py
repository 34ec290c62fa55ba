"""``sciseg review``: the rater web app (:mod:`SCIsegLib.review`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import EXIT_OK


def _add_review(commands) -> None:
    web = commands.add_parser("review", help="serve the rater web app (trame-slicer) on a BIDS dataset")
    web.add_argument("--bids", type=Path, required=True, help="BIDS dataset root (nothing outside it is read or written)")
    web.add_argument("--queue", type=Path, help="review queue file from 'sciseg queue score' (case order)")
    web.add_argument("--model", default="sciseg-v2", help="model for cases without a prediction")
    web.add_argument("--host", default="127.0.0.1", help="bind address; anything but loopback needs --allow-remote")
    web.add_argument("--port", type=int, default=8080)
    web.add_argument("--allow-remote", action="store_true", help="allow a non-loopback address (a token is then required)")
    web.add_argument("--max-sessions", type=int, default=4, help="at most this many browser tabs, each its own worker process (~0.6-0.8 GB)")
    web.add_argument("--idle-minutes", type=float, default=60.0, help="end a session this long after its tab left, unless it has unsaved edits")


def _run_review(args: argparse.Namespace) -> int:
    from ..review.command import run_review

    run_review(args.bids, args.queue, args.model, args.host, args.port, args.allow_remote, args.max_sessions, args.idle_minutes)
    return EXIT_OK


PARSERS = {"review": _add_review}
HANDLERS = {"review": _run_review}
