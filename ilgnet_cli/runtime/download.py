"""Resumable, verified HTTP downloads with mirrors, used for weights and datasets.

* data goes to ``DEST.part`` and is renamed to ``DEST`` only when complete and verified;
* an interrupted transfer resumes with ``Range: bytes=N-`` (a 200 reply restarts cleanly);
* transient failures (connection drops, timeouts, 5xx, 429) are retried with exponential
  backoff; permanent ones (404, 403, 410) move straight to the next mirror;
* a checksum or size mismatch discards the data and tries the next mirror;
* Google Drive is fetched the way gdown fetches it today: share links become
  ``uc?export=download&id=ID`` links, cookies set along the way are sent back, the "virus scan
  warning" form (its action plus hidden id/export/confirm/uuid inputs) is followed a few hops at
  most, and Drive's quota ("too many users") and other error pages end that source with Drive's
  own one-line reason.

Servers are not trusted. Every attempt is bounded: it stops at the expected size (a longer
body fails that source) or, when the size is unknown, at ``max_bytes``; it fails when the
transfer is slower than ``min_rate`` over any ``rate_window`` or outlives ``deadline``. A
resume is kept only on a 206 whose Content-Range starts at our offset; a 416 starts over.
Only http(s) URLs are fetched, redirects included. ``.part`` files are never followed through
a symlink. Every failure ends as one ``DownloadError`` line naming each source once and why
(its last reason; ``DownloadError.sources`` has them one by one).
"""

from __future__ import annotations

import errno
import hashlib
import html
import http.client
import http.cookiejar
import json
import os
import re
import socket
import ssl
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ilgnet_cli.errors import IlgnetError
from ilgnet_cli.runtime.text import clip

USER_AGENT = "ilgnet-cli (+https://github.com/ilgnet/ilgnet-cli)"
CHUNK = 1 << 20
PERMANENT_HTTP = {400, 401, 403, 404, 410, 451}

# Caps on a download whose size is not known in advance (``max_bytes``), per kind of file.
MAX_METADATA_BYTES = 16 << 20  # lists, manifests, AVA.txt: a few MiB at most
MAX_WEIGHTS_BYTES = 2 << 30  # caffemodels / safetensors: ILGNet is ~0.6 GB
MAX_ARCHIVE_BYTES = 64 << 30  # dataset archives (AVA is ~32 GB)
DEFAULT_MAX_BYTES = MAX_ARCHIVE_BYTES  # callers that know their kind pass a tighter cap
# Liveness: an attempt moving fewer than MIN_RATE bytes/s over a RATE_WINDOW fails (a drip),
# and no attempt outlives DEADLINE seconds (an interrupted download resumes on the next try).
MIN_RATE = 1024
RATE_WINDOW = 30.0
DEADLINE = 6 * 3600.0
MAX_BACKOFF = 60.0  # seconds between retries, however many retries were asked for
MAX_CONFIRM_HOPS = 3  # Google Drive confirmation pages followed per attempt
HTML_PAGE_CAP = 64 << 10  # bytes of an HTML page read when looking for a confirmation link
MAX_REDIRECTS = 10
ALLOWED_SCHEMES = ("http", "https")

ProgressFn = Callable[[int, int | None], None]  # (bytes done, total or None)


@dataclass(frozen=True)
class SourceFailure:
    """Why one source gave no file: its last reason, and how many attempts it had."""

    url: str
    reason: str
    attempts: int = 1
    unreachable: bool = False  # no connection at all (no network, DNS, refused): not the server's answer

    def line(self) -> str:
        tries = f" ({self.attempts} attempts)" if self.attempts > 1 else ""
        return f"{clip(self.url)}: {self.reason}{tries}"


class DownloadError(IlgnetError):
    """All sources failed; ``str()`` is one line naming each source once and why.

    ``sources`` holds the same per source, for callers that show them one a line.
    """

    def __init__(self, message: str, sources: tuple[SourceFailure, ...] = ()) -> None:
        super().__init__(message)
        self.sources = sources



@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "sha256", "sha1", "md5"
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """``sha256:abc...`` -> Checksum; the digest must be hex of the algorithm's length."""
        algo, _, digest = str(text).partition(":")
        algo, digest = algo.lower(), digest.lower()
        # shake_* digests have no fixed length (hexdigest() would need one): not usable here.
        if algo not in hashlib.algorithms_available or algo.startswith("shake"):
            raise ValueError(f"checksum must look like sha256:<hex>, got {clip(repr(text))}")
        if len(digest) != 2 * hashlib.new(algo).digest_size or not re.fullmatch(r"[0-9a-f]+", digest):
            raise ValueError(f"checksum {clip(repr(text))} is not a {algo} hex digest")
        return cls(algo, digest)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


@dataclass
class DownloadStats:
    """What a download did, for tests and the summary line."""

    attempts: int = 0
    resumed_from: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    url: str | None = None


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


# Bounded tag and attribute patterns: every match attempt scans at most a few KB, so a hostile
# page costs linear time (an unbounded ``[^>]*...(.*?)`` pattern went quadratic on one).
_TAG = re.compile(r"<(/?)(form|input|a)\b([^<>]{0,4000})>", re.I)
_ATTR = re.compile(r"""([\w-]{1,64})\s*=\s*(?:"([^"]*)"|'([^']*)')""")


def _attrs(text: str) -> dict[str, str]:
    return {m.group(1).lower(): html.unescape(m.group(2) if m.group(2) is not None else m.group(3))
            for m in _ATTR.finditer(text)}


DRIVE_HOSTS = ("drive.google.com", "docs.google.com")
_DRIVE_FILE_PATH = re.compile(r"/file(?:/u/\d{1,3})?/d/([-\w]{10,200})(?:/(?:view|edit|preview))?/?")
_DRIVE_ID = re.compile(r"[-\w]{10,200}")


def drive_download_url(url: str) -> str:
    """A Google Drive share or open link as its direct ``uc?export=download&id=ID`` form
    (what gdown requests first); every other URL unchanged."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() not in ALLOWED_SCHEMES or (parts.hostname or "").lower() not in DRIVE_HOSTS:
        return url
    query = urllib.parse.parse_qs(parts.query)
    ids = query.get("id", [])
    m = _DRIVE_FILE_PATH.fullmatch(parts.path)
    if m:
        file_id = m.group(1)
    elif parts.path in ("/uc", "/open") and len(ids) == 1 and _DRIVE_ID.fullmatch(ids[0]):
        if parts.path == "/uc" and query.get("export") == ["download"]:
            return url  # already the download link: keep any other parameter it carries
        file_id = ids[0]
    else:
        return url
    return f"https://drive.google.com/uc?export=download&id={file_id}"


# Drive's error pages ("Too many users have viewed or downloaded this file recently", "Quota
# exceeded", no permission) carry the reason in this paragraph; bounded so a page costs linear time.
_DRIVE_ERROR = re.compile(r"""<p class=["']uc-error-subcaption["']>((?:[^<]|<(?!/p>)){0,2000})</p>""", re.I)
_TITLE = re.compile(r"<title>([^<]{0,300})</title>", re.I)
_DOWNLOAD_URL = re.compile(r'"downloadUrl":"((?:[^"\\]|\\.){1,4000})"')
_ANY_TAG = re.compile(r"<[^<>]{0,400}>")


def _drive_page_error(page: str, page_url: str) -> str | None:
    """Google's own one-line reason when ``page`` is one of Drive's error pages, else None."""
    page = page[:HTML_PAGE_CAP]
    if (urllib.parse.urlsplit(page_url).hostname or "").lower() == "accounts.google.com":
        return "Google asks to sign in: the file is not shared with 'Anyone with the link'"
    m = _DRIVE_ERROR.search(page)
    if m:
        # HTML text: its runs of white space are one space, as a browser shows them
        return "Google Drive: " + clip(" ".join(html.unescape(_ANY_TAG.sub(" ", m.group(1))).split()), 160)
    title = _TITLE.search(page)
    if title and "quota exceeded" in title.group(1).lower():
        return "Google Drive: download quota exceeded for this file (it may take up to 24 hours)"
    return None


def _gdrive_confirm_url(page: str, base_url: str) -> str | None:
    """URL behind Google Drive's virus scan warning page, or None if this is not one.

    Today's page is a GET form (``id="download-form"``) whose action is the usercontent host's
    ``/download``; its hidden inputs (id, export, confirm, uuid) complete the action's query.
    Older pages had a link carrying ``confirm=TOKEN``, or a ``"downloadUrl"`` in a script.
    """
    action: str | None = None
    inputs: list[tuple[str, str]] = []
    link: str | None = None
    in_form = False
    for m in _TAG.finditer(page[:HTML_PAGE_CAP]):
        closing, tag = m.group(1), m.group(2).lower()
        if tag == "form":
            if closing:
                if in_form:
                    break
                continue
            a = _attrs(m.group(3))
            if a.get("id") == "download-form" and a.get("action"):
                action, in_form = a["action"], True
        elif tag == "input" and in_form and not closing:
            a = _attrs(m.group(3))
            # Only hidden inputs are the form's data: the "Download anyway" button is not.
            if a.get("type", "").lower() == "hidden" and "name" in a and "value" in a:
                inputs.append((a["name"], a["value"]))
        elif tag == "a" and link is None and not closing:
            href = _attrs(m.group(3)).get("href", "")
            if "confirm=" in href:
                link = href
    if action is not None:
        # A GET form replaces the action's query in a browser; gdown (and Drive's own actions,
        # which may carry id/export) merge them, hidden inputs winning: each name once.
        parts = urllib.parse.urlsplit(urllib.parse.urljoin(base_url, action))
        params = dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))
        params.update(inputs)
        return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(params), fragment=""))
    if link is not None:
        return urllib.parse.urljoin(base_url, link)
    found = _DOWNLOAD_URL.search(page[:HTML_PAGE_CAP])
    if found:
        try:
            return urllib.parse.urljoin(base_url, json.loads(f'"{found.group(1)}"'))
        except ValueError:
            return None
    return None


class _Permanent(Exception):
    """This source cannot give the file: move on to the next one without retrying."""


class _Transient(Exception):
    """This attempt failed but another may work (the caller retries with backoff)."""


def _check_scheme(url: str) -> None:
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise _Permanent(f"not an http(s) URL ({clip(scheme or 'no scheme', 20)})")


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """urllib's redirects, limited to http(s) (it would follow ftp://) and MAX_REDIRECTS."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib API
        newurl = urllib.parse.urljoin(req.full_url, newurl)
        if urllib.parse.urlsplit(newurl).scheme.lower() not in ALLOWED_SCHEMES:
            raise _Permanent(f"redirect to a non-http(s) URL ({clip(newurl, 40)})")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Watchdog:
    """Shuts a connection's socket at the attempt's deadline, whatever http.client is reading.

    Socket timeouts only catch silence; a server dripping header or body bytes would keep a
    blocking read alive for ever. Shutting the socket down makes that read fail at once.
    """

    def __init__(self, deadline_at: float) -> None:
        self.deadline_at = deadline_at
        self.timers: list[threading.Timer] = []

    def connection(self, base: type[http.client.HTTPConnection]) -> Callable[..., http.client.HTTPConnection]:
        watchdog = self

        class Connection(base):  # type: ignore[misc, valid-type]  # a subclass of whichever class is passed in
            def connect(self) -> None:
                super().connect()
                sock = self.sock
                timer = threading.Timer(max(0.0, watchdog.deadline_at - time.monotonic()), _shut, (sock,))
                timer.daemon = True
                watchdog.timers.append(timer)
                timer.start()

        return Connection

    def cancel(self) -> None:
        for timer in self.timers:
            timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.watchdog = watchdog

    def http_open(self, req):  # noqa: ANN001 - urllib API
        return self.do_open(self.watchdog.connection(http.client.HTTPConnection), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    _context: ssl.SSLContext | None  # set by HTTPSHandler.__init__; typeshed omits the private attribute

    def __init__(self, watchdog: _Watchdog) -> None:
        super().__init__()
        self.watchdog = watchdog

    def https_open(self, req):  # noqa: ANN001 - urllib API
        return self.do_open(self.watchdog.connection(http.client.HTTPSConnection), req, context=self._context)


def _opener(watchdog: _Watchdog, jar: http.cookiejar.CookieJar | None = None) -> urllib.request.OpenerDirector:
    # Drive's warning page sets cookies the confirmed request must send back (as gdown's session does).
    cookies = urllib.request.HTTPCookieProcessor(jar if jar is not None else http.cookiejar.CookieJar())
    return urllib.request.build_opener(_RedirectHandler, cookies, _HTTPHandler(watchdog), _HTTPSHandler(watchdog))


@dataclass
class _Limits:
    """What bounds one attempt."""

    expected_size: int | None
    max_bytes: int
    deadline_at: float  # time.monotonic() value
    min_rate: float
    rate_window: float
    timeout: float
    watchdog: _Watchdog | None = None

    def cap(self) -> int:
        return self.expected_size if self.expected_size is not None else self.max_bytes

    def pace(self) -> Callable[[int], None]:
        """A check to call with the byte count after each read: fails a drip or a late attempt."""
        window_start, window_done = time.monotonic(), 0

        def check(done: int) -> None:
            nonlocal window_start, window_done
            now = time.monotonic()
            if now > self.deadline_at:
                raise _Transient(f"deadline passed after {done} bytes")
            if now - window_start >= self.rate_window:
                if (done - window_done) / (now - window_start) < self.min_rate:
                    raise _Transient(f"too slow (under {self.min_rate:.0f} bytes/s)")
                window_start, window_done = now, done

        return check

    def socket_timeout(self) -> float:
        left = self.deadline_at - time.monotonic()
        if left <= 0:
            raise _Transient("deadline for the attempt passed")
        return max(0.01, min(self.timeout, left))


def _open(url: str, offset: int, timeout: float, watchdog: _Watchdog | None = None,
          jar: http.cookiejar.CookieJar | None = None):
    _check_scheme(url)
    # identity: we store exactly the bytes sent, never inflate them (no gzip bomb).
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    opener = (_opener(watchdog, jar) if watchdog else
              urllib.request.build_opener(_RedirectHandler, urllib.request.HTTPCookieProcessor(jar)))
    return opener.open(urllib.request.Request(url, headers=headers), timeout=timeout)


def _part_size(part: Path) -> int:
    """Bytes in a resumable ``.part``; anything that is not our regular file is removed first."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    if stat.S_ISDIR(st.st_mode):
        raise _Permanent(f"{part.name} is a directory")
    if not stat.S_ISREG(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        part.unlink()  # a symlink, fifo or someone else's file: never write through it
        return 0
    return st.st_size


def _open_part(part: Path, offset: int):
    """``part`` for writing at ``offset`` (0: a new file), never through a symlink; umask applies."""
    flags = os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    if offset:
        flags |= os.O_APPEND
    else:
        part.unlink(missing_ok=True)
        flags |= os.O_CREAT | os.O_EXCL
    fd = os.open(part, flags, 0o666)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != offset:
            raise _Transient(f"{part.name} changed under us")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "wb")
    except BaseException:
        os.close(fd)
        raise


_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.I)


def _content_length(resp) -> int | None:
    value = (resp.headers.get("Content-Length") or "").strip()
    return int(value) if value.isascii() and value.isdigit() else None


def _resume_start(resp, offset: int, limits: _Limits) -> int | None:
    """Accept a 206 only when its Content-Range runs from ``offset`` to the end; returns the full size.

    Any other range would not line up with what we have (or would leave a hole at the end).
    """
    header = resp.headers.get("Content-Range") or ""
    m = _CONTENT_RANGE.match(header)
    start, end = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
    total = int(m.group(3)) if m and m.group(3) != "*" else None
    if start != offset or end < start or (total is not None and end + 1 != total):
        raise _Restart(f"206 with Content-Range {clip(repr(header), 40)} for offset {offset}")
    if total is not None and limits.expected_size is not None and total != limits.expected_size:
        raise _Permanent(f"server has {total} bytes, expected {limits.expected_size}")
    return end + 1


class _Restart(Exception):
    """The partial file cannot be continued: discard it and start from byte 0."""


def _fetch_once(url: str, part: Path, limits: _Limits, progress: ProgressFn | None,
                stats: DownloadStats) -> None:
    """One HTTP attempt (following a few confirmation pages), writing ``part``. Raises on failure."""
    url = drive_download_url(url)
    jar = http.cookiejar.CookieJar()  # one per attempt: its hops share cookies, as in a browser
    warning = False  # a Drive virus scan warning page was seen
    for _ in range(MAX_CONFIRM_HOPS + 1):
        offset = _part_size(part)
        if offset > limits.cap():
            part.unlink()
            offset = 0
        if limits.expected_size is not None and offset == limits.expected_size:
            return
        try:
            resp = _open(url, offset, limits.socket_timeout(), limits.watchdog, jar)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and offset:
                # The server has no bytes past our offset: the part may be truncated or stale.
                # Only a verified part counts as complete; otherwise start over.
                raise _Restart("server refused the resume range (HTTP 416)") from None
            if exc.code in PERMANENT_HTTP or 300 <= exc.code < 400:
                raise _Permanent(f"HTTP {exc.code} {clip(exc.reason, 40)}") from None
            raise _Transient(f"HTTP {exc.code} {clip(exc.reason, 40)}") from None
        with resp:
            limits.socket_timeout()  # the watchdog may have cut the headers short: that is no reply
            ctype = (resp.headers.get("Content-Type") or "").lower()
            if "html" in ctype.split(";")[0]:
                page = _read_page(resp, limits).decode("utf-8", "replace")
                problem = _drive_page_error(page, resp.geturl())
                if problem:  # a quota lasts hours: the next source, not a retry in seconds
                    raise _Permanent(problem)
                confirm = _gdrive_confirm_url(page, resp.geturl())
                if confirm is not None and confirm == url:
                    raise _Permanent("Google Drive's virus scan warning came back after confirming it")
                if confirm is None:
                    raise _Permanent("server sent an HTML page instead of the file (quota or login page?)")
                warning = warning or "download-form" in page[:HTML_PAGE_CAP]
                _check_scheme(confirm)
                url = confirm
                continue
            _receive(resp, part, offset, limits, progress, stats)
            return
    what = "Google Drive virus scan warning" if warning else "confirmation"
    raise _Permanent(f"more than {MAX_CONFIRM_HOPS} {what} pages in a row")


def _read_page(resp, limits: _Limits) -> bytes:
    """At most HTML_PAGE_CAP bytes of a page, at the same pace as a file."""
    check, chunks, done = limits.pace(), [], 0
    while done < HTML_PAGE_CAP:
        block = resp.read1(HTML_PAGE_CAP - done)
        if not block:
            break
        chunks.append(block)
        done += len(block)
        check(done)
    limits.socket_timeout()
    return b"".join(chunks)


def _receive(resp, part: Path, offset: int, limits: _Limits, progress: ProgressFn | None,
             stats: DownloadStats) -> None:
    status = resp.status
    range_end = None
    if status == 206:
        range_end = _resume_start(resp, offset, limits)
        if offset:
            stats.resumed_from.append(offset)
    elif status == 200:
        offset = 0  # server ignored the Range header: start over
    else:
        raise _Permanent(f"HTTP {status} instead of the file")
    cap = limits.cap()
    length = _content_length(resp)
    if length is not None and offset + length > cap:
        kind = "longer than the expected" if limits.expected_size is not None else "more than"
        raise _Permanent(f"file is {kind} {cap} bytes (Content-Length {offset + length})")
    total = range_end or (offset + length if length is not None else limits.expected_size)
    if range_end is not None and range_end > cap:
        raise _Permanent(f"file is more than {cap} bytes (Content-Range)")
    done = offset
    check = limits.pace()
    with _open_part(part, offset) as out:
        while True:
            block = resp.read1(min(CHUNK, cap - done)) if done < cap else resp.read1(1)
            if not block:
                break
            if done >= cap:
                part.unlink(missing_ok=True)
                kind = "longer than the expected" if limits.expected_size is not None else "more than"
                raise _Permanent(f"file is {kind} {cap} bytes")
            out.write(block)
            done += len(block)
            if progress:
                progress(done, total)
            check(done - offset)
    limits.socket_timeout()  # a body cut short by the watchdog is not the whole file
    if total is not None and done < total:
        raise _Transient(f"connection closed after {done} of {total} bytes")


def _check_size_arg(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise DownloadError(f"{name} must be a whole number of bytes, got {clip(repr(value), 40)}")


def download(
    urls: list[str],
    dest: str | Path,
    *,
    checksum: Checksum | None = None,
    expected_size: int | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: ProgressFn | None = None,
    stats: DownloadStats | None = None,
    max_bytes: int | None = None,
    deadline: float | None = None,
    min_rate: float | None = None,
    rate_window: float | None = None,
    validate: Callable[[Path], str | None] | None = None,
) -> Path:
    """Download the first source that yields a verified file to ``dest``; returns ``dest``.

    ``retries`` is per source. A partial ``dest.part`` left by a killed run is resumed.
    ``max_bytes`` caps a download of unknown size (default ``DEFAULT_MAX_BYTES``; see the
    ``MAX_*_BYTES`` per kind); ``deadline`` (seconds, default ``DEADLINE``) bounds each
    attempt, ``min_rate`` bytes/s over each ``rate_window`` seconds keeps it moving.
    ``validate(dest)``, when given, runs after the size/checksum check: a returned message
    means this source gave an unusable file (it is removed and the next source is tried).
    """
    dest = Path(dest)
    stats = stats if stats is not None else DownloadStats()
    if isinstance(urls, str) or not all(isinstance(u, str) for u in urls or []):
        raise DownloadError(f"sources for {dest.name} must be a list of URLs")
    if not urls:
        raise DownloadError(f"no source known for {dest.name}")
    _check_size_arg("expected_size", expected_size)
    _check_size_arg("max_bytes", max_bytes)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        if expected_size is not None and _part_size(part) == expected_size and _verify(part, checksum, expected_size):
            part.unlink()  # a stale part of the right size would otherwise cost the first source its turn
    except _Permanent as exc:
        raise DownloadError(f"could not download {clip(dest.name)}: {exc}") from None
    sources: list[SourceFailure] = []
    for url in urls:
        reason, unreachable, tries = "", False, 0
        for attempt in range(retries + 1):
            stats.attempts += 1
            tries += 1
            deadline_at = time.monotonic() + (DEADLINE if deadline is None else deadline)
            watchdog = _Watchdog(deadline_at)
            limits = _Limits(expected_size, DEFAULT_MAX_BYTES if max_bytes is None else max_bytes, deadline_at,
                             MIN_RATE if min_rate is None else min_rate,
                             RATE_WINDOW if rate_window is None else rate_window, timeout, watchdog)
            try:
                try:
                    _fetch_once(url, part, limits, progress, stats)
                except _Restart as exc:
                    part.unlink(missing_ok=True)
                    raise _Transient(f"{exc}; starting over") from None
                finally:
                    watchdog.cancel()
            except _Permanent as exc:
                reason, unreachable = _note(stats, url, clip(exc, 160)), False
                break
            except (_Transient, OSError, http.client.HTTPException, ValueError) as exc:
                # OSError covers URLError, socket timeouts, ssl errors, RemoteDisconnected;
                # ValueError a URL urllib cannot parse (that one will not get better).
                late = time.monotonic() > deadline_at  # the watchdog cut the connection
                reason = _note(stats, url, "deadline for the attempt passed" if late else _reason(exc))
                unreachable = _unreachable(exc)
                if isinstance(exc, ValueError) or _is_bad_url(exc):
                    break
                if unreachable and attempt >= 1:  # no network: waiting longer will not bring it back
                    break
                if attempt < retries:
                    time.sleep(min(MAX_BACKOFF, backoff * 2 ** min(attempt, 30)))
                    continue
                break
            problem = _verify(part, checksum, expected_size)
            if problem:
                reason, unreachable = _note(stats, url, problem), False
                part.unlink(missing_ok=True)
                break
            os.replace(part, dest)
            stats.url = url
            problem = validate(dest) if validate else None
            if problem:
                stats.url = None
                reason, unreachable = _note(stats, url, clip(problem, 160)), False
                dest.unlink(missing_ok=True)
                break
            return dest
        sources.append(SourceFailure(url, reason, tries, unreachable))
    # Once per source (its last reason): retries of the same failure said nothing new.
    raise DownloadError(f"could not download {clip(dest.name)}: " + "; ".join(f.line() for f in sources),
                        tuple(sources))


def _note(stats: DownloadStats, url: str, reason: str) -> str:
    stats.failures.append(f"{clip(url)}: {reason}")
    return reason


def _unreachable(exc: BaseException) -> bool:
    """No connection was made (no network, unknown host, refused, unreachable)."""
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else exc
    return isinstance(reason, (socket.gaierror, ConnectionRefusedError)) or (
        isinstance(reason, OSError) and reason.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH))


def _is_bad_url(exc: BaseException) -> bool:
    return isinstance(exc, http.client.InvalidURL) or isinstance(getattr(exc, "reason", None), ValueError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, _Transient):
        return clip(exc, 160)
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "no space left on device"
    detail = getattr(exc, "reason", None) or exc
    if isinstance(detail, socket.gaierror):  # "[Errno -2] Name or service not known" says little
        return "cannot look up the host name"
    return clip(f"{type(exc).__name__}: {detail}", 160)


def _verify(part: Path, checksum: Checksum | None, expected_size: int | None) -> str | None:
    size = _part_size(part)
    if expected_size is not None and size != expected_size:
        return f"size mismatch (expected {expected_size} bytes, got {size})"
    if checksum is not None:
        actual = file_digest(part, checksum.algorithm)
        if actual != checksum.hexdigest:
            return f"checksum mismatch ({checksum.algorithm} expected {checksum.hexdigest}, got {actual})"
    return None
