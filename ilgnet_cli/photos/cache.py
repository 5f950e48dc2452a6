"""Score cache: SQLite (WAL) keyed by what determines a score.

Key: the file (absolute path, size, mtime, inode, ctime and a digest of its first and last 4
KiB: a photo replaced by one of the same size with its old mtime restored still misses, as the
replacement changes the inode or the ctime), the weights' sha256, the preprocessing version and
the mode (how it was decoded, ``+bf16`` for scores computed in bf16). A file that could not be
scored is remembered with the ``--max-pixels`` limit it was refused under, so a run with another
limit tries again. Writes are small transactions, so two overlapping runs and a kill -9 are
safe: at worst the last uncommitted batch is scored again.

The cache is only a speed-up: a database that is unusable (corrupt, locked for longer than the
timeout, disk full) never stops scoring. A corrupt one is set aside (``NAME.corrupt-TIME``) and
replaced, at open or, when the damage shows only later, at the end of the run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from ilgnet_cli.runtime.fsutil import db_text, set_aside_database, sqlite_files_not_regular

SCHEMA = """
CREATE TABLE IF NOT EXISTS scores_v2 (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    ctime_ns INTEGER NOT NULL,
    sample TEXT NOT NULL,
    weights TEXT NOT NULL,
    prep INTEGER NOT NULL,
    mode TEXT NOT NULL,
    score REAL,
    error TEXT,
    max_pixels INTEGER,
    meta TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (path, weights, prep, mode)
)
"""
SAMPLE = 4096  # bytes read from each end of a file for its sample digest
MAX_META = 1 << 20  # a cached row's JSON larger than this is not ours: a miss


@dataclass(frozen=True)
class FileKey:
    path: str  # absolute
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int
    sample: str  # sha256 of the first and last SAMPLE bytes

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileKey:
        absolute = os.path.abspath(path)
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(absolute, flags)
        try:
            st = os.fstat(fd)
            digest = hashlib.sha256()
            digest.update(os.pread(fd, SAMPLE, 0) if hasattr(os, "pread") else os.read(fd, SAMPLE))
            if st.st_size > SAMPLE:
                tail = max(SAMPLE, st.st_size - SAMPLE)
                digest.update(os.pread(fd, SAMPLE, tail) if hasattr(os, "pread") else b"")
        finally:
            os.close(fd)
        return cls(absolute, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns, digest.hexdigest()[:32])


@dataclass
class Cached:
    score: float | None
    error: str | None
    meta: dict[str, Any]


class ScoreCache:
    """Cached results of one weights file, for one preprocessing version."""

    def __init__(self, db_path: str | Path, weights_sha256: str, prep_version: int, mode: str) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.weights, self.prep, self.mode = weights_sha256, prep_version, mode
        self.problem: str | None = None
        self.corrupt = False
        self.conn = sqlite3.connect(str(self.db_path), timeout=30.0, isolation_level=None)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            # A valid header over garbage pages opens fine and fails later, query by query.
            check = self.conn.execute("PRAGMA quick_check(1)").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check failed: {str(check and check[0])[:80]}")
            self.conn.execute(SCHEMA)
        except BaseException:
            self.conn.close()
            raise

    def _failed(self, exc: Exception) -> None:
        self.problem = f"score cache stopped working ({exc}); the rest of the run was not cached"
        if not isinstance(exc, sqlite3.OperationalError):  # locked, read-only, full: not damage
            self.corrupt = True

    def get(self, key: FileKey, mode: str | None = None, max_pixels: int | None = None) -> Cached | None:
        """The cached result for ``key`` under ``mode`` (default: this cache's mode); a refusal
        counts only under the same ``max_pixels``."""
        if self.problem:
            return None
        try:
            row = self.conn.execute(
                "SELECT size, mtime_ns, ino, ctime_ns, sample, score, error, max_pixels, meta FROM scores_v2"
                " WHERE path=? AND weights=? AND prep=? AND mode=?",
                (db_text(key.path), self.weights, self.prep, mode or self.mode),
            ).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return None
        if row is None or tuple(row[:5]) != (key.size, key.mtime_ns, key.ino, key.ctime_ns, key.sample):
            return None
        if row[6] is not None and row[7] != max_pixels:
            return None
        return _cached(row[5], row[6], row[8])

    def put_many(self, items: list[tuple[FileKey, float | None, str | None, dict[str, Any]]],
                 max_pixels: int | None = None, mode: str | None = None) -> None:
        if not items or self.problem:
            return
        now = time.time()
        # A non-finite score (NaN is stored as NULL) would be a result no later run can use.
        items = [item for item in items if item[2] is not None or _finite(item[1])]
        if not items:
            return
        rows = [(db_text(k.path), k.size, k.mtime_ns, k.ino, k.ctime_ns, k.sample, self.weights, self.prep,
                 mode or self.mode, score, error, max_pixels if error is not None else None,
                 json.dumps(meta, default=str, allow_nan=False), now) for k, score, error, meta in items]
        try:
            with self.conn:  # one transaction per batch
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany("INSERT OR REPLACE INTO scores_v2 VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)
        except (sqlite3.Error, ValueError) as exc:
            self._failed(exc if isinstance(exc, sqlite3.Error) else sqlite3.OperationalError(str(exc)))

    def close(self) -> None:
        self.conn.close()
        if self.corrupt:
            _set_aside(self.db_path)

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _finite(score: object) -> TypeGuard[float]:
    return isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)


def _cached(score: object, error: object, meta: object) -> Cached | None:
    """A row as a hit, or None (a miss, scored again) for anything a run could not use: a
    failure without its message, a score that is NULL/NaN/inf/text, meta that is not a JSON
    object (rows from older versions or edited by hand)."""
    if error is not None and not isinstance(error, str):
        return None
    if error is None and not _finite(score):
        return None
    if not isinstance(meta, (str, bytes)) or len(meta) > MAX_META:
        return None
    try:
        info = json.loads(meta)
    except (ValueError, RecursionError):
        return None
    if not isinstance(info, dict):
        return None
    return Cached(score=float(score) if _finite(score) else None, error=error, meta=info)


def _set_aside(db_path: Path) -> str | None:
    """The damaged cache's new name, or None when it could not be set aside."""
    try:
        return set_aside_database(db_path).name
    except OSError:
        return None


def open_cache(db_path: str | Path, weights_sha256: str, prep_version: int,
               mode: str) -> tuple[ScoreCache | None, str | None]:
    """Open the score cache; a corrupt database is set aside (``NAME.corrupt-TIME``) for a fresh one.

    Returns ``(cache, note)``: ``cache`` is None when no cache can be used; ``note`` says what
    happened (for a warning) or is None."""
    db_path = Path(db_path)
    note = None
    # Another program's database, or any file, linked in would get our tables: regular files only.
    planted = sqlite_files_not_regular(db_path)
    if planted:
        if os.path.lexists(db_path):
            aside = _set_aside(db_path)
            if aside is None:
                return None, f"score cache {db_path} is not a regular file; scoring without it"
            note = f"score cache {db_path} was not a regular file; set aside as {aside}, starting a new one"
        else:
            try:
                for p in planted:
                    p.unlink()
            except OSError as exc:
                return None, f"score cache unusable ({exc.strerror or exc}); scoring without it"
            note = f"score cache files that were not regular files removed: {', '.join(p.name for p in planted)}"
    for attempt in range(2):
        try:
            return ScoreCache(db_path, weights_sha256, prep_version, mode), note
        except sqlite3.DatabaseError as exc:
            corrupt = not isinstance(exc, sqlite3.OperationalError)  # Operational: locked, read-only...
            if attempt == 0 and corrupt and db_path.exists():
                aside = _set_aside(db_path)
                if aside is None:
                    return None, f"score cache unusable ({exc}); scoring without it"
                note = f"score cache was corrupt ({exc}); set aside as {aside}, starting a new one"
                continue
            return None, f"score cache unusable ({exc}); scoring without it"
        except OSError as exc:
            return None, f"score cache unusable ({exc.strerror or exc}); scoring without it"
    return None, note
