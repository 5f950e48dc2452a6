"""Atomic file writes: a temp file in the target's folder, fsync, then rename over the target.

Temp files are created with ``O_EXCL`` under random names (``mkstemp``), so a symlink planted
at a guessable name is never followed. mkstemp makes them 0600; they get the mode the final file
should have: an existing file's own mode, else ``0o666 & ~umask`` like any other program's files.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ilgnet_cli.errors import UsageError
from ilgnet_cli.runtime.text import display


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


class OutputRefused(UsageError):
    """An output path that must not be written: one line saying why."""


def check_target(path: str | Path, *, image_ok: bool = False) -> None:
    """The one check every writer makes before replacing ``path``: nothing there, or a regular
    file. A symbolic link (``/dev/stdout``), device (``/dev/null``), FIFO, socket or folder is
    refused, never replaced or written through; so is anything whose name or content says it is
    a photo (every RAW format included), unless ``image_ok``."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError:
        return  # cannot tell (no permission): the write itself will say why it fails
    what = ("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode)
            else "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
            or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode) else None)
    if what is not None:
        raise OutputRefused(f"will not write {display(str(path))}: it is {what} (only a regular file is replaced)")
    if not image_ok:
        from ilgnet_cli.runtime.formats import image_reason

        if (reason := image_reason(path)) is not None:
            raise OutputRefused(f"will not write over {display(str(path))}: {reason}")


def atomic_write_bytes(path: str | Path, data: bytes, *, image_ok: bool = False) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, fsync, rename), after
    :func:`check_target`. A failure names the file and removes the temp file."""
    path = Path(path)
    check_target(path, image_ok=image_ok)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), _mode_for(path))
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        check_target(path, image_ok=image_ok)  # again: something may have appeared meanwhile
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # "No space left on device" should say where
            exc.filename = str(path)
        raise
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
        except OSError:  # no hard links on this file system (FAT, some shares)
            if not rename_noreplace(tmp, target):  # the finished copy appears whole, or not at all
                _copy_exclusive(src, target, mode, st)
    finally:
        Path(tmp).unlink(missing_ok=True)


def rename_noreplace(src: str | Path, dst: str | Path) -> bool:
    """Rename ``src`` to ``dst`` only if ``dst`` does not exist, atomically (Linux renameat2 with
    RENAME_NOREPLACE). False where the system or file system cannot; FileExistsError if taken."""
    import ctypes
    import errno
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, noreplace = -100, 1
    if renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), noreplace) == 0:
        return True
    err = ctypes.get_errno()
    if err == errno.EEXIST:
        raise FileExistsError(err, os.strerror(err), str(dst))
    return False


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


def check_output_file(path: str | Path) -> None:
    """:func:`check_target` and :func:`check_writable_file`: before long work, so that a wrong
    ``--output`` costs seconds, not the whole run."""
    check_target(path)
    check_writable_file(path)


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


class UnreadableFile(OSError):
    """A file ilgnet keeps for itself that is not what it should be (not a regular file, too
    large, not JSON of the right shape); callers treat it as absent or damaged, never trust it."""


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of ``path``, which must be a regular file of at most ``limit`` bytes.

    Opened without blocking (a FIFO planted at the name would hang every run) and checked after
    opening (a name swapped between a check and the open changes nothing). Raises
    FileNotFoundError when absent, :class:`UnreadableFile` for anything else wrong."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnreadableFile(f"{display(str(path))}: not a regular file")
        if st.st_size > limit:
            raise UnreadableFile(f"{display(str(path))}: {st.st_size} bytes, more than the {limit} expected")
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnreadableFile(f"{display(str(path))}: more than the {limit} bytes expected")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_json_object(path: str | Path, limit: int = 1 << 20) -> dict:
    """A JSON object from a small regular file. Raises FileNotFoundError when absent and
    :class:`UnreadableFile` (one line) when it is not a JSON object within ``limit`` bytes;
    nesting deeper than Python's recursion limit is refused, never a traceback."""
    import json

    data = read_regular(path, limit)
    try:
        value = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        raise UnreadableFile(f"{display(str(path))}: not valid JSON ({type(exc).__name__})") from None
    if not isinstance(value, dict):
        raise UnreadableFile(f"{display(str(path))}: not a JSON object")
    return value


def set_aside_database(db_path: str | Path) -> Path:
    """Rename a damaged SQLite database to ``NAME.corrupt-TIME`` (kept for inspection, never
    deleted) and drop its ``-wal``/``-shm``, so the next open starts a fresh one. Raises OSError."""
    db_path = Path(db_path)
    aside = db_path.with_name(f"{db_path.name}.corrupt-{int(time.time())}")
    for suffix in ("-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)
    db_path.rename(aside)
    return aside


def sqlite_files_not_regular(db_path: str | Path) -> list[Path]:
    """Those of a database's files (it, ``-wal``, ``-shm``) that exist but are not regular files:
    SQLite follows a link planted at any of them and writes into its target."""
    found = []
    for path in (Path(db_path), Path(f"{db_path}-wal"), Path(f"{db_path}-shm")):
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                found.append(path)
        except FileNotFoundError:
            pass
        except OSError:
            found.append(path)
    return found
