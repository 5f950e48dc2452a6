"""Find the images to score under the paths a user gave.

* Files named on the command line are always taken (a non-image gets a reason in the report).
* Folders are walked (recursively by default) without following a symlinked folder twice,
  so symlink loops end; hidden files and folders are skipped unless asked for.
* Inside folders a file is taken by content, not only by extension: known image extensions
  are taken as they are, any other file is taken when its first bytes are an image signature
  (a JPEG saved as ``photo.dat`` is found; a ``notes.txt`` is not).
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ilgnet_cli.runtime.formats import IMAGE_EXTENSIONS, SKIP_EXTENSIONS, sniff


def _looks_like_image(path: Path) -> bool:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTENSIONS:
        return True
    if ext in SKIP_EXTENSIONS:
        return False
    try:
        with path.open("rb") as fh:
            return sniff(fh.read(32)) is not None
    except OSError:
        return False


def unusable_reason(path: str | os.PathLike[str]) -> str:
    """Why a path (given on the command line, or a folder met on the way) is neither a file nor a
    folder we can read.

    Pipes and devices are never opened: reading a FIFO would block the run forever."""
    p = Path(path).expanduser()
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(p) else "no such file or folder"
    except OSError as exc:  # too long for the system (deeper than PATH_MAX), no permission, a loop
        return f"cannot be read ({exc.strerror or exc})"
    if stat.S_ISDIR(st.st_mode):
        try:
            with os.scandir(p):
                pass
        except OSError as exc:
            return f"folder cannot be read ({exc.strerror or exc})"
        return "folder could not be read"  # it could a moment ago: gone or changed meanwhile
    return "not a regular file or folder (pipe, device or socket)"


@dataclass
class Selection:
    recursive: bool = True
    hidden: bool = False
    include: list[str] = field(default_factory=list)  # globs on the file name or relative path
    exclude: list[str] = field(default_factory=list)
    # This run's own outputs (--copy-top/--link-top folders, the -o report): never inputs, or
    # every run would rescore the previous run's copies and they would fill the ranking.
    skip: list[str | os.PathLike[str]] = field(default_factory=list)

    def wanted(self, rel: str) -> bool:
        name = rel.rsplit("/", 1)[-1]

        def match(pattern: str) -> bool:
            return fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(rel, pattern)

        if self.include and not any(match(p) for p in self.include):
            return False
        return not any(match(p) for p in self.exclude)


# Written by --copy-top/--link-top into their folder: a later run over a tree that holds an export
# folder never scores the copies (they would fill the ranking twice). A folder given by name is
# still scored.
EXPORT_MANIFEST = ".ilgnet-export.json"


def _hidden(name: str) -> bool:
    return name.startswith(".")


def find_images(paths: Sequence[str | os.PathLike[str]], selection: Selection | None = None,
                missing: list[str] | None = None) -> Iterator[str]:
    """Yield image file paths (deduplicated, in a stable sorted order per folder).

    Paths that are neither a file nor a folder (missing, broken links, pipes, devices) are
    appended to ``missing``; :func:`unusable_reason` says why.
    """
    sel = selection or Selection()
    seen_files: set[str] = set()
    seen_dirs: set[tuple[int, int]] = set()
    for out in sel.skip:  # marked as seen: reached by any spelling or symlink, they are passed over
        out = Path(out).expanduser()
        try:
            st = out.stat()
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode):
            seen_dirs.add((st.st_dev, st.st_ino))
        else:
            seen_files.add(os.path.realpath(out))
    for raw in paths:
        root = Path(raw).expanduser()
        if root.is_file():
            key = os.path.realpath(root)
            if key not in seen_files:
                seen_files.add(key)
                yield str(root)
            continue
        if not root.is_dir():
            if missing is not None:
                missing.append(str(raw))
            continue
        yield from _walk(root, root, sel, seen_files, seen_dirs, missing)


def _walk(top: Path, root: Path, sel: Selection, seen_files: set[str],
          seen_dirs: set[tuple[int, int]], unreadable: list[str] | None = None) -> Iterator[str]:
    """Files under ``top`` in a stable order (a folder's files, then each sub-folder in turn).
    Iterative, so any folder depth is fine (a recursive walk ended in RecursionError). A folder
    that cannot be read (no permission; deeper than the system's PATH_MAX) is appended to
    ``unreadable``: the photos in it must be reported, not silently left out."""
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
        except OSError:
            if unreadable is not None:
                unreadable.append(str(folder))
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:  # a symlink loop or a folder reached twice
            continue
        seen_dirs.add(key)
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            if unreadable is not None:
                unreadable.append(str(folder))
            continue
        if folder != root and any(e.name == EXPORT_MANIFEST for e in entries):
            continue
        subdirs = []
        for entry in entries:
            if not sel.hidden and _hidden(entry.name):
                continue
            try:
                is_dir = entry.is_dir()  # follows symlinks; loops are cut by seen_dirs
                is_file = not is_dir and entry.is_file()
            except OSError:
                continue
            if is_dir:
                subdirs.append(Path(entry.path))
                continue
            if not is_file:
                continue
            path = Path(entry.path)
            rel = path.relative_to(root).as_posix()
            if not sel.wanted(rel) or not _looks_like_image(path):
                continue
            real = os.path.realpath(path)
            if real in seen_files:
                continue
            seen_files.add(real)
            yield str(path)
        if sel.recursive:
            stack.extend(reversed(subdirs))
