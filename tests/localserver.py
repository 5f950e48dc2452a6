"""A scriptable HTTP server on 127.0.0.1 for download tests (no real network anywhere).

Routes map a path to a behaviour: serve bytes (honouring Range), fail with a status, drop the
connection after N bytes the first K times, or answer with a Google-Drive-style confirmation
page that leads to the real file. Hostile behaviours too: dripping bytes, lying Content-Length or
Content-Range, 416 to every Range, redirects, nested confirmation pages. ``add_drive`` imitates
Google Drive's current pages as gdown expects them (uc?export=download redirecting to the
usercontent host, the virus-scan warning form with hidden inputs, a cookie round trip, quota pages).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


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
    # Takes over the request: answers it itself (returns None) or names the route whose bytes to send.
    respond: Callable[[BaseHTTPRequestHandler], Route | None] | None = None

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
                route.requests.append({"path": path, "range": self.headers.get("Range"),
                                       "cookie": self.headers.get("Cookie")})
                if route.respond is not None:
                    route = route.respond(self)
                    if route is None:
                        return
                    route.requests.append({"path": path, "range": self.headers.get("Range"),
                                           "cookie": self.headers.get("Cookie")})
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
        # A short poll: shutdown() waits for it, at the end of every test that used a server.
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
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


# --------------------------------------------------------------------------- Google Drive, as of gdown 6.x

QUOTA_SUBCAPTION = ("Too many users have viewed or downloaded this file recently. Please try accessing the file "
                    "again later. If the file you are trying to access is particularly large or is shared with "
                    "many people, it may take up to 24 hours to be able to view or download the file.")


def drive_warning_page(action: str, file_id: str, uuid: str, name: str = "ILGnet-AVA1.caffemodel") -> str:
    """Drive's current "Virus scan warning" page: a GET form whose hidden inputs make the download URL."""
    return (
        '<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title><meta http-equiv="content-type"'
        ' content="text/html; charset=utf-8"/></head><body><div class="uc-main"><div id="uc-text">'
        '<p class="uc-warning-caption">Google Drive can\'t scan this file for viruses.</p>'
        f'<p class="uc-warning-subcaption"><span class="uc-name-size"><a href="/open?id={file_id}">{name}</a>'
        ' (44M)</span> is too large for Google to scan for viruses. Would you still like to download this file?</p>'
        f'<form id="download-form" action="{action}" method="get">'
        '<input type="submit" id="uc-download-link" class="goog-inline-block jfk-button jfk-button-action"'
        ' value="Download anyway"/>'
        f'<input type="hidden" name="id" value="{file_id}"><input type="hidden" name="export" value="download">'
        f'<input type="hidden" name="confirm" value="t"><input type="hidden" name="uuid" value="{uuid}">'
        '</form></div></div><div class="uc-footer"><hr class="uc-footer-divider"></div></body></html>'
    )


def drive_error_page(title: str, caption: str, subcaption: str) -> str:
    return (
        f'<!DOCTYPE html><html><head><title>{title}</title></head><body><div class="uc-main"><div id="uc-text">'
        f'<p class="uc-error-caption">{caption}</p><p class="uc-error-subcaption">{subcaption}</p>'
        '</div></div></body></html>'
    )


@dataclass
class DriveFile:
    """What the imitation saw: the tokens it issued and every request's path and cookies."""

    file_id: str
    uuid: str = "5f0a2c1e-7d3b-4c1a-9e2f-0b1c2d3e4f5a"
    cookie: str = "download_warning_13058876669334088843=ok"
    quota: bool = False  # answer with Drive's "too many users" page
    require_cookie: bool = True  # the confirmed request must send the warning page's cookie back
    data_route: Route | None = None
    warnings_served: int = 0


def add_drive(server: LocalServer, file_id: str, data: bytes, **kwargs) -> DriveFile:
    """``/uc?export=download&id=ID`` (drive.google.com) 303s to ``/download?id=ID&export=download``
    (drive.usercontent.google.com), which answers the warning form and sets a cookie; the form's
    request (id, export, confirm, uuid) with the cookie gets the file, Range honoured."""
    drive = DriveFile(file_id, **kwargs)
    drive.data_route = Route(data=data)

    def uc(handler: BaseHTTPRequestHandler) -> Route | None:
        query = parse_qs(urlsplit(handler.path).query)
        if query.get("id") != [file_id]:
            handler.send_error(404)
            return None
        handler.send_response(303)
        handler.send_header("Location", f"{server.base}/download?id={file_id}&export=download")
        handler.send_header("Content-Length", "0")
        handler.end_headers()
        return None

    def usercontent(handler: BaseHTTPRequestHandler) -> Route | None:
        query = parse_qs(urlsplit(handler.path).query)
        if query.get("id") != [file_id]:
            handler.send_error(404)
            return None
        if drive.quota:
            page = drive_error_page("Google Drive - Quota exceeded",
                                    "Sorry, you can&#39;t view or download this file at this time.", QUOTA_SUBCAPTION)
            _send_html(handler, page)
            return None
        cookie_ok = not drive.require_cookie or drive.cookie in (handler.headers.get("Cookie") or "")
        if query.get("confirm") == ["t"] and query.get("uuid") == [drive.uuid] and cookie_ok:
            return drive.data_route
        drive.warnings_served += 1
        _send_html(handler, drive_warning_page(f"{server.base}/download", file_id, drive.uuid),
                   {"Set-Cookie": f"{drive.cookie}; Path=/; HttpOnly"})
        return None

    server.routes["/uc"] = Route(respond=uc)
    server.routes["/download"] = Route(respond=usercontent)
    return drive


def _send_html(handler: BaseHTTPRequestHandler, page: str, headers: dict[str, str] | None = None) -> None:
    body = page.encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.end_headers()
    handler.wfile.write(body)


def nested_page(path: str) -> str:
    """A confirmation page that leads to another one, endlessly (``html_fn`` for a route)."""
    n = int(path.rpartition("n=")[2] or 0) if "n=" in path else 0
    return f'<html><a href="/uc?confirm=t&amp;n={n + 1}">Download anyway</a></html>'
