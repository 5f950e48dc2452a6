"""Atomic file writes: a temp file in the target's folder, fsync, then rename over the target.

Temp files are created with ``O_EXCL`` under random names (``mkstemp``), so a symlink planted
at a guessable name is never followed. mkstemp makes them 0600; they get the mode the final file
should have: an existing file's own mode, else ``0o666 & ~umask`` like any other program's files.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import unicodedata
from pathlib import Path

from ilgnet_cli.errors import UsageError


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows (``os.umask`` is
    set-and-restore: another thread creating a file in between would get the wrong mode)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path: Path) -> int:
    """Replacing a regular file keeps its mode (a shared 0644 sidecar stays shared); anything
    else (a new name, a symlink that the rename replaces) gets the umask's default."""
    try:
        st = os.lstat(path)
    except OSError:
        st = None
    if st is not None and stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _mode_for(path))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def copy_new(src: str | Path, target: str | Path) -> None:
    """Copy ``src`` to ``target`` (data, times, permission bits), atomically, and only if
    ``target`` does not exist: FileExistsError otherwise, whatever sits there (a dangling
    symlink included). Nothing is ever followed through a link in the target folder."""
    target = Path(target)
    st = os.stat(src)
    # As cp makes it: the source's permission bits within our umask; never setuid/setgid/sticky,
    # and a world-writable photo in someone else's tree does not give others our copy.
    mode = stat.S_IMODE(st.st_mode) & 0o777 & ~current_umask()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".ilgnet-copy.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_into(src, out, mode, st)
        try:
            # link() never replaces an existing name: the "never overwrite" promise, atomically
            os.link(tmp, target, follow_symlinks=False)
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system (FAT, some shares): exclusive create
            _copy_exclusive(src, target, mode, st)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _copy_into(src: str | Path, out, mode: int, st: os.stat_result) -> None:
    with open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)
    out.flush()
    os.fchmod(out.fileno(), mode)
    os.utime(out.fileno(), ns=(st.st_atime_ns, st.st_mtime_ns))
    os.fsync(out.fileno())


def _copy_exclusive(src: str | Path, target: Path, mode: int, st: os.stat_result) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(target, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as out:
            _copy_into(src, out, mode, st)
    except BaseException:
        target.unlink(missing_ok=True)  # ours (O_EXCL): no half copy under the final name
        raise


def atomic_write_text(path: str | Path, text: str, errors: str = "strict") -> None:
    atomic_write_bytes(path, text.encode("utf-8", errors))


# File names that are not valid UTF-8 (old cameras, Windows zips, NAS shares) reach Python as
# strings with lone surrogates (PEP 383). They must survive every report and the cache.


def printable(text: str) -> str:
    """``text`` for humans: undecodable file-name bytes become U+FFFD."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# Characters that move the cursor, recolour or retitle the terminal, or reorder what is shown
# (bidi overrides make "gpj.exe" read "exe.jpg"): C0/C1 controls, DEL, line/paragraph separators
# and format characters. ZWJ/ZWNJ stay: emoji and Indic scripts need them and they move nothing.
_KEEP_FORMAT = frozenset("\u200c\u200d")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    return ch not in _KEEP_FORMAT and unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def _escape_char(ch: str) -> str:
    cp = ord(ch)
    return _NAMED.get(ch) or (f"\\x{cp:02x}" if cp < 0x100 else f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}")


def escape_controls(text: str) -> str:
    """``text`` with control, bidi and other invisible format characters as visible escapes
    (``\\x1b``, ``\\u202e``, ``\\n``); undecodable file-name bytes are left as they are."""
    if text.isprintable():  # the usual case, and str.isprintable() is False for every unsafe char
        return text
    return "".join(_escape_char(ch) if _unsafe(ch) else ch for ch in text)


def display(text: str | None) -> str:
    """Untrusted text (file names, EXIF, sidecars, error reasons) for a terminal or a page:
    one line, nothing that drives the terminal, undecodable bytes as U+FFFD."""
    return escape_controls(printable(text or ""))


def json_escaped(text: str) -> str:
    """JSON text with undecodable file-name bytes as ``\\udcXX`` escapes: valid JSON, and
    ``os.fsencode(json.loads(...))`` gives back the exact bytes of the name. Control, bidi and
    format characters that ``json.dumps(ensure_ascii=False)`` leaves raw (DEL, C1, U+202E...)
    become ``\\uXXXX`` too, so ``--json`` on a terminal cannot drive it; the names load back exact."""
    return _NON_ASCII.sub(_json_char, text.encode("utf-8", "backslashreplace").decode("utf-8"))


_NON_ASCII = re.compile("[^\x00-\x7e]")  # json.dumps has already escaped C0 controls


def _json_char(m: re.Match[str]) -> str:
    ch = m.group()
    if not _unsafe(ch):
        return ch
    cp = ord(ch)
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    cp -= 0x10000
    return f"\\u{0xD800 + (cp >> 10):04x}\\u{0xDC00 + (cp & 0x3FF):04x}"


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
    """Raise UsageError (one line) unless a file can be written at ``path``.

    Run before long work so that a typo in ``--output`` costs seconds, not the whole run.
    Creates the parent folder, as the final write would.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write {display(str(path))}: it is a folder (give a file name)")
    if problem := _probe_folder(path.parent):
        raise UsageError(f"cannot write {display(str(path))}: {problem}")


def check_writable_folder(path: str | Path) -> None:
    """Raise UsageError (one line) unless ``path`` is, or can become, a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"cannot use {display(str(path))} as a folder: a file of that name exists")
    if problem := _probe_folder(path):
        raise UsageError(f"cannot use {display(str(path))} as a folder: {problem}")
