"""The front of ``sciseg review``: one address for every rater, one worker process per browser tab.

trame shares one server's state (and here one MRML scene) with every tab connected to it, so each tab
gets its own session: ``GET /`` starts a worker (:mod:`worker`: the trame app on 127.0.0.1, a port the
system picks) and redirects the tab to ``/s/<session>/``; everything under that prefix, HTTP and the
websocket, is proxied to the session's worker. The session id lives in the tab's URL, not in a cookie:
cookies are shared by every tab of a browser, a URL is not, and a reload keeps it, so a reload returns to
the same worker with nothing lost, while a new tab on the review address gets a new session.

Why proxy rather than redirect to each worker's port: raters need one port open (firewalls, SSH tunnels,
an HTTPS reverse proxy in front), workers never listen on the network, and the front sees every tab
connect and leave, which is what the idle rule needs. The cost is one extra local hop per message.

The token (``--allow-remote``) is required by the front for every request: ``?secret=TOKEN`` (which then
sets an HttpOnly cookie for the page's assets and its websocket) or that cookie; every other request gets
403. Without a token (loopback) the front answers only to local Host names (no DNS rebinding). Workers always
get a secret, checked again by wslink in each websocket's hello: the token, or on loopback a random one of this
run (never trame's well-known default), which the front adds to the page's address.

Decisions (session ids, cap, idle and reclaim rules) are in :mod:`launcher`; this file carries them out.

Limits and headers: a websocket message may be at most :data:`MAX_WS_MESSAGE_BYTES` in either direction (what
trame's workers accept; wslink splits longer payloads into chunks of that size), and a request body at most
:data:`MAX_HTTP_BODY_BYTES` (trame's page only reads assets); a larger one is refused from its header, before it is
buffered. Every answer carries :data:`SECURITY_HEADERS` (no Referer with the token in it, no framing, a
Content-Security-Policy that lets trame's page run and talk only to this address). A request without a Host header
gets 400, and a request aiohttp cannot parse is logged in one line, without a traceback.
"""

from __future__ import annotations

import asyncio
import hmac
import html
import logging
import os
import secrets
import subprocess
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from .auth import TOKEN_ENVIRONMENT, is_loopback
from .launcher import (
    DEFAULT_IDLE_MINUTES,
    DEFAULT_MAX_SESSIONS,
    RECLAIM_AFTER_S,
    STATUS_PATH,
    SessionTable,
    Worker,
    is_session_id,
    ready_port,
)
from .paths import PathRefused, validate_case_id

#: trame's ``ws_max_msg_size`` (10 MB, the largest message its workers accept) plus wslink's 4 KiB of framing.
MAX_WS_MESSAGE_BYTES = 10_000_000 + 4096
#: trame's page only GETs assets: a request body above this is refused (aiohttp reads no more than this).
MAX_HTTP_BODY_BYTES = 1 << 20
#: Sent with every answer. trame's page needs inline script and ``eval`` (Vue compiles its templates in the page),
#: inline styles, and data:/blob: images; it connects only to this address (its websocket included: 'self').
SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; script-src 'self' 'unsafe-inline' 'unsafe-eval'; "
                               "style-src 'self' 'unsafe-inline'; img-src 'self' data: blob:; font-src 'self' data:; "
                               "connect-src 'self'; worker-src 'self' blob:; object-src 'none'; base-uri 'self'; "
                               "form-action 'self'; frame-ancestors 'none'",
}


class _OneLineParseErrors(logging.Filter):
    """aiohttp logs a request it cannot parse (no Host header, bad bytes) with a traceback: keep one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg = "refused a malformed request from %s: %s"
            record.args = (*(record.args or ("?",))[:1], (error.message or type(error).__name__).strip())
            record.exc_info, record.exc_text = None, None
        return True


async def _add_security_headers(_request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection", "te", "trailer",
              "transfer-encoding", "upgrade", "host", "content-length", "cookie"}


def _forwarded(headers) -> CIMultiDict:
    """The headers a proxy passes on: without hop-by-hop ones, those the message's ``Connection`` names included
    (RFC 9110 7.6.1), nor the host, length and cookie (the front's token) that the next hop sets or must not see."""
    named = {name.strip().lower() for value in headers.getall("Connection", []) for name in value.split(",")}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named)


@dataclass(frozen=True)
class FrontSettings:
    """What the front needs: the worker's options, the token (None on loopback) and the session rules (seconds)."""

    root: Path
    queue: Path | None = None
    model: str = "sciseg-v2"
    token: str | None = None
    max_sessions: int = DEFAULT_MAX_SESSIONS
    idle_s: float = DEFAULT_IDLE_MINUTES * 60
    reclaim_after_s: float = RECLAIM_AFTER_S
    start_timeout_s: float = 180.0
    check_every_s: float = 30.0
    heartbeat_s: float = 30.0


def worker_command(settings: FrontSettings) -> list[str]:
    """The real worker: this Python running :mod:`SCIsegLib.review.worker` on the same dataset."""
    command = [sys.executable, "-m", "SCIsegLib.review.worker", "--bids", str(settings.root), "--model", settings.model]
    return command + (["--queue", str(settings.queue)] if settings.queue is not None else [])


def _local_name(host_header: str) -> bool:
    """True when a Host header names this machine's loopback (``localhost``, 127.0.0.0/8, ``[::1]``), any port."""
    try:
        name = URL(f"http://{host_header}").host
    except ValueError:
        return False
    return bool(host_header) and name is not None and is_loopback(name)


def _worker_url(scheme: str, port: int, tail: str) -> URL:
    """The worker's address for the path after ``/s/<session>/``: always 127.0.0.1 and that port, the path encoded."""
    return URL.build(scheme=scheme, host="127.0.0.1", port=port, path="/" + tail)


def _redirect(location: str) -> web.Response:
    """A 302 returned (not raised) so the token middleware can still set its cookie on it.

    Locations are relative, so the front also works behind a reverse proxy that mounts it under a path prefix.
    """
    return web.Response(status=302, headers={"Location": location})


def _is_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


def _page(title: str, sentence: str, status: int) -> web.Response:
    body = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
            f"<body style='font-family: sans-serif; margin: 3em'><h2>{html.escape(title)}</h2>"
            f"<p id='sentence'>{html.escape(sentence)}</p></body></html>")
    return web.Response(status=status, text=body, content_type="text/html")


_ONE_LINE = _OneLineParseErrors()


@web.middleware
async def _require_host(request: web.Request, handler):
    """HTTP/1.0 allows a request without Host (aiohttp refuses one in HTTP/1.1): the front answers it 400."""
    if "Host" not in request.headers:
        return _page("SCIseg review", "This request has no Host header; open the review address in a browser.", 400)
    return await handler(request)


class Front:
    """The aiohttp application and the worker processes of one ``sciseg review``."""

    def __init__(self, settings: FrontSettings, command: Sequence[str] | None = None, log=None) -> None:
        self.settings = settings
        self.command = list(command) if command is not None else worker_command(settings)
        self.table = SessionTable(settings.max_sessions, settings.idle_s, settings.reclaim_after_s)
        self.processes: dict[str, asyncio.subprocess.Process] = {}
        self._ready: dict[str, asyncio.Future] = {}
        self._output: dict[str, deque[str]] = {}
        self._client: aiohttp.ClientSession | None = None
        self._reaper: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._log = log or (lambda text: print(text, file=sys.stderr, flush=True))
        self.cookie = "sciseg_review_token"
        # what the workers require (wslink's hello, their status): the token, or without one (loopback) a secret of this
        # run, so that a web page that finds a worker's port cannot use trame's well-known default ("wslink-secret")
        self.worker_secret = settings.token or secrets.token_urlsafe(24)

    # ------------------------------------------------------------------ application
    def application(self, port: int = 0) -> web.Application:
        self.cookie = f"sciseg_review_token_{port}"  # fronts on other ports of one host keep their own cookie
        app = web.Application(middlewares=[_require_host, self._require_token], client_max_size=MAX_HTTP_BODY_BYTES)
        app.on_response_prepare.append(_add_security_headers)
        logging.getLogger("aiohttp.server").addFilter(_ONE_LINE)
        app.router.add_get("/", self._new_session, allow_head=False)  # HEAD (previews, monitors) starts nothing
        app.router.add_get("/index.html", self._index)
        app.router.add_route("*", "/s/{sid}", self._add_slash)
        app.router.add_route("*", "/s/{sid}/{tail:.*}", self._to_worker)
        app.on_startup.append(self._startup)
        app.on_shutdown.append(self._stop_all)  # before aiohttp waits for open requests: websockets end with their workers
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, _app: web.Application) -> None:
        self._client = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))
        self._reaper = asyncio.create_task(self._reap_forever())

    async def _stop_all(self, _app: web.Application) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        await asyncio.gather(*(self.stop_worker(sid, "the front stops") for sid in list(self.table.workers)))

    async def _cleanup(self, app: web.Application) -> None:
        await self._stop_all(app)  # any started meanwhile
        if self._client is not None:
            await self._client.close()

    # ------------------------------------------------------------------ token
    def _same_token(self, given: str | None) -> bool:
        token = self.settings.token
        if token is None or given is None:
            return False
        # headers are decoded with surrogate escapes (bytes that are not UTF-8): any text encodes, only the token matches
        return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8", "surrogatepass"))

    @web.middleware
    async def _require_token(self, request: web.Request, handler):
        if self.settings.token is None:
            if not _local_name(request.headers.get("Host", "")):  # DNS rebinding: another site's name re-pointed here
                return _page("SCIseg review", "Started without --allow-remote, this review server answers only to this "
                             "machine's local names (localhost, 127.0.0.1); open it by one of them, or restart it with "
                             "--allow-remote and a token.", 403)
            return await handler(request)
        if self._same_token(request.query.get("secret")):
            response = await handler(request)
            if not response.prepared:  # a websocket is already answered; the page set the cookie before
                response.set_cookie(self.cookie, self.settings.token, httponly=True, samesite="Strict", path="/")
            return response
        if self._same_token(request.cookies.get(self.cookie)):
            return await handler(request)
        return _page("SCIseg review", "This review server needs its access token: open the address it printed at "
                     "start (http://HOST:PORT/?secret=TOKEN).", 403)

    def _with_secret(self, path: str, case_id: str = "") -> str:
        """``path`` with the workers' secret as ``?secret=`` (the page passes it in wslink's hello), and ``&case=``
        when the tab is to open a case (a validated case id)."""
        case = f"&case={quote(case_id, safe='/')}" if case_id else ""
        return f"{path}?secret={quote(self.worker_secret, safe='')}{case}"

    # ------------------------------------------------------------------ routes
    async def _new_session(self, request: web.Request) -> web.StreamResponse:
        """A new tab's session; ``?case=<case id>`` (a QC report's "Open in sciseg review") is validated before
        anything else and handed to the tab's page, which opens that case once connected."""
        cases = request.query.getall("case", [])
        try:
            if len(cases) > 1:
                raise PathRefused("a review address names at most one case (one case= parameter).")
            case_id = validate_case_id(cases[0]) if cases else ""
        except PathRefused as error:
            return _page("SCIseg review", f"This case cannot be opened: {error}", 400)
        if _is_websocket(request):
            return _page("SCIseg review", "A review session's connection belongs under /s/<session>/; open the review "
                         "address in a browser.", 400)
        purpose = request.headers.get("Sec-Purpose", "") + request.headers.get("Purpose", "")
        if request.headers.get("Sec-Fetch-Dest", "document") != "document" or "prefetch" in purpose:
            # browsers say what a request is for: another site's image, frame or fetch of this address, or a prefetch
            # while the address is typed, would start workers up to the cap for tabs that never come
            return _page("SCIseg review", "A review session opens only as a page of its own: type the review address "
                         "or follow a link to it.", 403)
        worker = await self._claim()
        if worker is None:
            count = self.settings.max_sessions
            in_use = "The only review session is" if count == 1 else f"All {count} review sessions are"
            return _page("SCIseg review is full", f"{in_use} in use (one per "
                         "open browser tab). Close a review tab you no longer use and reload this page in a few minutes, "
                         "or ask whoever started sciseg review to restart it with a larger --max-sessions.", 503)
        self._launch(worker)
        return _redirect(self._with_secret(f"s/{worker.session_id}/", case_id))

    async def _index(self, request: web.Request) -> web.Response:
        """A page that sends the browser to ``/`` (a new session); answering it starts nothing (probes, bookmarks)."""
        target = html.escape(self._with_secret("./"))
        return web.Response(text=f"<!doctype html><meta http-equiv='refresh' content='0; url={target}'>"
                                 f"<a href='{target}'>SCIseg review</a>", content_type="text/html")

    async def _add_slash(self, request: web.Request) -> web.StreamResponse:
        session_id = request.match_info["sid"]
        if not is_session_id(session_id):  # a Location built from it could leave the front: //host, \\host
            return _page("SCIseg review", "There is no such review session; open the review address to start one.", 404)
        return _redirect(self._with_secret(f"{session_id}/"))

    async def _to_worker(self, request: web.Request) -> web.StreamResponse:
        sid, tail = request.match_info["sid"], request.match_info["tail"]
        worker = self.table.get(sid) if is_session_id(sid) else None
        if worker is None:  # ended (idle, reclaimed, front restarted) or never existed: a new session
            return _redirect(self._with_secret("../" * (tail.count("/") + 2)))  # the review address
        try:
            port = await asyncio.wait_for(asyncio.shield(self._ready[sid]), self.settings.start_timeout_s)
        except asyncio.TimeoutError:
            await self.stop_worker(sid, f"not listening after {self.settings.start_timeout_s:.0f} s")
            return _page("SCIseg review", "Your review session did not start in time; reload this page to try again.", 504)
        except RuntimeError as error:
            return _page("SCIseg review", f"Your review session could not start: {error}", 500)
        websocket = _is_websocket(request)
        if not websocket and tail in ("", "index.html") and "secret" not in request.query:
            return _redirect(self._with_secret(f"./{tail}"))  # the page hands the token to wslink's hello
        if websocket:
            return await self._proxy_websocket(request, sid, port, tail)
        return await self._proxy_http(request, port, tail)

    async def _proxy_http(self, request: web.Request, port: int, tail: str) -> web.Response:
        headers = _forwarded(request.headers)
        body = await request.read()
        try:
            async with self._client.request(request.method, _worker_url("http", port, tail), params=request.query,
                                            headers=headers, data=body or None, allow_redirects=False) as upstream:
                payload = await upstream.read()
                answer = _forwarded(upstream.headers)
                return web.Response(status=upstream.status, body=payload, headers=answer)
        except aiohttp.ClientError as error:
            return _page("SCIseg review", f"Your review session does not answer ({error}); reload this page.", 502)

    async def _proxy_websocket(self, request: web.Request, sid: str, port: int, tail: str) -> web.WebSocketResponse:
        # pings every heartbeat_s: a tab that vanished without closing (laptop shut, network gone) is let go, so its
        # session can become idle; browsers answer pings by themselves
        browser = web.WebSocketResponse(max_msg_size=MAX_WS_MESSAGE_BYTES, heartbeat=self.settings.heartbeat_s)
        await browser.prepare(request)
        self.table.connected(sid)
        try:
            async with self._client.ws_connect(_worker_url("ws", port, tail), max_msg_size=MAX_WS_MESSAGE_BYTES) as upstream:
                pumps = [asyncio.create_task(_pump(browser, upstream)), asyncio.create_task(_pump(upstream, browser))]
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except aiohttp.ClientError as error:
            self._log(f"session {sid[:8]}: websocket to the worker failed ({error})")
        finally:
            self.table.disconnected(sid, time.monotonic())
            await browser.close()
        return browser

    # ------------------------------------------------------------------ workers
    async def _claim(self) -> Worker | None:
        """A new session in the table, reclaiming a long-disconnected worker without unsaved edits when full."""
        if self.table.full():
            for sid in self.table.reclaimable(time.monotonic()):
                if not await self.busy(sid):
                    await self.stop_worker(sid, "reclaimed for a new tab (no tab, no unsaved edits)")
                    break
        try:
            return self.table.add(time.monotonic())
        except RuntimeError:
            return None

    def _launch(self, worker: Worker) -> None:
        self._ready[worker.session_id] = asyncio.get_running_loop().create_future()
        self._output[worker.session_id] = deque(maxlen=20)
        for job in (self._run_worker(worker), self._stop_unless_ready(worker.session_id)):
            task = asyncio.create_task(job)
            self._tasks.add(task)  # the loop keeps only weak references to tasks
            task.add_done_callback(self._tasks.discard)

    async def _stop_unless_ready(self, sid: str) -> None:
        """Stop a worker not listening after ``start_timeout_s``, whether or not its tab still waits for it."""
        ready = self._ready.get(sid)
        if ready is None:
            return  # already stopped
        try:
            await asyncio.wait_for(asyncio.shield(ready), self.settings.start_timeout_s)
        except asyncio.TimeoutError:
            await self.stop_worker(sid, f"not listening after {self.settings.start_timeout_s:g} s")
        except RuntimeError:
            pass  # it stopped before getting ready: _run_worker has cleaned up

    async def _run_worker(self, worker: Worker) -> None:
        sid, ready = worker.session_id, self._ready[worker.session_id]
        environment = dict(os.environ)
        environment.pop(TOKEN_ENVIRONMENT, None)
        environment[TOKEN_ENVIRONMENT] = self.worker_secret
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                env=environment, start_new_session=True)  # a terminal's Ctrl-C reaches the front, which stops them
        except OSError as error:
            ready.set_exception(RuntimeError(f"the worker could not be started ({error})"))
            self.table.remove(sid)
            return
        worker.pid = process.pid
        if self.table.get(sid) is not worker:  # stopped while starting (front stopping, start timeout): no orphan
            self._output.pop(sid, None)
            process.terminate()
            await process.wait()
            return
        self.processes[sid] = process
        self._log(f"session {sid[:8]}: worker pid {process.pid} starting ({len(self.table)} of {self.settings.max_sessions})")
        started = time.monotonic()
        while True:
            try:
                line = await process.stdout.readline()
            except ValueError:  # a line over the stream's 64 KiB limit: left out, the output is still read
                self._log(f"[session {sid[:8]}] (a line of more than 64 KiB left out)")
                continue
            if not line:
                break
            text = line.decode(errors="replace").rstrip()
            port = ready_port(text)
            if port is not None and not ready.done():
                worker.port = port
                ready.set_result(port)
                self._log(f"session {sid[:8]}: worker pid {process.pid} ready on 127.0.0.1:{port} "
                          f"after {time.monotonic() - started:.1f} s")
            elif text:
                self._output[sid].append(text)
                self._log(f"[session {sid[:8]}] {text}")
        code = await process.wait()
        if not ready.done():
            last = self._output[sid][-1] if self._output[sid] else "no output"
            ready.set_exception(RuntimeError(f"its worker stopped with exit code {code} ({last})"))
            ready.exception()  # read here: a tab may never come to ask
        self._output.pop(sid, None)
        if self.processes.get(sid) is process:  # it ended by itself (stop_worker removes it first)
            self.processes.pop(sid, None)
            self._ready.pop(sid, None)
            self.table.remove(sid)
            self._log(f"session {sid[:8]}: worker pid {process.pid} ended (exit code {code})")

    async def busy(self, sid: str) -> bool:
        """True when the session's worker has unsaved edits or a running segmentation, or cannot tell (kept then)."""
        worker = self.table.get(sid)
        if worker is None or not worker.port:
            return worker is not None
        headers = {"Authorization": f"Bearer {self.worker_secret}"}
        try:
            async with self._client.get(f"http://127.0.0.1:{worker.port}{STATUS_PATH}", headers=headers,
                                        timeout=aiohttp.ClientTimeout(total=30)) as answer:
                status = await answer.json()
            return bool(status["unsaved"])
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, ValueError):
            return True

    async def stop_worker(self, sid: str, reason: str) -> None:
        """Remove the session and end its worker: close its stdin, SIGTERM, then SIGKILL after 10 s."""
        self.table.remove(sid)
        ready = self._ready.pop(sid, None)
        if ready is not None and not ready.done():
            ready.set_exception(RuntimeError(reason))
            ready.exception()
        process = self.processes.pop(sid, None)
        if process is None or process.returncode is not None:
            return
        self._log(f"session {sid[:8]}: stopping worker pid {process.pid}: {reason}")
        try:
            process.terminate()
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(process.wait(), 10)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()

    async def _reap_forever(self) -> None:
        kept: set[str] = set()
        while True:
            await asyncio.sleep(self.settings.check_every_s)
            for sid in self.table.due_for_shutdown(time.monotonic()):
                if await self.busy(sid):
                    if sid not in kept:
                        self._log(f"session {sid[:8]}: idle but has unsaved edits; kept until the front stops")
                        kept.add(sid)
                else:
                    await self.stop_worker(sid, f"no tab for {self.settings.idle_s / 60:g} min and no unsaved edits")


async def _pump(source, target) -> None:
    """Forward one websocket's messages to another, text as text and binary as binary, until either closes."""
    async for message in source:
        if message.type == WSMsgType.TEXT:
            await target.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await target.send_bytes(message.data)
        else:
            break


def run_front(settings: FrontSettings, host: str, port: int, command: Sequence[str] | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then stop every worker. Raises ``OSError`` when the address is taken."""
    front = Front(settings, command)
    try:
        web.run_app(front.application(port), host=host, port=port, print=None, handle_signals=True, shutdown_timeout=5)
    finally:
        asyncio.set_event_loop(None)  # run_app leaves its closed loop as the thread's current one
