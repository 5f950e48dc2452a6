"""The ledger: every star ``ilgnet score --xmp`` wrote, so that ilgnet's guesses are recognised
wherever a photo manager copied them (its own sidecar, its library, the file itself).

darktable imports ``IMG.xmp``'s stars into its library and writes them to ``IMG.JPG.xmp``
without ilgnet's marker; after a re-score it writes ilgnet's *old* star back. So a rating equal
to ANY star ilgnet ever wrote for a photo is taken for ilgnet's, in whatever source it appears;
a rating the user changes to something ilgnet never wrote for that photo is theirs again.
(The rule cannot tell a user who deliberately picks exactly a star ilgnet once guessed from a
copy; it errs on the side of never learning from ilgnet's own guesses, and ``learn`` says how
many ratings it set aside this way.)

* Where: ``$ILGNET_DATA/ledger.sqlite`` (:func:`ilgnet_cli.runtime.paths.data_home`), SQLite in WAL
  mode, one short transaction per ``score --xmp`` run: two runs at once are safe.
* What: per photo the real path, a content digest, the star, the score, the weights (name and
  sha256) and the UTC time; one row per distinct (photo, digest, star, weights), history kept.
* Lookups go by real path first, then by content digest (a copy of the photo elsewhere, e.g.
  imported by a photo manager into its own folder tree). The digest is sha256 over the file
  size and 64 KiB at the start, middle and end: cheap on RAW files of 50 MB, and a recompressed
  or edited file is another photo. A program that writes metadata INTO the file (Lightroom's
  "write metadata to file", digiKam, exiftool) changes the digest: that photo is still found
  by its path.
* It is only a memory: a corrupt ledger is set aside (``ledger.sqlite.corrupt-TIME``) with a
  one-line note, a ledger that cannot be written is a warning, never a failed run, and what is
  read is bounded (rows per photo, the file's size, values checked).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import sqlite3
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ilgnet_cli.runtime.fsutil import db_text, set_aside_database, sqlite_files_not_regular

CHUNK = 64 << 10
DIGEST_VERSION = "v1"
# Bounds on what a (possibly hostile) ledger can make us read.
MAX_LEDGER_BYTES = 2 << 30
MAX_ROWS_PER_PHOTO = 1000
TIMEOUT_S = 10.0

SCHEMA = """
CREATE TABLE IF NOT EXISTS writes (
    path TEXT NOT NULL,
    digest TEXT,
    size INTEGER,
    mtime_ns INTEGER,
    stars REAL NOT NULL,
    score REAL,
    weights TEXT,
    weights_sha256 TEXT NOT NULL DEFAULT '',
    sidecar TEXT,
    first_written TEXT NOT NULL,
    last_written TEXT NOT NULL,
    UNIQUE (path, digest, stars, weights_sha256)
);
CREATE INDEX IF NOT EXISTS writes_path ON writes (path);
CREATE INDEX IF NOT EXISTS writes_digest ON writes (digest);
"""


def ledger_path() -> Path:
    from ilgnet_cli.runtime.paths import data_home

    return data_home() / "ledger.sqlite"


def content_digest(path: str | os.PathLike[str]) -> str | None:
    """``v1:<sha256>`` over the size and 64 KiB at the start, middle and end; None if unreadable.

    Only a regular file is read (O_NONBLOCK: a FIFO swapped in is never waited on)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        size = st.st_size
        h = hashlib.sha256(size.to_bytes(8, "little"))
        for offset in sorted({0, max(0, (size - CHUNK) // 2), max(0, size - CHUNK)}):
            h.update(os.pread(fd, CHUNK, offset))
        return f"{DIGEST_VERSION}:{h.hexdigest()}"
    except OSError:
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Written:
    """One star ilgnet wrote for one photo."""

    photo: str  # as given; stored as its real path
    stars: int
    score: float
    weights: str | None = None
    weights_sha256: str | None = None
    sidecar: str | None = None


def valid_star(value: object) -> float | None:
    """A star read from a database (the ledger, a photo manager's catalog) as 1..5, else None
    (0, NULL, junk, NaN: unrated)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and 1 <= value <= 5 else None


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


class Ledger:
    """Read and append to the ledger. Nothing here raises for a bad ledger: :attr:`notes`
    collects one-line messages and the ledger is then simply not used."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else ledger_path()
        self.notes: list[str] = []
        self._conn: sqlite3.Connection | None = None
        self._unusable = False
        self.replaced = False  # a damaged ledger was set aside: writing may start a fresh one
        self._digests: dict[str, str | None] = {}

    # ------------------------------------------------------------------ opening

    def _too_large(self) -> bool:
        try:
            size = os.stat(self.path).st_size
        except OSError:
            return False
        if size > MAX_LEDGER_BYTES:
            self._give_up(f"ledger {self.path} is larger than {MAX_LEDGER_BYTES >> 30} GiB; not used")
            return True
        return False

    def _give_up(self, note: str) -> None:
        self.notes.append(note)
        self._unusable = True
        self.close()

    def _set_aside(self, exc: Exception) -> None:
        """A ledger that is not a database (or is damaged) goes aside; the next run starts afresh."""
        self.close()
        try:
            aside = set_aside_database(self.path)
        except OSError as err:
            self._give_up(f"ledger {self.path} is damaged ({exc}) and could not be set aside "
                          f"({err.strerror or err}); not used")
            return
        self._give_up(f"ledger was damaged ({exc}); set aside as {aside.name}")
        self.replaced = True

    def _connect(self, create: bool) -> sqlite3.Connection | None:
        if self._conn is not None:
            return self._conn
        if self._unusable or (not create and not self.path.exists()) or self._too_large():
            return None
        if planted := sqlite_files_not_regular(self.path):  # a link would be written through
            self._give_up(f"ledger {planted[0]} is not a regular file; not used")
            return None
        try:
            conn = self._open_retrying(create)
        except sqlite3.OperationalError as exc:  # locked, read-only disk, no such table: not corrupt
            if "no such table" in str(exc) or "no such column" in str(exc):
                self._set_aside(exc)
            else:
                self._give_up(f"ledger {self.path} unusable ({exc})")
            return None
        except sqlite3.DatabaseError as exc:  # not a database, malformed
            self._set_aside(exc)
            return None
        except OSError as exc:
            self._give_up(f"ledger {self.path} unusable ({exc.strerror or exc})")
            return None
        self._conn = conn
        return conn

    def _open_retrying(self, create: bool) -> sqlite3.Connection:
        # SQLite answers "locked" without waiting in a few moments its busy handler does not
        # cover (switching to WAL, the last connection of another run checkpointing and removing
        # the WAL as it closes): two runs ending together must both be recorded, so such
        # moments are waited out up to the same deadline as an ordinary lock.
        deadline = time.monotonic() + TIMEOUT_S
        delay = 0.01
        while True:
            try:
                return self._open(create)
            except sqlite3.OperationalError as exc:
                text = str(exc)
                if ("locked" not in text and "busy" not in text) or time.monotonic() >= deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def _open(self, create: bool) -> sqlite3.Connection:
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(self.path), timeout=TIMEOUT_S, isolation_level=None)
        else:  # reading never creates one
            uri = Path(os.path.abspath(self.path)).as_uri() + "?mode=rw"
            conn = sqlite3.connect(uri, uri=True, timeout=TIMEOUT_S, isolation_level=None)
        try:
            if create:
                if conn.execute("PRAGMA journal_mode").fetchone() != ("wal",):
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.executescript(SCHEMA)
            else:
                conn.execute("SELECT stars, path, digest FROM writes LIMIT 1").fetchall()
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except sqlite3.Error:
                pass
            self._conn = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ reading

    def digest(self, photo: str) -> str | None:
        key = os.path.realpath(photo)
        if key not in self._digests:
            self._digests[key] = content_digest(key)
        return self._digests[key]

    def stars(self, photo: str) -> frozenset[float]:
        """Every star ilgnet wrote for ``photo``: by its real path, else by its content digest."""
        conn = self._connect(create=False)
        if conn is None:
            return frozenset()
        try:
            found = self._query(conn, "path", db_text(os.path.realpath(photo)))
            if not found:
                digest = self.digest(photo)
                if digest is not None:
                    found = self._query(conn, "digest", digest)
        except sqlite3.OperationalError as exc:
            self._give_up(f"ledger {self.path} unusable ({exc})")
            return frozenset()
        except sqlite3.DatabaseError as exc:
            self._set_aside(exc)
            return frozenset()
        return found

    @staticmethod
    def _query(conn: sqlite3.Connection, column: str, value: str | bytes) -> frozenset[float]:
        rows = conn.execute(f"SELECT DISTINCT stars FROM writes WHERE {column} = ? LIMIT ?",
                            (value, MAX_ROWS_PER_PHOTO)).fetchall()
        return frozenset(s for (v,) in rows if (s := valid_star(v)) is not None)

    def is_empty(self) -> bool:
        conn = self._connect(create=False)
        if conn is None:
            return True
        try:
            return conn.execute("SELECT 1 FROM writes LIMIT 1").fetchone() is None
        except sqlite3.OperationalError as exc:
            self._give_up(f"ledger {self.path} unusable ({exc})")
        except sqlite3.DatabaseError as exc:
            self._set_aside(exc)
        return True

    # ------------------------------------------------------------------ writing

    def record(self, written: Sequence[Written]) -> int:
        """Append what a run wrote, in one short transaction; returns the rows recorded (0 and a
        note when the ledger cannot be written)."""
        if not written:
            return 0
        for attempt in range(2):
            conn = self._connect(create=True)
            if conn is None and self.replaced and attempt == 0:
                self._unusable = False  # the damaged one is aside: start a fresh one
                conn = self._connect(create=True)
            if conn is None:
                return 0
            try:
                rows = list(self._rows(conn, written))
                with conn:
                    conn.execute("BEGIN IMMEDIATE")
                    conn.executemany(
                        "INSERT INTO writes (path, digest, size, mtime_ns, stars, score, weights, weights_sha256,"
                        " sidecar, first_written, last_written) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
                        " ON CONFLICT (path, digest, stars, weights_sha256) DO UPDATE SET"
                        " score = excluded.score, sidecar = excluded.sidecar, last_written = excluded.last_written",
                        rows)
                return len(rows)
            except sqlite3.OperationalError as exc:
                self._give_up(f"ledger not updated ({exc}): ilgnet's stars from this run are recognised "
                              "by ilgnet:Rating only")
                return 0
            except sqlite3.DatabaseError as exc:
                self._set_aside(exc)
                if not self.replaced:
                    return 0
                self._unusable = False  # set aside: start a fresh one
        return 0

    def _rows(self, conn: sqlite3.Connection, written: Iterable[Written]) -> Iterable[tuple]:
        now = _now()
        for w in written:
            real = os.path.realpath(w.photo)
            size: int | None = None
            mtime: int | None = None
            try:
                st = os.stat(real)
                size, mtime = st.st_size, st.st_mtime_ns
            except OSError:
                pass
            # An unchanged file (same size and mtime as when last recorded) keeps its digest:
            # re-scoring a cached collection reads no photo again.
            known = conn.execute("SELECT digest FROM writes WHERE path = ? AND size = ? AND mtime_ns = ? "
                                 "AND digest IS NOT NULL LIMIT 1", (db_text(real), size, mtime)).fetchone()
            digest = known[0] if known and isinstance(known[0], str) else self.digest(real)
            yield (db_text(real), digest, size, mtime, float(w.stars), float(w.score), w.weights,
                   w.weights_sha256 or "", w.sidecar, now, now)
