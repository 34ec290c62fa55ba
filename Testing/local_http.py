"""A small HTTP server on 127.0.0.1 for download tests: serves bytes, honours Range, can break off."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Served:
    """What the server holds: path -> bytes, and how it misbehaves."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after_bytes: int | None = None  # close the connection after this many body bytes (once)
    honour_range: bool = True
    send_length: bool = True  # False: no Content-Length, the body ends when the connection closes
    requests: list[dict] = field(default_factory=list)
    hold_after_bytes: int | None = None  # send this many body bytes, then wait for `release` (once)
    release: threading.Event = field(default_factory=threading.Event)


class LocalServer:
    """``with LocalServer() as server: server.url('/m.zip')``; bound to 127.0.0.1 on a free port."""

    def __init__(self) -> None:
        self.served = Served()
        served = self.served

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                served.requests.append({"path": self.path, "range": self.headers.get("Range")})
                body = served.files.get(self.path)
                if body is None:
                    self.send_error(404, "not found")
                    return
                start = 0
                header = self.headers.get("Range")
                if header and served.honour_range:
                    start = int(header.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                chunk = body[start:]
                if served.send_length:
                    self.send_header("Content-Length", str(len(chunk)))
                else:
                    self.close_connection = True
                self.end_headers()
                if served.hold_after_bytes is not None:
                    hold = served.hold_after_bytes
                    served.hold_after_bytes = None
                    self.wfile.write(chunk[:hold])
                    self.wfile.flush()
                    served.release.wait(timeout=300)
                    chunk = chunk[hold:]
                if served.cut_after_bytes is not None:
                    cut = served.cut_after_bytes
                    served.cut_after_bytes = None
                    self.wfile.write(chunk[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def url(self, path: str) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{path}"

    def __enter__(self) -> "LocalServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
