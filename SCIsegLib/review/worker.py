"""One review session's worker: ``python -m SCIsegLib.review.worker --bids ROOT [--queue Q] [--model M]``.

Started by the front (:mod:`front`), never by hand: it serves the trame app (:mod:`app`, its own MRML scene)
on 127.0.0.1 and a port the system picks, prints ``READY_PREFIX<port>`` on stdout once it listens, and
exits when its standard input closes (the front stopped, even by SIGKILL) or on SIGTERM, cancelling a
running segmentation first. It keeps one warm engine for its model (:mod:`SCIsegLib.warm_client`; started with
the worker when a case of the dataset has no prediction, else by the first segmentation; idle exit after 10
minutes): the engine ends with the worker, however it ends (its stdin is a pipe from
the worker, and the worker's guardian, :mod:`SCIsegLib.lifetime`, ends the worker's process group). The token, when there is one, comes in ``SCISEG_REVIEW_TOKEN``: wslink
refuses websockets without it, and ``STATUS_PATH`` (which the front asks before stopping an idle worker)
answers only with it as ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import argparse
import hmac
import os
import sys
import threading
import traceback
from pathlib import Path

from .auth import TOKEN_ENVIRONMENT
from .launcher import READY_PREFIX, STATUS_PATH


def unsaved_edits(session) -> bool:
    """True when the open case's masks exist only in this worker's memory: they differ from what was opened and from
    this session's last export, and no draft holds them (:meth:`ReviewSession.safe`).

    Once the draft is written, the worker may be stopped (idle, or its slot reclaimed for a new tab): the rater
    finds the draft when the case is opened again, in any session.
    """
    return not session.safe()


def stop_segmentation(app) -> None:
    """Cancel a running ``sciseg segment`` child (it runs in its own process group) and wait up to 5 s for it."""
    run = getattr(app, "run", None)
    if run is not None and not run.finished:
        run.cancel(grace_s=1.0)
        run.wait(timeout_s=5.0)


def engine_wanted(cases: list[dict]) -> bool:
    """Load the warm engine when the worker starts: a case of the list (``Case.as_dict()``) has no prediction."""
    from .cases import NOT_PREDICTED

    return any(case.get("status") == NOT_PREDICTED for case in cases)


def stop_engines(app) -> None:
    """End the worker's warm engine (it stops a running request; killed after 5 s)."""
    engines = getattr(app.session, "engines", None)
    if engines is not None:
        for engine in engines.engines.values():
            engine.close(timeout_s=5.0)


def _status_route(app, token: str | None):
    from aiohttp import web

    async def status(request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "")
        if token is not None and not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return web.json_response({"error": "token required"}, status=403)
        running = bool(app.state.running)
        return web.json_response({"unsaved": running or unsaved_edits(app.session), "running": running,
                                  "case_id": app.state.case_id, "tabs": int(app.state.tabs)})

    return lambda wslink_server: wslink_server.app.router.add_get(STATUS_PATH, status)


def _exit_when_stdin_closes(app) -> None:
    def watch() -> None:
        try:
            while os.read(0, 65536):  # the raw descriptor: a buffered reader's lock would stall the interpreter's exit
                pass
        except OSError:
            pass
        stop_segmentation(app)
        stop_engines(app)
        os._exit(0)  # the front is gone: nobody can reach this worker any more

    threading.Thread(target=watch, daemon=True, name="sciseg-front-watch").start()


def main(argv: list[str] | None = None) -> None:
    from ..lifetime import bind_descendants

    bind_descendants()  # first, while this process has one thread: the warm engine ends with the worker, however
    parser = argparse.ArgumentParser(prog="python -m SCIsegLib.review.worker", description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, required=True)
    parser.add_argument("--queue", type=Path)
    parser.add_argument("--model", default="sciseg-v2")
    args = parser.parse_args(argv)
    token = os.environ.get(TOKEN_ENVIRONMENT) or None
    os.environ["WSLINK_READY_MSG"] = ""  # wslink's own start message carries no port; ours follows

    from .app import ReviewApp, headless_rendering, serve

    headless_rendering()
    app = ReviewApp(args.bids, args.queue, args.model)
    from ..runner import RunOptions
    from ..warm_client import WarmEngines
    from ..warm_run import engine_settings

    app.session.engines = WarmEngines(idle_minutes=10.0)
    if engine_wanted(app.state.cases):  # else the first segmentation starts it; the memory is not held for nothing
        app.session.engines.get(args.model, engine_settings(RunOptions(model=args.model)))  # loads in the background
    app.server.controller.on_server_bind.add(_status_route(app, token))
    app.server.controller.on_server_ready.add(lambda **_: print(f"{READY_PREFIX}{app.server.port}", flush=True))
    _exit_when_stdin_closes(app)
    code = 1
    try:
        serve(app, host="127.0.0.1", port=0, token=token)
        code = 0
    except (KeyboardInterrupt, SystemExit):  # SIGINT, or SIGTERM through aiohttp's GracefulExit
        code = 0
    except BaseException:
        traceback.print_exc()
    finally:
        stop_segmentation(app)
        stop_engines(app)
        try:
            app.save_draft()  # SIGTERM (front stopping, idle): the strokes since the last draft go to disk too
        except Exception:  # noqa: BLE001 - the process ends either way; the last stroke's draft is already there
            traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # skip tearing down the scene and VTK one object at a time: nothing of it is kept


if __name__ == "__main__":
    main()
