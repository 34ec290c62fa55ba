"""``sciseg review``'s front: the launcher's decisions, and the real front process with small workers.

The front runs as a real process (``run_front``) that starts real child processes; to keep these tests
fast its workers are ``echo_review_worker.py`` (the worker protocol without trame: ready line, page,
websocket echo, status). The real worker (trame-slicer) behind the same front is tested in
``test_review_browser.py``.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

from conftest import REPOSITORY
from SCIsegLib.review.launcher import READY_PREFIX, SessionTable, is_session_id, new_session_id, ready_port

psutil = pytest.importorskip("psutil", reason="psutil (brought by distributed) lists the front's worker processes")
aiohttp = pytest.importorskip("aiohttp", reason="aiohttp (brought by trame) runs the front")

TOKEN = "front-test-token-0123456789"
ECHO_WORKER = Path(__file__).with_name("echo_review_worker.py")
FRONT_CODE = (
    "import json, sys\n"
    "from pathlib import Path\n"
    "from SCIsegLib.review.front import FrontSettings, run_front\n"
    "o = json.loads(sys.argv[1])\n"
    "settings = FrontSettings(root=Path(o['root']), token=o['token'], max_sessions=o['max'], idle_s=o['idle'],\n"
    "                         reclaim_after_s=o['reclaim'], check_every_s=0.2, heartbeat_s=o['heartbeat'],\n"
    "                         start_timeout_s=o['start_timeout'])\n"
    "run_front(settings, '127.0.0.1', o['port'], [sys.executable, o['worker']])\n"
)


# ------------------------------------------------------------------------------------------- the decisions
def test_session_ids_are_random_hex_and_nothing_else_passes() -> None:
    ids = {new_session_id() for _ in range(200)}
    assert len(ids) == 200 and all(is_session_id(i) for i in ids)
    for text in ("", "../../etc/passwd", "0123456789ABCDEF", "0123456789abcde", "0123456789abcdef0", "0123456789abcdeg"):
        assert not is_session_id(text)


def test_the_table_caps_sessions_and_tells_which_may_stop() -> None:
    table = SessionTable(max_sessions=2, idle_s=100.0, reclaim_after_s=10.0)
    first, second = table.add(now=0.0), table.add(now=5.0)
    assert first.session_id != second.session_id and table.full()
    with pytest.raises(RuntimeError, match="all 2 review sessions"):
        table.add(now=6.0)
    assert table.due_for_shutdown(now=1000.0) == []  # not ready yet (no port): never stopped for idleness
    first.port, second.port = 9001, 9002
    table.connected(first.session_id)
    table.connected(first.session_id)  # a reload opens the new websocket before the old one closes
    table.disconnected(first.session_id, now=50.0)
    assert first.idle_s(now=1000.0) == 0.0  # one tab still there
    assert table.reclaimable(now=20.0) == [second.session_id]  # no tab since it started at 5 s
    assert table.due_for_shutdown(now=104.0) == []
    assert table.due_for_shutdown(now=105.0) == [second.session_id]
    table.disconnected(first.session_id, now=60.0)
    assert table.due_for_shutdown(now=160.0) == [second.session_id, first.session_id]  # longest idle first
    table.connected(second.session_id)
    assert table.due_for_shutdown(now=500.0) == [first.session_id]
    table.remove(first.session_id)
    assert not table.full() and table.add(now=501.0).session_id not in (first.session_id, second.session_id)
    with pytest.raises(ValueError):
        SessionTable(max_sessions=0)


def test_only_the_exact_ready_line_gives_a_port() -> None:
    assert ready_port(f"{READY_PREFIX}43123\n") == 43123
    for line in ("wslink: Starting factory", f"{READY_PREFIX}", f"{READY_PREFIX}0", f"{READY_PREFIX}70000",
                 f"{READY_PREFIX}12x", f"x {READY_PREFIX}8080"):
        assert ready_port(line) is None


# ------------------------------------------------------------------------------------------- the front process
class FrontProcess:
    """A real front (``run_front``) on a free port with echo workers; ``unsaved`` is the folder of their flags."""

    def __init__(self, tmp_path: Path, token: str | None = TOKEN, max_sessions: int = 2, idle_s: float = 3600.0,
                 reclaim_after_s: float = 3600.0, worker: Path = ECHO_WORKER, heartbeat_s: float = 30.0,
                 start_timeout_s: float = 180.0) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.unsaved = tmp_path / "unsaved"
        self.unsaved.mkdir(exist_ok=True)
        options = {"root": str(tmp_path), "token": token, "max": max_sessions, "idle": idle_s, "reclaim": reclaim_after_s,
                   "port": self.port, "worker": str(worker), "heartbeat": heartbeat_s,
                   "start_timeout": start_timeout_s}
        environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPOSITORY), str(ECHO_WORKER.parent)]))
        environment["ECHO_WORKER_UNSAVED"] = str(self.unsaved)
        self.log = tmp_path / f"front_{self.port}.log"
        self.process = subprocess.Popen([sys.executable, "-c", FRONT_CODE, json.dumps(options)], env=environment,
                                        stdout=open(self.log, "w"), stderr=subprocess.STDOUT)  # noqa: SIM115
        deadline = time.monotonic() + 30
        while True:
            try:
                _raw(self.port, "/index.html")  # answers (403 without the token) and starts nothing
                return
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"the front did not start: {self.log.read_text()[-2000:]}") from None
                time.sleep(0.1)

    def workers(self) -> list[psutil.Process]:
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)


class Tab:
    """A browser-like client: a cookie jar (shared by the tabs of one browser) and redirects followed."""

    def __init__(self, jar: http.cookiejar.CookieJar | None = None) -> None:
        self.jar = jar if jar is not None else http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    def get(self, url: str) -> tuple[int, str, str]:
        """(status, body, final URL)."""
        try:
            with self.opener.open(url, timeout=30) as answer:
                return answer.status, answer.read().decode(), answer.url
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(), error.url


def _run(coroutine):
    """Run a coroutine on a loop of its own; unlike ``asyncio.run`` it leaves the thread's current loop as it was
    (trame code in later tests schedules its tasks on that one)."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coroutine)
    finally:
        loop.close()


def _raw(port: int, target: str, headers: str = "", method: str = "GET", host: str | None = None,
         extra: bytes = b"", connection: str = "close") -> tuple[int, dict[str, str], bytes]:
    """One HTTP request sent byte for byte (no client normalising the target): (status, lower-cased headers, body)."""
    host = host if host is not None else f"127.0.0.1:{port}"
    request = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nConnection: {connection}\r\n{headers}".encode() + extra + b"\r\n"
    data = b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as link:
        link.sendall(request)
        while b"\r\n\r\n" not in data and (chunk := link.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = dict((name.strip().lower(), value.strip()) for name, value in (line.split(":", 1) for line in lines[1:] if ":" in line))
        while len(body) < int(fields.get("content-length", 0)) and (chunk := link.recv(65536)):
            body += chunk
    return int(lines[0].split()[1]), fields, body


def _pid(body: str) -> int:
    assert body.startswith("worker "), body
    return int(body.split()[1])


def _gone(pids: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in pids):
            return True
        time.sleep(0.1)
    return False


@pytest.fixture()
def front(tmp_path: Path):
    process = FrontProcess(tmp_path)
    yield process
    process.stop()


def test_the_front_refuses_every_request_without_the_token(front: FrontProcess) -> None:
    stranger = Tab()
    for path in ("/", "/?secret=wrong-token-0123456789", "/s/0123456789abcdef/", "/s/0123456789abcdef/ws", "/anything"):
        status, body, _ = stranger.get(front.url + path)
        assert status == 403 and "access token" in body, path
    assert front.workers() == []  # nothing was started for a stranger
    session_id = new_session_id()
    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    other_port = f"Cookie: sciseg_review_token_{front.port + 1}={TOKEN}\r\n"  # cookies are not per port: another front's
    for method, target, headers in [("GET", f"http://127.0.0.1:{front.port}/", ""), ("GET", f"/s/x/../{session_id}/", ""),
                                    ("GET", f"/s/{session_id}/%2e%2e/%2e%2e/", ""), ("GET", f"//s/{session_id}/", ""),
                                    ("GET", f"/S/{session_id}/", ""), ("HEAD", "/", ""), ("OPTIONS", f"/s/{session_id}/", ""),
                                    ("GET", "/", upgrade), ("GET", f"/s/{session_id}/ws", upgrade), ("GET", "/", other_port),
                                    ("GET", "/?secret=%ff%ED%A0%80", ""), ("GET", "/s/" + "a" * 4000 + "/", "")]:
        assert _raw(front.port, target, headers, method)[0] == 403, (method, target, headers)
    status, body, _ = Tab().get(f"{front.url}/index.html?secret={TOKEN}")  # a probe or bookmark: a link to "/" only
    assert status == 200 and "http-equiv='refresh'" in body and front.workers() == []

    async def websocket_without_cookie() -> int:
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(f"{front.url}/s/0123456789abcdef/ws"):
                    return 101
            except aiohttp.WSServerHandshakeError as error:
                return error.status

    assert _run(websocket_without_cookie()) == 403


def test_each_tab_gets_its_own_worker_and_a_reload_returns_to_it(front: FrontProcess) -> None:
    tab = Tab()
    status, body, url = tab.get(f"{front.url}/?secret={TOKEN}")
    assert status == 200 and "/s/" in url and f"secret={TOKEN}" in body  # the worker's page gets the token for wslink
    session_id = url.split("/s/")[1].split("/")[0]
    first = _pid(body)
    # a reload: the page's address without the secret (trame's page removes it from the URL); the cookie is enough
    status, body, again = tab.get(f"{front.url}/s/{session_id}/")
    assert status == 200 and _pid(body) == first and f"/s/{session_id}/" in again
    # a new tab of the same browser on the review address: a session and a worker of its own
    status, body, other_url = tab.get(f"{front.url}/")
    second = _pid(body)
    assert status == 200 and second != first and session_id not in other_url
    assert sorted(p.pid for p in front.workers()) == sorted([first, second])

    async def echo_through_the_front() -> tuple[str, bytes]:
        cookies = {cookie.name: cookie.value for cookie in tab.jar}
        async with aiohttp.ClientSession(cookies=cookies) as session:
            async with session.ws_connect(f"{front.url}/s/{session_id}/ws") as socket:
                await socket.send_str("hello")
                text = await socket.receive_str(timeout=10)
                await socket.send_bytes(b"\x00\x01\xff" * 1000)
                data = await socket.receive_bytes(timeout=10)
                return text, data

    # hop-by-hop headers (RFC 9110 7.6.1), those the client's Connection names included, stop at the front
    sent = (f"Cookie: sciseg_review_token_{front.port}={TOKEN}\r\nX-Private: 1\r\nKeep-Alive: timeout=5\r\n"
            "Proxy-Connection: keep-alive\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\nX-Kept: yes\r\n")
    status, _, body = _raw(front.port, f"/s/{session_id}/headers", sent, connection="close, X-Private")
    seen = {name.lower(): value for name, value in json.loads(body)}
    assert seen["x-kept"] == "yes" and seen["host"].startswith("127.0.0.1:") and f"{front.port}" not in seen["host"]
    assert not {"x-private", "keep-alive", "proxy-connection", "te", "proxy-authorization", "cookie"} & set(seen), seen
    text, data = _run(echo_through_the_front())
    assert text == f"{first}:hello" and data == f"{first}:".encode() + b"\x00\x01\xff" * 1000
    # an unknown or ended session: a new session instead of an error
    status, body, url = tab.get(f"{front.url}/s/0123456789abcdef/")
    assert status == 503 and "All 2 review sessions are in use" in body  # ... here the cap (2) is reached


def test_the_cap_gives_the_full_page_and_a_long_gone_clean_tab_is_reclaimed(tmp_path: Path) -> None:
    front = FrontProcess(tmp_path, max_sessions=1, reclaim_after_s=1.5)
    try:
        tab = Tab()
        status, body, first_url = tab.get(f"{front.url}/?secret={TOKEN}")
        first = _pid(body)
        (front.unsaved / str(first)).touch()  # the first rater has unsaved edits
        status, body, _ = Tab().get(f"{front.url}/?secret={TOKEN}")
        assert status == 503 and "The only review session is in use" in body and "--max-sessions" in body
        time.sleep(2.0)  # past the reclaim delay, but unsaved: still kept
        status, body, _ = Tab().get(f"{front.url}/?secret={TOKEN}")
        assert status == 503 and psutil.pid_exists(first)
        (front.unsaved / str(first)).unlink()  # saved: the long-gone worker may now serve a new tab
        status, body, _ = Tab().get(f"{front.url}/?secret={TOKEN}")
        assert status == 200 and _pid(body) != first and _gone([first], 15)
        status, body, url = tab.get(first_url.split("?")[0])  # the first tab comes back: its session ended cleanly
        assert status == 503  # a new session is asked for, and the cap is reached again
    finally:
        front.stop()


def test_idle_workers_stop_unless_they_have_unsaved_edits(tmp_path: Path) -> None:
    front = FrontProcess(tmp_path, max_sessions=3, idle_s=1.0)
    try:
        tab = Tab()
        clean = _pid(tab.get(f"{front.url}/?secret={TOKEN}")[1])
        dirty = _pid(tab.get(f"{front.url}/")[1])
        (front.unsaved / str(dirty)).touch()
        assert _gone([clean], 15), "an idle worker without unsaved edits was kept"
        time.sleep(1.5)
        assert psutil.pid_exists(dirty), "a worker with unsaved edits was stopped"
        assert "idle but has unsaved edits" in front.log.read_text()
    finally:
        front.stop()


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_the_front(tmp_path: Path, how: str) -> None:
    front = FrontProcess(tmp_path)
    tab = Tab()
    pids = [_pid(tab.get(f"{front.url}/?secret={TOKEN}")[1]), _pid(tab.get(f"{front.url}/")[1])]
    assert sorted(pids) == sorted(p.pid for p in front.workers())
    front.process.send_signal(getattr(signal, how))  # SIGKILL: the workers see their stdin close
    front.process.wait(timeout=30)
    assert _gone(pids, 15), f"workers left after the front's {how}"


def test_a_worker_that_cannot_start_gives_a_page_with_its_last_words(tmp_path: Path) -> None:
    broken = tmp_path / "broken_worker.py"
    broken.write_text("import sys\nprint('no such dataset: /nowhere', flush=True)\nsys.exit(2)\n")
    front = FrontProcess(tmp_path, token=None, worker=broken)
    try:
        status, body, _ = Tab().get(f"{front.url}/")
        assert status == 500 and "could not start" in body and "exit code 2" in body and "no such dataset" in body
        assert front.workers() == []
    finally:
        front.stop()


def test_the_command_refuses_bad_session_options_and_a_taken_port_with_exit_2(tmp_path: Path, capsys) -> None:
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    import socket

    from SCIsegLib.cli import main

    assert main(["review", "--bids", str(tmp_path), "--max-sessions", "0"]) == 2
    assert main(["review", "--bids", str(tmp_path), "--idle-minutes", "0"]) == 2
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["review", "--bids", str(tmp_path), "--port", str(taken.getsockname()[1])]) == 2
    error = capsys.readouterr().err
    assert "--max-sessions 0" in error and "--idle-minutes 0" in error and "choose another --port" in error
    assert "Traceback" not in error


def test_unsaved_edits_are_masks_differing_from_the_prediction_and_the_last_export(tmp_path: Path) -> None:
    """The worker's answer to the front's idle rule, on a real scene (slicer-core) and the real exporter."""
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    from trame_slicer.core import SlicerApp

    from conftest import SHARED_DATA, shared_file
    from review_data import CASES, make_review_bids, paint_lesion_voxels
    from SCIsegLib.review.session import ReviewSession
    from SCIsegLib.review.worker import unsaved_edits

    shared_file("sct_testing_data/t2/t2.nii.gz")
    bids = make_review_bids(tmp_path / "bids", SHARED_DATA)
    session = ReviewSession(SlicerApp(), bids["root"], "sciseg-demo")
    assert not unsaved_edits(session)  # no case open
    session.open_case(CASES["sub-01"])
    assert not unsaved_edits(session)  # the prediction as loaded

    paint_lesion_voxels(session, 5)
    assert unsaved_edits(session)
    session.export("alice")
    assert not unsaved_edits(session)  # the masks are the latest version on disk
    paint_lesion_voxels(session, 3)
    assert unsaved_edits(session)
    other = ReviewSession(SlicerApp(), bids["root"], "sciseg-demo")  # another rater saves the case meanwhile
    other.open_case(CASES["sub-01"])
    other.export("bob")  # the prediction as it is: the latest version now differs from this session's masks
    assert unsaved_edits(session)


def test_a_token_with_url_characters_survives_the_redirects(tmp_path: Path) -> None:
    from urllib.parse import quote, unquote

    odd = "tok&en+with/odd=chars#0123456789"
    front = FrontProcess(tmp_path, token=odd)
    try:
        status, body, url = Tab().get(f"{front.url}/?secret={quote(odd, safe='')}")
        assert status == 200 and body.startswith("worker ")
        assert unquote(body.split("query=secret=")[1]) == odd  # the worker's page gets the exact token for wslink
        assert Tab().get(f"{front.url}/?secret={quote(odd[:-1], safe='')}")[0] == 403
    finally:
        front.stop()


def test_only_a_plain_get_of_the_review_address_starts_a_session_and_no_redirect_leaves_the_front(front: FrontProcess) -> None:
    cookie = f"Cookie: sciseg_review_token_{front.port}={TOKEN}\r\n"
    # redirects carry the token: they must stay on the front (browsers read a backslash as a slash)
    for target in ("/s/%2F%2Fevil.example", "/s/%5C%5Cevil.example", "/s/%5C/evil.example", "/s/@evil.example",
                   "/s/%2F%2Fevil.example/", "/s/0123456789abcdef/%2F%2Fevil.example"):
        status, headers, _ = _raw(front.port, target, cookie)
        location = urljoin(front.url + target, headers.get("location", "").replace("\\", "/"))
        assert urlsplit(location).netloc == f"127.0.0.1:{front.port}", (target, status, location)
    # a cookie that is not UTF-8 is refused like any wrong cookie, not answered with an internal error
    assert _raw(front.port, "/", extra=f"Cookie: sciseg_review_token_{front.port}=".encode() + b"\xff\xfe\r\n")[0] == 403
    # HEAD (link previews, monitors) and a websocket on the review address start no worker
    upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    assert _raw(front.port, f"/?secret={TOKEN}", method="HEAD")[0] == 405
    assert _raw(front.port, "/", cookie + upgrade)[0] == 400
    assert front.workers() == []
    assert "Traceback" not in front.log.read_text()


def test_without_a_token_the_front_answers_only_to_local_names_and_workers_still_need_a_secret(tmp_path: Path) -> None:
    """On loopback there is no token: a page of another site whose name was re-pointed at 127.0.0.1 (DNS rebinding)
    would otherwise be same-origin with the review app and could open, edit and export any case; and a page that
    finds a worker's port must not get in with trame's default secret."""
    front = FrontProcess(tmp_path, token=None, idle_s=3.0)
    try:
        for host in (f"evil.example:{front.port}", "evil.example", f"127.0.0.1.evil.example:{front.port}", "", "[::1"):
            assert _raw(front.port, "/", host=host)[0] == 403, host
        # any web page may load the local address as an image, a frame or a fetch: none of them starts a session
        for destination in ("image", "iframe", "empty", "script"):
            assert _raw(front.port, "/", f"Sec-Fetch-Dest: {destination}\r\nSec-Fetch-Site: cross-site\r\n")[0] == 403
        # nor does a browser prefetching or prerendering the address while it is typed (the tab may never come)
        assert _raw(front.port, "/", "Sec-Fetch-Dest: document\r\nSec-Purpose: prefetch;prerender\r\n")[0] == 403
        assert _raw(front.port, "/", "Sec-Fetch-Dest: document\r\nPurpose: prefetch\r\n")[0] == 403
        assert front.workers() == []
        for host in (f"127.0.0.1:{front.port}", f"localhost:{front.port}", f"[::1]:{front.port}", "localhost:9999"):
            status, _, _ = _raw(front.port, "/index.html", host=host)
            assert status == 200, host
        assert _raw(front.port, "/", "Sec-Fetch-Dest: document\r\nSec-Fetch-Site: none\r\n")[0] == 302  # typed or a link
        assert _gone([worker.pid for worker in front.workers()], 10)  # that tab never came: idle, stopped
        status, body, url = Tab().get(f"{front.url}/")
        secret = body.split("query=secret=")[1]
        assert status == 200 and len(secret) >= 16 and secret != "wslink-secret"
        assert psutil.Process(_pid(body)).environ()["SCISEG_REVIEW_TOKEN"] == secret  # what wslink checks in the hello
        assert _gone([_pid(body)], 10), "the idle rule could not ask the worker (its status needs the secret)"
    finally:
        front.stop()


def test_a_worker_writing_a_very_long_line_still_serves_its_tab(tmp_path: Path) -> None:
    chatty = tmp_path / "chatty_worker.py"  # e.g. a VTK or numpy dump of more than the 64 KiB of a stream's line limit
    chatty.write_text(f"import runpy, sys\nprint('x' * 300_000, flush=True)\nsys.argv = [{str(ECHO_WORKER)!r}]\n"
                      f"runpy.run_path({str(ECHO_WORKER)!r}, run_name='__main__')\n")
    front = FrontProcess(tmp_path, worker=chatty)
    try:
        status, body, _ = Tab().get(f"{front.url}/?secret={TOKEN}")
        assert status == 200 and body.startswith("worker ")
    finally:
        front.stop()
    assert "Task exception was never retrieved" not in front.log.read_text()


def test_a_tab_that_vanished_without_closing_its_websocket_does_not_hold_its_session(tmp_path: Path) -> None:
    """A laptop closed or a network gone sends no close: the front's pings go unanswered and it lets the tab go."""
    front = FrontProcess(tmp_path, idle_s=3.0, heartbeat_s=1.0)  # idle counts from the start: above a slow start
    try:
        tab = Tab()
        status, body, url = tab.get(f"{front.url}/?secret={TOKEN}")
        session_id, pid = url.split("/s/")[1].split("/")[0], _pid(body)
        cookies = {cookie.name: cookie.value for cookie in tab.jar}

        async def connect(answer_pings: bool, seconds: float) -> str:
            async with aiohttp.ClientSession(cookies=cookies) as session:
                async with session.ws_connect(f"{front.url}/s/{session_id}/ws", autoping=answer_pings) as socket_:

                    async def read() -> str:  # answers pings as it reads when autoping (a browser always does)
                        async for message in socket_:
                            if message.type == aiohttp.WSMsgType.TEXT:
                                return message.data
                        return "closed"

                    reader = asyncio.create_task(read())
                    if not answer_pings:  # never answers: the front closes it
                        try:
                            return await asyncio.wait_for(reader, seconds)
                        except asyncio.TimeoutError:
                            return "open"
                    await asyncio.sleep(seconds)
                    await socket_.send_str("still here")  # several pings later: still connected, still served
                    return await asyncio.wait_for(reader, 10)

        assert _run(connect(True, 3.5)) == f"{pid}:still here" and psutil.pid_exists(pid)
        assert _run(connect(False, 8.0)) == "closed"
        assert _gone([pid], 10), "the worker of a vanished tab was kept"
    finally:
        front.stop()


def test_a_generated_token_is_printed_once(tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("trame_slicer", reason="the web extra (trame-slicer) is not installed")
    from SCIsegLib.cli import main

    monkeypatch.delenv("SCISEG_REVIEW_TOKEN", raising=False)
    with socket.socket() as taken:  # the command prints its address, then finds the port taken (exit 2)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["review", "--bids", str(tmp_path), "--allow-remote", "--port", str(taken.getsockname()[1])]) == 2
    captured = capsys.readouterr()
    token = re.search(r"\?secret=([A-Za-z0-9_-]+)", captured.out).group(1)
    assert (captured.out + captured.err).count(token) == 1


def test_a_worker_that_never_gets_ready_is_stopped_even_when_its_tab_never_came(tmp_path: Path) -> None:
    """A tab closed right after ``GET /`` never asks for its session: the start timeout must still free the slot."""
    stuck = tmp_path / "stuck_worker.py"
    stuck.write_text("import time\nprint('loading forever', flush=True)\ntime.sleep(3600)\n")
    front = FrontProcess(tmp_path, max_sessions=1, worker=stuck, start_timeout_s=1.0)
    try:
        assert _raw(front.port, f"/?secret={TOKEN}")[0] == 302  # the redirect is not followed: the tab is gone
        deadline = time.monotonic() + 10
        while not (pids := [worker.pid for worker in front.workers()]) and time.monotonic() < deadline:
            time.sleep(0.05)  # the worker process is started just after the answer
        assert len(pids) == 1
        assert _gone(pids, 10), "a worker that never got ready kept its slot"
        assert _raw(front.port, f"/?secret={TOKEN}")[0] == 302  # the slot is free again (not the full page, 503)
    finally:
        front.stop()


def test_the_front_stops_at_once_with_a_tab_connected(tmp_path: Path) -> None:
    """Ctrl-C or SIGTERM: workers are stopped first, so open websockets end cleanly and nothing waits for them."""
    front = FrontProcess(tmp_path)
    tab = Tab()
    status, body, url = tab.get(f"{front.url}/?secret={TOKEN}")
    session_id, pid = url.split("/s/")[1].split("/")[0], _pid(body)
    cookies = {cookie.name: cookie.value for cookie in tab.jar}
    ended: dict[str, object] = {}

    async def connected_tab() -> None:
        async with aiohttp.ClientSession(cookies=cookies) as session:
            async with session.ws_connect(f"{front.url}/s/{session_id}/ws") as socket_:
                ended["connected"] = True
                ended["message"] = (await socket_.receive(timeout=30)).type

    import threading

    thread = threading.Thread(target=lambda: _run(connected_tab()))
    thread.start()
    deadline = time.monotonic() + 10
    while "connected" not in ended and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    front.process.terminate()
    front.process.wait(timeout=30)
    stopped_s = time.monotonic() - started
    thread.join(timeout=30)
    assert stopped_s < 3.0, f"the front took {stopped_s:.1f} s to stop"
    assert ended["message"] == aiohttp.WSMsgType.CLOSE  # a close frame, not a dropped connection
    assert _gone([pid], 5)
