"""A scriptable HTTP server on 127.0.0.1 for download tests (no real network anywhere).

Routes map a path to a behaviour: serve bytes (honouring Range), fail with a status, drop the
connection after N bytes the first K times, or answer with a Google-Drive-style confirmation
page that leads to the real file. Hostile behaviours too: dripping bytes, lying Content-Length or
Content-Range, 416 to every Range, redirects, nested confirmation pages.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Route:
    data: bytes | None = None
    file: Path | None = None
    status: int = 200
    drop_after: int | None = None  # bytes sent before the connection is cut
    drop_times: int = 0  # how many requests get dropped
    ignore_range: bool = False
    content_type: str = "application/octet-stream"
    html: str | None = None
    # Hostile behaviours, for tests/test_hostile_download.py:
    html_fn: Callable[[str], str] | None = None  # page built from the request path (nested confirmations)
    drip: float | None = None  # seconds between single bytes of the body
    drip_headers: float | None = None  # seconds between single bytes of an endless header
    content_length: str | None = None  # a Content-Length that lies ("" = none sent)
    content_range: str | None = None  # a Content-Range that lies (206 replies)
    content_range_start: int | None = None  # 206 replies start here, whatever was asked (header agrees)
    range_status: int | None = None  # answer every Range request with this status (e.g. 416)
    headers: dict[str, str] = field(default_factory=dict)  # extra headers (Location, Content-Encoding)
    body_status: int | None = None  # send the body with this status instead of 200 (e.g. 204)
    requests: list[dict] = field(default_factory=list)

    def size(self) -> int:
        return self.file.stat().st_size if self.file else len(self.data or b"")

    def read(self, start: int, end: int) -> bytes:
        if self.file:
            with self.file.open("rb") as fh:
                fh.seek(start)
                return fh.read(end - start)
        return (self.data or b"")[start:end]


class LocalServer:
    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                path = self.path
                route = server.routes.get(path) or server.routes.get(path.split("?")[0])
                if route is None:
                    self.send_error(404)
                    return
                route.requests.append({"path": path, "range": self.headers.get("Range")})
                if route.drip_headers is not None:
                    try:
                        self.wfile.write(b"HTTP/1.0 200 OK\r\nX-Pad: ")
                        for _ in range(10_000):
                            self.wfile.write(b"a")
                            self.wfile.flush()
                            time.sleep(route.drip_headers)
                    except OSError:
                        pass
                    return
                if 300 <= route.status < 400:
                    self.send_response(route.status)
                    for key, value in route.headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if route.status != 200:
                    self.send_error(route.status)
                    return
                if route.html is not None or route.html_fn is not None:
                    body = (route.html_fn(path) if route.html_fn else route.html).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "text/html; charset=utf-8")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    try:
                        for i in range(0, len(body), 1 if route.drip is not None else max(1, len(body))):
                            if route.drip is not None:
                                time.sleep(route.drip)
                            self.wfile.write(body[i:i + (1 if route.drip is not None else len(body))])
                            self.wfile.flush()
                    except (BrokenPipeError, ConnectionResetError):
                        pass
                    return
                size = route.size()
                start = 0
                rng = self.headers.get("Range")
                m = re.match(r"bytes=(\d+)-", rng or "")
                if m and route.range_status is not None:
                    self.send_response(route.range_status)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if m and not route.ignore_range:
                    start = int(m.group(1)) if route.content_range_start is None else route.content_range_start
                    if start >= size:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{size}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", route.content_range or f"bytes {start}-{size - 1}/{size}")
                else:
                    self.send_response(route.body_status or 200)
                self.send_header("Content-Type", route.content_type)
                if route.content_length is None:
                    self.send_header("Content-Length", str(size - start))
                elif route.content_length:
                    self.send_header("Content-Length", route.content_length)
                else:
                    self.close_connection = True  # no length: the body ends when the connection does
                self.send_header("Accept-Ranges", "bytes")
                for key, value in route.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                limit = size
                if route.drop_after is not None and route.drop_times > 0:
                    route.drop_times -= 1
                    limit = min(size, start + route.drop_after)
                pos = start
                try:
                    while pos < limit:
                        if route.drip is not None:
                            time.sleep(route.drip)
                        step = 1 if route.drip is not None else 1 << 20
                        chunk = route.read(pos, min(limit, pos + step))
                        self.wfile.write(chunk)
                        if route.drip is not None:
                            self.wfile.flush()
                        pos += len(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    return
                if limit < size:
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def base(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base + path

    def add(self, path: str, **kwargs) -> Route:
        route = Route(**kwargs)
        self.routes[path] = route
        return route

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
