"""Atomic file writes: a temp file in the target's folder, fsync, then rename over the target."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, errors: str = "strict") -> None:
    atomic_write_bytes(path, text.encode("utf-8", errors))


# File names that are not valid UTF-8 (old cameras, Windows zips, NAS shares) reach Python as
# strings with lone surrogates (PEP 383). They must survive every report and the cache.


def printable(text: str) -> str:
    """``text`` for humans: undecodable file-name bytes become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def json_escaped(text: str) -> str:
    """JSON text with undecodable file-name bytes as ``\\udcXX`` escapes: valid JSON, and
    ``os.fsencode(json.loads(...))`` gives back the exact bytes of the name."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def db_text(path: str) -> str | bytes:
    """A path as an SQLite key: TEXT when it is valid UTF-8, else its exact bytes as a BLOB."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(path)
    return path


def _probe_folder(folder: Path) -> str | None:
    """Create ``folder`` if needed and a file in it; None if that works, else the reason."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".ilgnet-check.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def check_writable_file(path: str | Path) -> None:
    """Raise ValueError (one line) unless a file can be written at ``path``.

    Run before long work so that a typo in ``--output`` costs seconds, not the whole run.
    Creates the parent folder, as the final write would.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"cannot write {path}: it is a folder (give a file name)")
    if problem := _probe_folder(path.parent):
        raise ValueError(f"cannot write {path}: {problem}")


def check_writable_folder(path: str | Path) -> None:
    """Raise ValueError (one line) unless ``path`` is, or can become, a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"cannot use {path} as a folder: a file of that name exists")
    if problem := _probe_folder(path):
        raise ValueError(f"cannot use {path} as a folder: {problem}")
