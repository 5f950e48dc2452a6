"""Score cache: SQLite (WAL) keyed by what determines a score.

Key: absolute path, file size, mtime_ns, weights sha256, preprocessing version and decode
mode (draft or exact). A changed file, other weights or a preprocessing change therefore
misses. Writes are small transactions, so two overlapping runs and a kill -9 are safe: at
worst the last uncommitted batch is scored again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    def __init__(self, db_path: str | Path, weights_sha256: str, prep_version: int, mode: str) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self.weights, self.prep, self.mode = weights_sha256, prep_version, mode
        self.conn = sqlite3.connect(str(self.db_path), timeout=30.0, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(SCHEMA)

    def get(self, key: FileKey) -> Cached | None:
        row = self.conn.execute(
            "SELECT size, mtime_ns, score, error, meta FROM scores WHERE path=? AND weights=? AND prep=? AND mode=?",
            (db_text(key.path), self.weights, self.prep, self.mode),
        ).fetchone()
        if row is None or row[0] != key.size or row[1] != key.mtime_ns:
            return None
        return Cached(score=row[2], error=row[3], meta=json.loads(row[4]))

    def put_many(self, items: list[tuple[FileKey, float | None, str | None, dict[str, Any]]]) -> None:
        if not items:
            return
        now = time.time()
        rows = [(db_text(k.path), k.size, k.mtime_ns, self.weights, self.prep, self.mode, score, error,
                 json.dumps(meta, default=str), now) for k, score, error, meta in items]
        with self.conn:  # one transaction per batch
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("INSERT OR REPLACE INTO scores VALUES (?,?,?,?,?,?,?,?,?,?)", rows)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ScoreCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
