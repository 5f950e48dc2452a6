"""Score cache: SQLite (WAL) keyed by what determines a score.

Key: absolute path, file size, mtime_ns, weights sha256, preprocessing version and mode:
the decode mode (draft or exact), with ``+bf16`` for scores computed in bf16. A changed file,
other weights or a preprocessing change therefore misses. Writes are small transactions, so
two overlapping runs and a kill -9 are safe: at worst the last uncommitted batch is scored
again.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeGuard

from ilgnet_cli.fsutil import db_text

SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    weights TEXT NOT NULL,
    prep INTEGER NOT NULL,
    mode TEXT NOT NULL,
    score REAL,
    error TEXT,
    meta TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (path, weights, prep, mode)
)
"""


@dataclass(frozen=True)
class FileKey:
    path: str  # absolute
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str | os.PathLike[str]) -> FileKey:
        absolute = os.path.abspath(path)
        st = os.stat(absolute)
        return cls(absolute, st.st_size, st.st_mtime_ns)


@dataclass
class Cached:
    score: float | None
    error: str | None
    meta: dict[str, Any]


class ScoreCache:
    """The cache is only a speed-up: if the database is unusable (corrupt, locked for longer
    than the timeout, disk full) scoring goes on without it and :attr:`problem` says why."""

    def __init__(self, db_path: str | Path, weights_sha256: str, prep_version: int, mode: str) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.weights, self.prep, self.mode = weights_sha256, prep_version, mode
        self.problem: str | None = None
        self.conn = sqlite3.connect(str(self.db_path), timeout=30.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(SCHEMA)

    def _failed(self, exc: Exception) -> None:
        self.problem = f"score cache stopped working ({exc}); the rest of the run was not cached"

    def get(self, key: FileKey, mode: str | None = None) -> Cached | None:
        """The cached result for ``key`` under ``mode`` (default: this cache's mode)."""
        if self.problem:
            return None
        try:
            row = self.conn.execute(
                "SELECT size, mtime_ns, score, error, meta FROM scores"
                " WHERE path=? AND weights=? AND prep=? AND mode=?",
                (db_text(key.path), self.weights, self.prep, mode or self.mode),
            ).fetchone()
        except sqlite3.Error as exc:
            self._failed(exc)
            return None
        if row is None or row[0] != key.size or row[1] != key.mtime_ns:
            return None
        return _cached(row[2], row[3], row[4])

    def put_many(self, items: list[tuple[FileKey, float | None, str | None, dict[str, Any]]]) -> None:
        if not items or self.problem:
            return
        now = time.time()
        # A non-finite score (NaN is stored as NULL) would be a result no later run can use.
        items = [item for item in items if item[2] is not None or _finite(item[1])]
        if not items:
            return
        rows = [(db_text(k.path), k.size, k.mtime_ns, self.weights, self.prep, self.mode, score, error,
                 json.dumps(meta, default=str), now) for k, score, error, meta in items]
        try:
            with self.conn:  # one transaction per batch
                self.conn.execute("BEGIN IMMEDIATE")
                self.conn.executemany("INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
        except sqlite3.Error as exc:
            self._failed(exc)

    def close(self) -> None:
        self.conn.close()

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
    try:
        info = json.loads(meta) if isinstance(meta, (str, bytes)) else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(info, dict):
        return None
    return Cached(score=float(score) if _finite(score) else None, error=error, meta=info)


def open_cache(db_path: str | Path, weights_sha256: str, prep_version: int,
               mode: str) -> tuple[ScoreCache | None, str | None]:
    """Open the score cache; a corrupt database is set aside (``NAME.corrupt-TIME``) for a fresh one.

    Returns ``(cache, note)``: ``cache`` is None when no cache can be used; ``note`` says what
    happened (for a warning) or is None."""
    db_path = Path(db_path)
    note = None
    for attempt in range(2):
        try:
            return ScoreCache(db_path, weights_sha256, prep_version, mode), note
        except sqlite3.DatabaseError as exc:
            corrupt = not isinstance(exc, sqlite3.OperationalError)  # Operational: locked, read-only...
            if attempt == 0 and corrupt and db_path.exists():
                aside = db_path.with_name(f"{db_path.name}.corrupt-{int(time.time())}")
                try:
                    for suffix in ("-wal", "-shm"):
                        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
                    db_path.rename(aside)
                except OSError:
                    return None, f"score cache unusable ({exc}); scoring without it"
                note = f"score cache was corrupt ({exc}); set aside as {aside.name}, starting a new one"
                continue
            return None, f"score cache unusable ({exc}); scoring without it"
        except OSError as exc:
            return None, f"score cache unusable ({exc.strerror or exc}); scoring without it"
    return None, note
