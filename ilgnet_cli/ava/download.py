"""`ilgnet download ava`: get AVA into one layout, from a mirror or a copy the user already has.

Layout of DEST::

    AVA.txt, tags.txt, challenges.txt, aesthetics_image_lists/, style_image_lists/
    images/<id>.jpg
    missing.txt, corrupt.txt      (written by the verification pass)
    .downloads/                   (archives and *.part files while downloading)

Sources are manifests (JSON): shipped ones in ``ilgnet_cli/manifests/`` or the user's own.
A manifest lists ``files`` (URLs + mirrors, size, checksum, archive type, target) and/or an
``images`` URL template for per-image mirrors. Archives are extracted safely: no absolute
paths, no ``..``, no links, devices or anything that would land outside DEST, and no member
over MAX_MEMBER_BYTES, no archive over MAX_TOTAL_BYTES or MAX_RATIO (counted while writing).
A manifest's names and targets must stay under DEST; anything else is refused, in one line,
before the first byte is downloaded. A ``--from`` folder's links are reported, never followed.
"""

from __future__ import annotations

import functools
import glob
import io
import json
import os
import re
import secrets
import shutil
import stat
import string
import tarfile
import tempfile
import urllib.parse
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import TypeVar, overload

from ilgnet_cli.ava.records import read_ava
from ilgnet_cli.errors import IlgnetError
from ilgnet_cli.runtime.download import Checksum, DownloadError, download
from ilgnet_cli.runtime.fsutil import current_umask
from ilgnet_cli.runtime.text import clip

METADATA = ("AVA.txt", "tags.txt", "challenges.txt")
# ASCII digits only: ``\d`` also matches "１２３" or "١٢", which int() would quietly turn into
# another image's id. Twelve digits is far above AVA's ids (< 10**6) and far below file-name limits.
MAX_ID_DIGITS = 12
IMAGE_NAME = re.compile(rf"([0-9]{{1,{MAX_ID_DIGITS}}})\.jpe?g", re.IGNORECASE | re.ASCII)
ARCHIVES = ("zip", "tar", "tar.gz", "tar.bz2", "tar.xz", "7z")

# Limits on what an archive may unpack to, counted on the bytes actually written (headers can lie).
# AVA's images are all under ~10 MB and AVA.txt is ~17 MB, so 64 MiB per member is generous; the
# whole dataset is ~33 GB; JPEGs barely compress, text ~5x, so 100x only catches bombs. The ratio
# is only judged past 1 MiB, where a bomb starts to cost something.
# The same caps bound what is downloaded when a manifest gives no size: an archive, a plain file or image.
MAX_MEMBER_BYTES = 64 << 20
MAX_TOTAL_BYTES = 64 << 30
MAX_RATIO = 100
RATIO_FLOOR = 1 << 20
MAX_MEMBERS = 500_000  # AVA: 255,530 images and a few dozen lists; each member costs memory up front
MAX_MANIFEST_BYTES = 64 << 20  # room for a sha256 per image
CHUNK = 1 << 20


class AVADownloadError(IlgnetError):
    pass


class UnsafeArchiveError(AVADownloadError):
    pass


@dataclass
class ManifestFile:
    name: str
    urls: list[str]
    size: int | None = None
    checksum: str | None = None
    archive: str | None = None  # zip, tar, tar.gz, 7z, or None
    target: str | None = None  # where a plain file goes inside DEST (default: its name)


@dataclass
class Manifest:
    name: str
    description: str = ""
    verified: bool = False
    note: str = ""
    files: list[ManifestFile] = field(default_factory=list)
    images: dict | None = None  # {"urls": ["http://.../{id}.jpg", mirror...], "checksums": {id: sha256}}

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        try:
            with open(path, "rb") as fh:
                data = fh.read(MAX_MANIFEST_BYTES + 1)
            if len(data) > MAX_MANIFEST_BYTES:
                raise ValueError(f"larger than {MAX_MANIFEST_BYTES >> 20} MiB")
            raw = json.loads(data.decode("utf-8"))
        except (OSError, ValueError, RecursionError) as exc:
            raise AVADownloadError(f"cannot read manifest {clip(str(path))}: {clip(str(exc))}") from None
        try:
            return cls.from_json(raw)
        except AVADownloadError as exc:
            raise AVADownloadError(f"bad manifest {clip(str(path))}: {exc}") from None

    @classmethod
    def from_json(cls, raw: object) -> Manifest:
        """A checked Manifest from parsed JSON; AVADownloadError (one line) names the first problem."""
        raw = _object(raw, "the manifest", {"name", "description", "verified", "note", "files", "images"})
        files = _typed(raw, "files", list, "the manifest", [])
        return cls(name=_text(raw.get("name"), "name"), description=_typed(raw, "description", str, "the manifest", ""),
                   verified=_typed(raw, "verified", bool, "the manifest", False),
                   note=_typed(raw, "note", str, "the manifest", ""),
                   files=[_manifest_file(f, i) for i, f in enumerate(files)],
                   images=None if raw.get("images") is None else _image_spec(raw["images"]))



def _short(value: object) -> str:
    return clip(repr(value))


def _object(raw: object, what: str, keys: set[str]) -> dict:
    if not isinstance(raw, dict):
        raise AVADownloadError(f"{what} must be a JSON object, not {type(raw).__name__}")
    unknown = sorted(set(raw) - keys)
    if unknown:
        raise AVADownloadError(f"{what} has unknown field {_short(unknown[0])}")
    return raw


_T = TypeVar("_T")


@overload
def _typed(raw: dict, key: str, kind: type[_T], what: str, default: None) -> _T | None: ...
@overload
def _typed(raw: dict, key: str, kind: type[_T], what: str, default: _T) -> _T: ...
def _typed(raw: dict, key: str, kind: type[_T], what: str, default: _T | None) -> _T | None:
    value = raw.get(key, default)
    if value is None and default is None:
        return None
    # bool is an int in Python; JSON true is never a size.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise AVADownloadError(f"{what}: {key!r} must be {kind.__name__}, got {_short(value)}")
    return value


def _text(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AVADownloadError(f"{what} must be a non-empty string, got {_short(value)}")
    return value


def _url(value: object, what: str) -> str:
    """http(s) only: urllib would also read file:// and ftp://, copying local files into DEST."""
    url = _text(value, what)
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise AVADownloadError(f"{what} must be an http(s) URL, got {_short(url)}")
    return url


def _urls(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not value:
        raise AVADownloadError(f"{what} must be a non-empty list of URLs, got {_short(value)}")
    return value


def plain_name(value: object, what: str = "file name") -> str:
    """One path component: where a manifest entry is downloaded (``.downloads/NAME``)."""
    name = _text(value, what)
    if any(c in name for c in "/\\\0") or name in (".", "..") or len(name.encode("utf-8", "replace")) > 255:
        raise AVADownloadError(f"{what} must be a plain file name, got {_short(name)}")
    return name


def relative_target(value: object, what: str = "target") -> str:
    """A relative path without ``..``: where a plain file goes inside DEST."""
    target = _text(value, what)
    if "\0" in target or "\\" in target or re.match(r"^[A-Za-z]:", target):
        raise AVADownloadError(f"{what} must be a relative path inside DEST, got {_short(target)}")
    p = PurePosixPath(target)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise AVADownloadError(f"{what} must be a relative path inside DEST, got {_short(target)}")
    return target


def confined(root: Path, relative: str, what: str) -> Path:
    """``root / relative`` resolved (links followed) and checked to stay strictly under ``root``."""
    real_root = root.resolve()
    path = (root / relative).resolve()
    if path == real_root or not path.is_relative_to(real_root):
        raise AVADownloadError(f"{what} {_short(relative)} points outside {clip(str(root))}")
    return path


def _manifest_file(raw: object, index: int) -> ManifestFile:
    what = f"files[{index}]"
    raw = _object(raw, what, {f.name for f in fields(ManifestFile)})
    name = plain_name(raw.get("name"), f"{what}.name")
    urls = [_url(u, f"{what}.urls[{k}]") for k, u in enumerate(_urls(raw.get("urls"), f"{what}.urls"))]
    size = _typed(raw, "size", int, what, None)
    if size is not None and size < 0:
        raise AVADownloadError(f"{what}: size must be >= 0, got {size}")
    checksum = _typed(raw, "checksum", str, what, None)
    if checksum is not None:
        try:
            Checksum.parse(checksum)
        except ValueError:
            raise AVADownloadError(f"{what}: checksum must look like sha256:<hex>, got {_short(checksum)}") from None
    archive = _typed(raw, "archive", str, what, None)
    if archive is not None and archive not in ARCHIVES:
        raise AVADownloadError(f"{what}: archive must be one of {', '.join(ARCHIVES)}, got {_short(archive)}")
    target = raw.get("target")
    if target is not None:
        target = relative_target(target, f"{what}.target")
    return ManifestFile(name=name, urls=urls, size=size, checksum=checksum, archive=archive, target=target)


def url_template(value: object, what: str) -> str:
    """A per-image URL with ``{id}`` (optionally padded, ``{id:06d}``) and no other field: format()
    on anything else raises, reaches into attributes, or pads to gigabytes."""
    template = _text(value, what)
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise AVADownloadError(f"{what}: bad URL template {_short(template)} ({exc})") from None
    fields_used = [(f, spec, conv) for _, f, spec, conv in parsed if f is not None]
    if not fields_used:
        raise AVADownloadError(f"{what}: URL template {_short(template)} has no {{id}}")
    for f, spec, conv in fields_used:
        if f != "id" or conv is not None or not re.fullmatch(r"0?[0-9]?d?", spec or "", re.ASCII):
            raise AVADownloadError(f"{what}: URL template {_short(template)} may only use {{id}} or {{id:0Nd}}, "
                                   f"not {{{clip(f + (':' + spec if spec else ''), 40)}}}")
    _url(template.format(id=1), what)
    return template


def _image_spec(raw: object) -> dict:
    raw = _object(raw, "images", {"urls", "checksums"})
    urls = [url_template(u, f"images.urls[{k}]") for k, u in enumerate(_urls(raw.get("urls"), "images.urls"))]
    checksums = _typed(raw, "checksums", dict, "images", {})
    for key, digest in checksums.items():
        if not re.fullmatch(r"[0-9]{1,12}", key, re.ASCII):
            raise AVADownloadError(f"images.checksums: key {_short(key)} is not an image id")
        if not isinstance(digest, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", digest):
            raise AVADownloadError(f"images.checksums[{key}] must be a sha256 hex digest, got {_short(digest)}")
    return {"urls": urls, "checksums": {k: v.lower() for k, v in checksums.items()}}


def shipped_manifests() -> dict[str, Path]:
    folder = resources.files("ilgnet_cli.ava") / "manifests"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".json")}


def manifest_help() -> str:
    parts = []
    for name, path in sorted(shipped_manifests().items()):
        m = Manifest.load(path)
        parts.append(f"{name}{'' if m.verified else ' (unverified)'}")
    return ", ".join(parts)


@dataclass
class Report:
    listed: int = 0
    present: int = 0
    downloaded: int = 0
    imported: int = 0
    missing: list[int] = field(default_factory=list)
    corrupt: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"listed": self.listed, "present": self.present, "downloaded": self.downloaded,
                "imported": self.imported, "missing": len(self.missing), "corrupt": len(self.corrupt),
                "failures": self.failures[:20]}


# --------------------------------------------------------------------------- safe extraction


def _safe_member(name: str) -> PurePosixPath:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise UnsafeArchiveError(f"archive member with an absolute path: {_short(name)}")
    if any(part == ".." for part in p.parts):
        raise UnsafeArchiveError(f"archive member escaping the destination: {_short(name)}")
    if "\0" in name:
        raise UnsafeArchiveError(f"archive member with a NUL in its name: {_short(name)}")
    return p


@dataclass
class _Budget:
    """Bytes written so far against the caps; ``packed`` is the archive's size on disk."""

    packed: int
    total: int = 0
    created: list[Path] = field(default_factory=list)  # files and folders we made, to undo on refusal


def _check_members(count: int, archive: Path) -> None:
    if count > MAX_MEMBERS:
        raise UnsafeArchiveError(f"{clip(archive.name)} has more than {MAX_MEMBERS:,} members")


def zip_member_count(path: Path) -> int | None:
    """Entries the zip's end record declares, read before zipfile loads its whole central
    directory (tens of millions of empty entries would cost gigabytes of ZipInfo). None: no record."""
    with path.open("rb") as fh:
        size = fh.seek(0, io.SEEK_END)
        fh.seek(max(0, size - (22 + 65535)))
        tail = fh.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return None
        count = int.from_bytes(tail[at + 10:at + 12], "little")
        locator = at - 20
        if count == 0xFFFF and locator >= 0 and tail[locator:locator + 4] == b"PK\x06\x07":
            fh.seek(int.from_bytes(tail[locator + 8:locator + 16], "little"))
            record = fh.read(56)
            if record[:4] == b"PK\x06\x06" and len(record) == 56:
                count = int.from_bytes(record[32:40], "little")
        return count


def _check_declared(name: str, size: int | None) -> None:
    # Early refusal on the header's word; the real limit is counted while writing.
    if size is not None and size > MAX_MEMBER_BYTES:
        raise UnsafeArchiveError(f"archive member {_short(name)} is larger than {MAX_MEMBER_BYTES >> 20} MiB")


def _make_dirs(dest: Path, rel: PurePosixPath, budget: _Budget) -> Path:
    """``dest/rel`` as real folders (never through links), recording each one made."""
    path = dest
    for part in rel.parts:
        path = path / part
        try:
            os.mkdir(path)
            budget.created.append(path)
        except FileExistsError:
            if path.is_symlink() or not path.is_dir():
                raise UnsafeArchiveError(f"archive member collides with a file: {_short(str(rel))}") from None
    return path


def _new_member_file(dest: Path, rel: PurePosixPath, budget: _Budget) -> io.BufferedWriter:
    """A new file for one member: real folders, O_EXCL|O_NOFOLLOW, mode 0666 & umask."""
    name = str(rel)
    if not rel.parts:
        raise UnsafeArchiveError(f"archive member without a name: {_short(name)}")
    folder = _make_dirs(dest, PurePosixPath(*rel.parts[:-1]), budget)
    path = folder / rel.parts[-1]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except FileExistsError:
        raise UnsafeArchiveError(f"archive member appears twice or collides: {_short(name)}") from None
    budget.created.append(path)
    return os.fdopen(fd, "wb")


def _count(budget: _Budget, name: str, written: int, more: int, packed: int | None) -> int:
    """Bytes of this member after ``more``; raises before they are written if a cap is passed."""
    written += more
    budget.total += more
    if written > MAX_MEMBER_BYTES:
        raise UnsafeArchiveError(f"archive member {_short(name)} is larger than {MAX_MEMBER_BYTES >> 20} MiB")
    if budget.total > MAX_TOTAL_BYTES:
        raise UnsafeArchiveError(f"archive unpacks to more than the total cap of {MAX_TOTAL_BYTES >> 30} GiB")
    if (packed is not None and written > RATIO_FLOOR and written > MAX_RATIO * max(packed, 1)) or (
            budget.total > RATIO_FLOOR and budget.total > MAX_RATIO * max(budget.packed, 1)):
        raise UnsafeArchiveError(f"archive member {_short(name)} expands more than {MAX_RATIO}x "
                                 "(compression ratio limit: an archive bomb?)")
    return written


def _write_member(read: Callable[[int], bytes], dest: Path, rel: PurePosixPath, budget: _Budget,
                  packed: int | None = None) -> None:
    """Stream one member to a new file, counting real bytes against the member, total and ratio caps."""
    written = 0
    with _new_member_file(dest, rel, budget) as out:
        while block := read(CHUNK):
            written = _count(budget, str(rel), written, len(block), packed)
            out.write(block)


class _CappedWriter:
    """py7zr's writer for one member (it pushes bytes): same file and caps as ``_write_member``."""

    def __init__(self, dest: Path, rel: PurePosixPath, budget: _Budget) -> None:
        self.dest, self.rel, self.budget = dest, rel, budget
        self.fh: io.BufferedWriter | None = None
        self.written = 0

    def write(self, data) -> int:
        if self.fh is None:
            self.fh = _new_member_file(self.dest, self.rel, self.budget)
        self.written = _count(self.budget, str(self.rel), self.written, len(data), None)
        self.fh.write(data)
        return len(data)

    def read(self, size: int | None = None) -> bytes:
        return b""

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.written

    def flush(self) -> None:
        if self.fh is not None:
            self.fh.flush()

    def size(self) -> int:
        return self.written

    def close(self) -> None:
        if self.fh is None:  # an empty member is still a file
            self.fh = _new_member_file(self.dest, self.rel, self.budget)
        self.fh.close()


def extract_archive(archive: Path, dest: Path, kind: str | None = None) -> Path:
    """Extract ``archive`` into ``dest`` after checking every member's name and type; refuses the
    whole archive if any member is unsafe, and undoes a partial extraction that hits a size cap."""
    kind = kind or archive_kind(archive)
    if kind not in ARCHIVES:
        raise AVADownloadError(f"unsupported archive type for {clip(archive.name)}")
    fresh = not os.path.lexists(dest)
    dest.mkdir(parents=True, exist_ok=True)
    budget = _Budget(packed=sum(p.stat().st_size for p in (seven_zip_parts(archive) if kind == "7z" else [archive])))
    try:
        _extract(archive, dest, kind, budget)
        _check_tree(dest)
    except BaseException as exc:
        if fresh:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            for path in reversed(budget.created):
                try:
                    path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
                except OSError:
                    pass
        if isinstance(exc, AVADownloadError) or not isinstance(exc, Exception):
            raise
        # A hostile or damaged archive can make any of the three readers raise nearly anything.
        raise AVADownloadError(f"cannot extract {clip(archive.name)}: {clip(f'{type(exc).__name__}: {exc}')}") from None
    return dest


def _extract(archive: Path, dest: Path, kind: str, budget: _Budget) -> None:
    if kind == "zip":
        _check_members(zip_member_count(archive) or 0, archive)
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_members(len(infos), archive)
            for info in infos:
                _safe_member(info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafeArchiveError(f"archive member is a symbolic link: {_short(info.filename)}")
                _check_declared(info.filename, info.file_size)
            for info in infos:
                rel = _safe_member(info.filename)
                if info.is_dir():
                    _make_dirs(dest, rel, budget)
                    continue
                with zf.open(info) as src:
                    _write_member(src.read, dest, rel, budget, packed=info.compress_size)
    elif kind.startswith("tar"):
        with tarfile.open(archive) as tf:
            members = []
            for m in tf:  # one header at a time, so a huge member count is refused before it is all in memory
                members.append(m)
                _check_members(len(members), archive)
                _safe_member(m.name)
                if not (m.isfile() or m.isdir()):
                    raise UnsafeArchiveError(f"archive member is not a plain file or folder: {_short(m.name)}")
                _check_declared(m.name, m.size)
            for m in members:
                rel = _safe_member(m.name)
                if m.isdir():
                    _make_dirs(dest, rel, budget)
                    continue
                member = tf.extractfile(m)
                assert member is not None  # None only for what is not a regular file, refused above
                _write_member(member.read, dest, rel, budget)
    else:
        import py7zr

        # A RawIOBase is a binary file, but typeshed's IO[bytes] is a class of its own.
        with JoinedFile(seven_zip_parts(archive)) as fh, py7zr.SevenZipFile(fh, mode="r") as z:  # type: ignore[arg-type]
            entries = z.list()
            _check_members(len(entries), archive)
            for entry in entries:
                _safe_member(entry.filename)
                if entry.is_symlink:
                    raise UnsafeArchiveError(f"archive member is a symbolic link: {_short(entry.filename)}")
                _check_declared(entry.filename, entry.uncompressed)
            for entry in entries:
                if entry.is_directory:
                    _make_dirs(dest, _safe_member(entry.filename), budget)

            class Factory(py7zr.io.WriterFactory):
                # _CappedWriter has Py7zIO's methods; subclassing the ABC would import py7zr with this module.
                def create(self, filename: str) -> _CappedWriter:  # type: ignore[override]
                    # py7zr hands over DEST joined with the member's (already checked) name.
                    path = PurePosixPath(filename.replace("\\", "/"))
                    root = PurePosixPath(str(dest).replace("\\", "/"))
                    if not path.is_relative_to(root):
                        raise UnsafeArchiveError(f"archive member escaping the destination: {_short(filename)}")
                    rel = _safe_member(str(path.relative_to(root)))
                    if not rel.parts:
                        raise UnsafeArchiveError(f"archive member without a name: {_short(filename)}")
                    return _CappedWriter(dest, rel, budget)

            z.extractall(path=dest, factory=Factory())


def _check_tree(root: Path) -> None:
    real_root = os.path.realpath(root)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) or not os.path.realpath(path).startswith(real_root + os.sep):
                raise UnsafeArchiveError(f"extracted entry points outside the destination: {path}")


class JoinedFile(io.RawIOBase):
    """The volumes of a split archive (``.7z.001``, ``.002``...) read as one seekable file."""

    def __init__(self, parts: list[Path]) -> None:
        super().__init__()
        self.parts = parts
        self.sizes = [p.stat().st_size for p in parts]
        self.starts = [sum(self.sizes[:i]) for i in range(len(parts))]
        self.total = sum(self.sizes)
        self.pos = 0
        self.handles = [p.open("rb") for p in parts]

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.total}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def readinto(self, buffer) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self.pos < self.total:
            i = max(k for k, start in enumerate(self.starts) if start <= self.pos)
            fh = self.handles[i]
            fh.seek(self.pos - self.starts[i])
            chunk = fh.read(min(len(view) - done, self.sizes[i] - (self.pos - self.starts[i])))
            if not chunk:
                break
            view[done:done + len(chunk)] = chunk
            done += len(chunk)
            self.pos += len(chunk)
        return done

    def close(self) -> None:
        for fh in self.handles:
            fh.close()
        super().close()


def seven_zip_parts(first: Path) -> list[Path]:
    """``AVA.7z.001`` -> every part, in order; a single ``.7z`` -> itself."""
    m = re.match(r"^(.*\.7z)\.(\d{3})$", first.name)
    if not m:
        return [first]
    # Escaped: a name with [ ] * ? would otherwise pull in another set's volumes.
    parts = sorted(first.parent.glob(f"{glob.escape(m.group(1))}.[0-9][0-9][0-9]"))
    numbers = [int(p.suffix[1:]) for p in parts]
    if numbers != list(range(1, len(parts) + 1)):
        raise AVADownloadError(f"7z volume set {m.group(1)} is incomplete: found parts {numbers}")
    return parts


def archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    for suffix, kind in ((".tar.gz", "tar.gz"), (".tgz", "tar.gz"), (".tar.bz2", "tar.bz2"), (".tar.xz", "tar.xz"),
                         (".tar", "tar"), (".zip", "zip"), (".7z", "7z")):
        if name.endswith(suffix):
            return kind
    if re.search(r"\.7z\.\d{3}$", name):
        return "7z"
    return None


# --------------------------------------------------------------------------- importing


def _new_temp(folder: Path, name: str) -> tuple[int, Path]:
    """An O_EXCL temp file with a random name next to ``name`` (never a planted link), mode 0666 & umask:
    mkstemp alone gives 0600, which other users of a shared dataset folder could not read."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~current_umask())
    return fd, Path(tmp)


def _copy_regular(src: Path, folder: Path, name: str) -> Path:
    # O_NOFOLLOW + O_NONBLOCK: a link or FIFO swapped in after the walk neither leads elsewhere nor blocks.
    fd_in = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd_in, "rb") as fin:
        if not stat.S_ISREG(os.fstat(fin.fileno()).st_mode):
            raise AVADownloadError(f"--from: {clip(str(src))} is not a regular file")
        fd, tmp = _new_temp(folder, name)
        try:
            with os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout, CHUNK)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return tmp


def _place(src: Path, dst: Path, move: bool) -> bool:
    """Put ``src`` at ``dst``: rename (move) or hard link, falling back to a copy. False if present.
    A symlink at ``dst`` is not ours and is replaced (rename replaces the link, never its target)."""
    if dst.exists() and not dst.is_symlink():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    if move:
        os.replace(src, dst)
        return True
    # A random name: link() never follows or overwrites what is there, so a planted link fails harmlessly.
    tmp = dst.with_name(f".{dst.name}.{secrets.token_hex(8)}.tmp")
    try:
        os.link(src, tmp, follow_symlinks=False)
    except OSError:
        tmp = _copy_regular(src, dst.parent, dst.name)
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def image_id(name: str) -> int | None:
    """The AVA id of ``<id>.jpg`` (ASCII digits only), else None."""
    m = IMAGE_NAME.fullmatch(name)
    return int(m.group(1)) if m else None


def import_tree(root: Path, dest: Path, *, move: bool, report: Report) -> None:
    """Collect ``<id>.jpg`` images and AVA metadata from anywhere under ``root`` into ``dest``.
    Links are never followed (os.walk does not enter linked folders; linked files are reported)
    and anything but a regular file (FIFOs, devices) is skipped."""
    images = dest / "images"
    images.mkdir(parents=True, exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            src = base / name
            try:
                mode = os.lstat(src).st_mode
            except OSError:
                continue
            if stat.S_ISLNK(mode):
                report.failures.append(f"--from: skipped symbolic link {_short(str(src))} (links are not followed)")
                continue
            if name in dirnames or not stat.S_ISREG(mode):
                if not stat.S_ISDIR(mode):
                    report.failures.append(f"--from: skipped {_short(str(src))}: not a regular file")
                continue
            image = image_id(name)
            if image is not None:
                if _place(src, images / f"{image}.jpg", move):
                    report.imported += 1
            elif name in METADATA or name.endswith(".jpgl") or name in ("styles.txt", "train.lab", "test.multilab"):
                folder = base.name if base.name in ("aesthetics_image_lists", "style_image_lists") else ""
                _place(src, dest / folder / name, move)


def _import_archive(archive: Path, kind: str, dest: Path, report: Report) -> None:
    """Extract into a fresh random folder under DEST/.extract, move what is useful, remove the rest."""
    extract_root = dest / ".extract"
    if extract_root.is_symlink():
        raise AVADownloadError(f"{clip(str(extract_root))} is a symbolic link; remove it")
    extract_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=extract_root, prefix=f"{archive.name[:100]}."))
    try:
        extract_archive(archive, staging, kind)
        import_tree(staging, dest, move=True, report=report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        try:
            extract_root.rmdir()  # only when empty: another run may be using it
        except OSError:
            pass


def import_from(source: Path, dest: Path, report: Report) -> None:
    """``--from``: a folder (hard-linked), an archive or a 7z volume set (extracted, then moved)."""
    if source.is_dir():
        import_tree(source, dest, move=False, report=report)
        return
    if not source.exists():
        raise AVADownloadError(f"--from: no such file or folder: {clip(str(source))}")
    kind = archive_kind(source)
    if kind is None:
        raise AVADownloadError(f"--from: {clip(source.name)} is neither a folder nor a zip/tar/7z archive")
    _import_archive(source, kind, dest, report)


# --------------------------------------------------------------------------- downloading


ProgressFn = Callable[[str, int, int | None], None]  # (what, done, total)


def _unplant(dest: Path) -> None:
    """download() appends to ``DEST.part``; a symlink planted there would be written through."""
    part = dest.with_name(dest.name + ".part")
    if part.is_symlink():
        part.unlink()


def plan_files(manifest: Manifest, dest: Path) -> list[tuple[ManifestFile, Path, Path]]:
    """(entry, download path, target) for every file, each checked to stay under DEST before
    anything is downloaded; a manifest built in code gets the same checks as a loaded one."""
    staging = dest / ".downloads"
    plan = []
    for f in manifest.files:
        name = plain_name(f.name, "manifest file name")
        if f.archive is not None and f.archive not in ARCHIVES:
            raise AVADownloadError(f"manifest file {_short(name)}: unsupported archive type {_short(f.archive)}")
        download_to = confined(dest, f".downloads/{name}", "manifest file name")
        if download_to.parent != staging.resolve():
            raise AVADownloadError(f"manifest file name {_short(name)} points outside {clip(str(staging))}")
        target = confined(dest, relative_target(f.target or name, "manifest target"), "manifest target")
        plan.append((f, download_to, target))
    return plan


def fetch_manifest(manifest: Manifest, dest: Path, *, jobs: int = 4, retries: int = 4, backoff: float = 1.0,
                   progress: ProgressFn | None = None, report: Report) -> None:
    for f, download_to, target in plan_files(manifest, dest):
        if f.archive is None and target.exists():
            continue
        _unplant(download_to)
        path = download(f.urls, download_to, checksum=Checksum.parse(f.checksum) if f.checksum else None,
                        expected_size=f.size, retries=retries, backoff=backoff,
                        max_bytes=MAX_TOTAL_BYTES if f.archive else MAX_MEMBER_BYTES,
                        progress=functools.partial(progress, f.name) if progress else None)
        if f.archive:
            _import_archive(path, f.archive, dest, report)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    if manifest.images:
        fetch_images(manifest.images, dest, jobs=jobs, retries=retries, backoff=backoff, progress=progress,
                     report=report)


def plain_ids(ids: list[int]) -> tuple[list[int], list[int]]:
    """AVA.txt ids that can be ``images/<id>.jpg`` and those that cannot (negative, or too long)."""
    good = [i for i in ids if 0 <= i < 10 ** MAX_ID_DIGITS]
    return good, [i for i in ids if not 0 <= i < 10 ** MAX_ID_DIGITS]


def fetch_images(spec: dict, dest: Path, *, jobs: int, retries: int, backoff: float,
                 progress: ProgressFn | None, report: Report) -> None:
    ava_path = dest / "AVA.txt"
    if not ava_path.exists():
        raise AVADownloadError("the manifest's image list needs AVA.txt first (list it under 'files')")
    ids, odd = plain_ids(sorted(read_ava(ava_path).records))
    report.failures.extend(f"AVA.txt: image id {clip(str(i), 40)} is not a plain image id; skipped" for i in odd)
    images = dest / "images"
    todo = [i for i in ids if not (images / f"{i}.jpg").exists()]
    checksums = spec.get("checksums", {})
    done = 0

    def one(image_id: int) -> tuple[int, str | None]:
        urls = [u.format(id=image_id) for u in spec["urls"]]
        digest = checksums.get(str(image_id))
        try:
            _unplant(images / f"{image_id}.jpg")
            download(urls, images / f"{image_id}.jpg", checksum=Checksum("sha256", digest) if digest else None,
                     retries=retries, backoff=backoff, max_bytes=MAX_MEMBER_BYTES)
            return image_id, None
        except DownloadError as exc:
            return image_id, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        for fut in as_completed([pool.submit(one, i) for i in todo]):
            image_id, error = fut.result()
            done += 1
            if error:
                report.failures.append(error)
            else:
                report.downloaded += 1
            if progress:
                progress("images", done, len(todo))


# --------------------------------------------------------------------------- verification


def _check_image(path: str) -> str | None:
    from ilgnet_cli.data.decode import DecodeError, decode

    try:
        decode(path, draft=256)
    except DecodeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure makes the file corrupt for training
        return f"{type(exc).__name__}: {exc}"
    return None


def verify(dest: Path, *, jobs: int = 4, progress: ProgressFn | None = None, report: Report) -> None:
    """Open and decode every image listed in AVA.txt; write missing.txt and corrupt.txt."""
    ids, odd = plain_ids(sorted(read_ava(dest / "AVA.txt").records))
    report.listed = len(ids) + len(odd)
    images = dest / "images"
    present = [i for i in ids if (images / f"{i}.jpg").is_file()]
    report.missing = sorted(set(ids) - set(present)) + odd  # an id that cannot be a file name is missing
    report.present = len(present)
    corrupt = []
    with ProcessPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(_check_image, str(images / f"{i}.jpg")): i for i in present}
        for n, fut in enumerate(as_completed(futures), 1):
            if fut.result() is not None:
                corrupt.append(futures[fut])
            if progress and (n % 200 == 0 or n == len(futures)):
                progress("verify", n, len(futures))
    report.corrupt = sorted(corrupt)
    _write_report(dest / "missing.txt", "".join(f"{i}\n" for i in report.missing))
    _write_report(dest / "corrupt.txt", "".join(f"{i}\n" for i in report.corrupt))


def _write_report(path: Path, text: str) -> None:
    """Atomic like fsutil.atomic_write_text, but 0666 & umask rather than mkstemp's 0600."""
    fd, tmp = _new_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def download_ava(dest: str | Path, *, source: str | None = None, manifest: str | Path | None = None,
                 from_path: str | Path | None = None, jobs: int = 4, retries: int = 4, backoff: float = 1.0,
                 progress: ProgressFn | None = None) -> Report:
    """Fetch or import AVA into ``dest`` and verify it. Safe to re-run: finished files are kept."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report = Report()
    if from_path is not None:
        import_from(Path(from_path), dest, report)
    if source or manifest:
        if manifest:
            m = Manifest.load(manifest)
        else:
            known = shipped_manifests()
            if source not in known:
                raise AVADownloadError(f"unknown source {_short(source)}; known: {manifest_help()}")
            m = Manifest.load(known[source])
        fetch_manifest(m, dest, jobs=jobs, retries=retries, backoff=backoff, progress=progress, report=report)
    if not (dest / "AVA.txt").exists():
        raise AVADownloadError(f"{dest / 'AVA.txt'} is missing: give a source with metadata, or copy AVA.txt there")
    verify(dest, jobs=jobs, progress=progress, report=report)
    return report
