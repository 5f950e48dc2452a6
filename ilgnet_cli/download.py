"""Resumable, verified HTTP downloads with mirrors, used for weights and datasets.

* data goes to ``DEST.part`` and is renamed to ``DEST`` only when complete and verified;
* an interrupted transfer resumes with ``Range: bytes=N-`` (a 200 reply restarts cleanly);
* transient failures (connection drops, timeouts, 5xx, 429) are retried with exponential
  backoff; permanent ones (404, 403, 410) move straight to the next mirror;
* a checksum or size mismatch discards the data and tries the next mirror;
* Google Drive's "can't scan this file for viruses" confirmation page is followed.
"""

from __future__ import annotations

import hashlib
import html
import http.client
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

USER_AGENT = "ilgnet-cli (+https://github.com/ilgnet/ilgnet-cli)"
CHUNK = 1 << 20
PERMANENT_HTTP = {400, 401, 403, 404, 410, 451}

ProgressFn = Callable[[int, int | None], None]  # (bytes done, total or None)


class DownloadError(Exception):
    """All sources failed; ``str()`` names each source and why."""


@dataclass(frozen=True)
class Checksum:
    algorithm: str  # "sha256", "sha1", "md5"
    hexdigest: str

    @classmethod
    def parse(cls, text: str) -> Checksum:
        """``sha256:abc...`` -> Checksum."""
        algo, _, digest = text.partition(":")
        if not digest or algo not in hashlib.algorithms_available:
            raise ValueError(f"checksum must look like sha256:<hex>, got {text!r}")
        return cls(algo.lower(), digest.lower())

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


def _gdrive_confirm_url(page: str, base_url: str) -> str | None:
    """URL behind Google Drive's large-file warning page, or None if this is not one."""
    form = re.search(r'<form[^>]*id="download-form"[^>]*action="([^"]+)"(.*?)</form>', page, re.S)
    if form:
        action = html.unescape(form.group(1))
        inputs = re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2))
        query = urllib.parse.urlencode([(k, html.unescape(v)) for k, v in inputs])
        return urllib.parse.urljoin(base_url, action) + ("&" if "?" in action else "?") + query
    # Older pages: a link carrying confirm=TOKEN.
    link = re.search(r'href="([^"]*confirm=[^"]+)"', page)
    if link:
        return urllib.parse.urljoin(base_url, html.unescape(link.group(1)))
    return None


class _Permanent(Exception):
    pass


def _open(url: str, offset: int, timeout: float):
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch_once(url: str, part: Path, timeout: float, progress: ProgressFn | None,
                stats: DownloadStats, expected_size: int | None) -> None:
    """One HTTP attempt, appending to ``part``. Raises on any failure (caller retries)."""
    offset = part.stat().st_size if part.exists() else 0
    if expected_size is not None and offset == expected_size:
        return
    try:
        resp = _open(url, offset, timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # we already have everything the server has
            return
        if exc.code in PERMANENT_HTTP:
            raise _Permanent(f"HTTP {exc.code}") from None
        raise
    with resp:
        ctype = resp.headers.get("Content-Type", "")
        if ctype.startswith("text/html"):
            page = resp.read(2 << 20).decode("utf-8", "replace")
            confirm = _gdrive_confirm_url(page, resp.geturl())
            if confirm is None or confirm == url:
                raise _Permanent("server sent an HTML page instead of the file (quota or login page?)")
            _fetch_once(confirm, part, timeout, progress, stats, expected_size)
            return
        status = resp.status
        if offset and status == 206:
            stats.resumed_from.append(offset)
            mode = "ab"
        else:
            offset, mode = 0, "wb"  # server ignored the Range header: start over
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else expected_size
        done = offset
        with part.open(mode) as out:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                out.write(block)
                done += len(block)
                if progress:
                    progress(done, total)
        if total is not None and done < total:
            raise http.client.IncompleteRead(b"", total - done)


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
) -> Path:
    """Download the first source that yields a verified file to ``dest``; returns ``dest``.

    ``retries`` is per source. A partial ``dest.part`` left by a killed run is resumed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    stats = stats if stats is not None else DownloadStats()
    if not urls:
        raise DownloadError(f"no source known for {dest.name}")
    for url in urls:
        for attempt in range(retries + 1):
            stats.attempts += 1
            try:
                _fetch_once(url, part, timeout, progress, stats, expected_size)
            except _Permanent as exc:
                stats.failures.append(f"{url}: {exc}")
                break
            except (OSError, http.client.HTTPException, urllib.error.URLError) as exc:
                if isinstance(exc, urllib.error.HTTPError):
                    reason = f"HTTP {exc.code} {exc.reason}"
                else:
                    reason = f"{type(exc).__name__}: {getattr(exc, 'reason', None) or exc}"
                stats.failures.append(f"{url}: {reason}")
                if attempt < retries:
                    time.sleep(backoff * 2 ** attempt)
                    continue
                break
            problem = _verify(part, checksum, expected_size)
            if problem:
                stats.failures.append(f"{url}: {problem}")
                part.unlink(missing_ok=True)
                break
            os.replace(part, dest)
            stats.url = url
            return dest
    raise DownloadError(f"could not download {dest.name}: " + "; ".join(stats.failures[-len(urls) * 2:]))


def _verify(part: Path, checksum: Checksum | None, expected_size: int | None) -> str | None:
    size = part.stat().st_size if part.exists() else 0
    if expected_size is not None and size != expected_size:
        return f"size mismatch (expected {expected_size} bytes, got {size})"
    if checksum is not None:
        actual = file_digest(part, checksum.algorithm)
        if actual != checksum.hexdigest:
            return f"checksum mismatch ({checksum.algorithm} expected {checksum.hexdigest}, got {actual})"
    return None
