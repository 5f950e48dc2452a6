"""`ilgnet download ava`: get AVA into one layout, from a mirror or a copy the user already has.

Layout of DEST::

    AVA.txt, tags.txt, challenges.txt, aesthetics_image_lists/, style_image_lists/
    images/<id>.jpg
    missing.txt, corrupt.txt      (written by the verification pass)
    .downloads/                   (archives and *.part files while downloading)

Sources are manifests (JSON): shipped ones in ``ilgnet_cli/manifests/`` or the user's own.
A manifest lists ``files`` (URLs + mirrors, size, checksum, archive type, target) and/or an
``images`` URL template for per-image mirrors. Archives are extracted safely: no absolute
paths, no ``..``, no links, devices or anything that would land outside DEST.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

from ilgnet_cli.ava import read_ava
from ilgnet_cli.download import Checksum, DownloadError, download

METADATA = ("AVA.txt", "tags.txt", "challenges.txt")
IMAGE_NAME = re.compile(r"^(\d+)\.jpe?g$", re.IGNORECASE)


class AVADownloadError(Exception):
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
            raw = json.loads(Path(path).read_text(encoding="utf-8"))
            files = [ManifestFile(**f) for f in raw.pop("files", [])]
            return cls(files=files, **raw)
        except (OSError, ValueError, TypeError) as exc:
            raise AVADownloadError(f"cannot read manifest {path}: {exc}") from None


def shipped_manifests() -> dict[str, Path]:
    folder = resources.files("ilgnet_cli") / "manifests"
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
        raise UnsafeArchiveError(f"archive member with an absolute path: {name!r}")
    if any(part == ".." for part in p.parts):
        raise UnsafeArchiveError(f"archive member escaping the destination: {name!r}")
    return p


def extract_archive(archive: Path, dest: Path, kind: str | None = None) -> Path:
    """Extract ``archive`` into ``dest`` after checking every member; refuses the whole archive
    (writing nothing) if any member is unsafe."""
    kind = kind or archive_kind(archive)
    dest.mkdir(parents=True, exist_ok=True)
    if kind == "zip":
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                _safe_member(info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise UnsafeArchiveError(f"archive member is a symbolic link: {info.filename!r}")
            zf.extractall(dest)
    elif kind in ("tar", "tar.gz", "tar.bz2", "tar.xz"):
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for m in members:
                _safe_member(m.name)
                if not (m.isfile() or m.isdir()):
                    raise UnsafeArchiveError(f"archive member is not a plain file or folder: {m.name!r}")
            tf.extractall(dest, members=members, filter="data")
    elif kind == "7z":
        import py7zr

        with JoinedFile(seven_zip_parts(archive)) as fh, py7zr.SevenZipFile(fh, mode="r") as z:
            for entry in z.list():
                _safe_member(entry.filename)
                if entry.is_symlink:
                    raise UnsafeArchiveError(f"archive member is a symbolic link: {entry.filename!r}")
            z.extractall(path=dest)
    else:
        raise AVADownloadError(f"unsupported archive type for {archive.name}")
    _check_tree(dest)
    return dest


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
    parts = sorted(first.parent.glob(f"{m.group(1)}.[0-9][0-9][0-9]"))
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


def _place(src: Path, dst: Path, move: bool) -> bool:
    """Put ``src`` at ``dst``: rename (move) or hard link, falling back to a copy. False if present."""
    if dst.exists():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp")
    try:
        if move:
            os.replace(src, dst)
            return True
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
    return True


def import_tree(root: Path, dest: Path, *, move: bool, report: Report) -> None:
    """Collect ``<id>.jpg`` images and AVA metadata from anywhere under ``root`` into ``dest``."""
    images = dest / "images"
    images.mkdir(parents=True, exist_ok=True)
    for dirpath, _, filenames in os.walk(root):
        base = Path(dirpath)
        for name in filenames:
            src = base / name
            if IMAGE_NAME.match(name):
                image_id = IMAGE_NAME.match(name).group(1)
                if _place(src, images / f"{int(image_id)}.jpg", move):
                    report.imported += 1
            elif name in METADATA or name.endswith(".jpgl") or name in ("styles.txt", "train.lab", "test.multilab"):
                folder = base.name if base.name in ("aesthetics_image_lists", "style_image_lists") else ""
                _place(src, dest / folder / name, move)


def import_from(source: Path, dest: Path, report: Report) -> None:
    """``--from``: a folder (hard-linked), an archive or a 7z volume set (extracted, then moved)."""
    if source.is_dir():
        import_tree(source, dest, move=False, report=report)
        return
    if not source.exists():
        raise AVADownloadError(f"--from: no such file or folder: {source}")
    kind = archive_kind(source)
    if kind is None:
        raise AVADownloadError(f"--from: {source.name} is neither a folder nor a zip/tar/7z archive")
    staging = dest / ".extract" / source.name
    try:
        extract_archive(source, staging, kind)
        import_tree(staging, dest, move=True, report=report)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- downloading


ProgressFn = Callable[[str, int, int | None], None]  # (what, done, total)


def fetch_manifest(manifest: Manifest, dest: Path, *, jobs: int = 4, retries: int = 4, backoff: float = 1.0,
                   progress: ProgressFn | None = None, report: Report) -> None:
    staging = dest / ".downloads"
    for f in manifest.files:
        target = dest / (f.target or f.name)
        if f.archive is None and target.exists():
            continue
        path = download(f.urls, staging / f.name, checksum=Checksum.parse(f.checksum) if f.checksum else None,
                        expected_size=f.size, retries=retries, backoff=backoff,
                        progress=(lambda d, t, n=f.name: progress(n, d, t)) if progress else None)
        if f.archive:
            extracted = dest / ".extract" / f.name
            try:
                extract_archive(path, extracted, f.archive)
                import_tree(extracted, dest, move=True, report=report)
            finally:
                shutil.rmtree(extracted, ignore_errors=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    if manifest.images:
        fetch_images(manifest.images, dest, jobs=jobs, retries=retries, backoff=backoff, progress=progress,
                     report=report)


def fetch_images(spec: dict, dest: Path, *, jobs: int, retries: int, backoff: float,
                 progress: ProgressFn | None, report: Report) -> None:
    ava_path = dest / "AVA.txt"
    if not ava_path.exists():
        raise AVADownloadError("the manifest's image list needs AVA.txt first (list it under 'files')")
    ids = sorted(read_ava(ava_path).records)
    images = dest / "images"
    todo = [i for i in ids if not (images / f"{i}.jpg").exists()]
    checksums = spec.get("checksums", {})
    done = 0

    def one(image_id: int) -> tuple[int, str | None]:
        urls = [u.format(id=image_id) for u in spec["urls"]]
        digest = checksums.get(str(image_id))
        try:
            download(urls, images / f"{image_id}.jpg", checksum=Checksum("sha256", digest) if digest else None,
                     retries=retries, backoff=backoff)
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
    from ilgnet_cli.decode import DecodeError, decode

    try:
        decode(path, draft=256)
    except DecodeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - any failure makes the file corrupt for training
        return f"{type(exc).__name__}: {exc}"
    return None


def verify(dest: Path, *, jobs: int = 4, progress: ProgressFn | None = None, report: Report) -> None:
    """Open and decode every image listed in AVA.txt; write missing.txt and corrupt.txt."""
    from ilgnet_cli.fsutil import atomic_write_text

    ids = sorted(read_ava(dest / "AVA.txt").records)
    report.listed = len(ids)
    images = dest / "images"
    present = [i for i in ids if (images / f"{i}.jpg").is_file()]
    report.missing = sorted(set(ids) - set(present))
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
    atomic_write_text(dest / "missing.txt", "".join(f"{i}\n" for i in report.missing))
    atomic_write_text(dest / "corrupt.txt", "".join(f"{i}\n" for i in report.corrupt))


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
                raise AVADownloadError(f"unknown source {source!r}; known: {manifest_help()}")
            m = Manifest.load(known[source])
        fetch_manifest(m, dest, jobs=jobs, retries=retries, backoff=backoff, progress=progress, report=report)
    if not (dest / "AVA.txt").exists():
        raise AVADownloadError(f"{dest / 'AVA.txt'} is missing: give a source with metadata, or copy AVA.txt there")
    verify(dest, jobs=jobs, progress=progress, report=report)
    return report
