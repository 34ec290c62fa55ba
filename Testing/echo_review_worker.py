"""A small worker for the front's fast tests: it speaks the worker protocol of ``SCIsegLib.review.launcher`` without trame.

Run as ``python echo_review_worker.py``: listens on 127.0.0.1 (a port the system picks), prints the ready line,
answers ``GET /`` with ``worker <pid>`` (and the query it got), ``GET /headers`` with the request's headers (JSON), echoes websocket messages prefixed with its
pid (text as text, binary as binary), answers ``STATUS_PATH`` with ``{"unsaved": true}`` while the file ``<pid>``
exists in the folder ``ECHO_WORKER_UNSAVED`` (only with ``Authorization: Bearer <SCISEG_REVIEW_TOKEN>`` when that is set),
and exits when its standard input closes, like the real worker (``SCIsegLib.review.worker``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

from aiohttp import WSMsgType, web

from SCIsegLib.review.launcher import READY_PREFIX, STATUS_PATH


async def page(request: web.Request) -> web.Response:
    return web.Response(text=f"worker {os.getpid()} query={request.query_string}")


async def headers(request: web.Request) -> web.Response:
    return web.json_response([[name, value] for name, value in request.headers.items()])


async def echo(request: web.Request) -> web.WebSocketResponse:
    socket = web.WebSocketResponse()
    await socket.prepare(request)
    async for message in socket:
        if message.type == WSMsgType.TEXT:
            await socket.send_str(f"{os.getpid()}:{message.data}")
        elif message.type == WSMsgType.BINARY:
            await socket.send_bytes(str(os.getpid()).encode() + b":" + message.data)
    return socket


async def status(request: web.Request) -> web.Response:
    token = os.environ.get("SCISEG_REVIEW_TOKEN")
    if token and request.headers.get("Authorization") != f"Bearer {token}":
        return web.json_response({"error": "token required"}, status=403)
    flag = os.environ.get("ECHO_WORKER_UNSAVED", "")
    unsaved = bool(flag) and (Path(flag) / str(os.getpid())).exists()
    return web.json_response({"unsaved": unsaved, "running": False, "case_id": "", "tabs": 0})


async def main() -> None:
    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/ws", echo)
    app.router.add_get("/headers", headers)
    app.router.add_get(STATUS_PATH, status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    print(f"{READY_PREFIX}{runner.addresses[0][1]}", flush=True)
    await asyncio.Event().wait()


def exit_when_stdin_closes() -> None:
    while os.read(0, 65536):
        pass
    os._exit(0)


if __name__ == "__main__":
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    sys.exit(asyncio.run(main()))
