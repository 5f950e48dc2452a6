"""The photographer's own ratings, where editors keep them, for ``ilgnet learn``.

Sources, in the order that wins when two disagree:

1. ``--ratings FILE.csv``: ``path,rating`` rows (paths relative to the CSV's folder; a header
   row is allowed);
2. ``--keep DIR`` / ``--reject DIR``: every image under them is liked (5) / rejected (-1);
3. XMP sidecars beside the photo: Adobe/Lightroom ``IMG.xmp`` and darktable ``IMG.JPG.xmp``
   (when both exist and differ, the one modified last wins: it is what the user did last);
4. XMP embedded in the image (JPEG APP1, HEIC, TIFF/DNG tag 700): a sidecar beats it, as in
   Lightroom.

``xmp:Rating`` is -1 (rejected), 0 (unrated) or 1-5 (reals allowed). A rating equal to
``ilgnet:Rating`` was written by ``ilgnet score --xmp`` (the same rule xmp.py uses to keep hand
ratings), so it is ilgnet's guess, never the user's taste, and is left out; ``ilgnet:`` fields
are never read as ratings. Unrated photos are left out. Nothing here raises for bad input:
unreadable sidecars, bad CSV rows and conflicts become one-line notes in the report.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ilgnet_cli.photos.discover import Selection, find_images
from ilgnet_cli.photos.xmp import XmpError, read_ratings, sidecar_paths

MAX_CSV_BYTES = 64 << 20
# Embedded XMP is found by Pillow (JPEG, HEIC, TIFF/DNG); for other files (RAWs Pillow cannot
# open) the packet is searched in the file's first bytes, where cameras and editors put it.
SCAN_BYTES = 4 << 20
REJECTED = -1.0


@dataclass
class RatedPhoto:
    path: str
    rating: float  # -1 rejected, else 1..5
    source: str  # "csv", "keep folder", "reject folder", "adobe sidecar", "darktable sidecar", "embedded XMP"


@dataclass
class RatingsReport:
    photos: list[RatedPhoto] = field(default_factory=list)
    unrated_paths: list[str] = field(default_factory=list)
    ilgnet_written: int = 0  # ratings ilgnet wrote itself: left out
    problems: list[str] = field(default_factory=list)  # unreadable sidecars, bad CSV rows
    conflicts: list[str] = field(default_factory=list)

    @property
    def unrated(self) -> int:
        return len(self.unrated_paths)

    def counts(self) -> dict[str, int]:
        """Photos per rating ('rejected', '1' ... '5'; reals as written)."""
        c = Counter("rejected" if p.rating == REJECTED else f"{p.rating:g}" for p in self.photos)
        return dict(sorted(c.items(), key=lambda kv: -1.0 if kv[0] == "rejected" else float(kv[0])))

    def sources(self) -> dict[str, int]:
        return dict(Counter(p.source for p in self.photos))


def _fmt(rating: float) -> str:
    return "rejected" if rating == REJECTED else f"{rating:g}"


def _usable(rating: float | None, ours: float | None) -> tuple[float | None, bool]:
    """(the user's rating or None, whether it was ilgnet's own)."""
    if rating is None or rating == 0:
        return None, False
    if ours is not None and rating == ours:
        return None, True
    return rating, False


class _Folders:
    """Each folder listed once: sidecars are found whatever their case (``IMG_1.XMP``)."""

    def __init__(self) -> None:
        self._names: dict[str, dict[str, str]] = {}

    def actual(self, path: Path) -> Path | None:
        folder = str(path.parent)
        if folder not in self._names:
            try:
                names = sorted(os.listdir(path.parent))
            except OSError:
                names = []
            self._names[folder] = {}
            for name in names:
                self._names[folder].setdefault(name.casefold(), name)
        found = self._names[folder].get(path.name.casefold())
        return path.parent / found if found else None


def _sidecar_rating(image: str, folders: _Folders, report: RatingsReport) -> tuple[float | None, str, bool]:
    """(rating, source, ilgnet's own) from the image's sidecars; the newer wins when two differ."""
    found: list[tuple[float, float, str]] = []  # (mtime, rating, style)
    ours_seen = False
    for style, path in zip(("adobe", "darktable"), sidecar_paths(image, "both"), strict=True):
        actual = folders.actual(path)
        if actual is None:
            continue
        try:
            rating, ours = read_ratings(actual)
            mtime = os.lstat(actual).st_mtime
        except XmpError as exc:
            report.problems.append(f"unreadable sidecar: {exc}")
            continue
        except OSError as exc:
            report.problems.append(f"unreadable sidecar: {actual}: {exc.strerror or exc}")
            continue
        rating, own = _usable(rating, ours)
        ours_seen |= own
        if rating is not None:
            found.append((mtime, rating, style))
    if not found:
        return None, "", ours_seen
    found.sort(key=lambda f: (f[0], f[2] == "darktable"))
    mtime, rating, style = found[-1]
    if len({f[1] for f in found}) > 1:
        others = ", ".join(f"{s} {_fmt(r)}" for _, r, s in found[:-1])
        report.conflicts.append(f"{image}: sidecars disagree ({style} {_fmt(rating)} vs {others}); "
                                f"the {style} sidecar (modified last) wins")
    return rating, f"{style} sidecar", False


def embedded_xmp(path: str) -> bytes | None:
    """The XMP packet inside an image file, or None. Never raises."""
    from PIL import Image

    import ilgnet_cli.data.decode  # noqa: F401 - registers the HEIF opener

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                data = img.info.get("xmp")
                if data is None and hasattr(img, "tag_v2"):
                    data = img.tag_v2.get(700)
                if isinstance(data, str):
                    data = data.encode("utf-8")
                if isinstance(data, bytes | bytearray) and data.strip(b"\x00 \t\r\n"):
                    # Phones pad or NUL-terminate the packet (iPhone HEIC): not part of the XML.
                    return bytes(data).strip(b"\x00")
                if hasattr(img, "tag_v2") or img.format in ("JPEG", "MPO"):
                    return None  # Pillow read the container: nothing embedded
    except Exception:  # noqa: BLE001 - a file Pillow cannot open may still hold a packet
        pass
    return _scan_packet(path)


def _scan_packet(path: str) -> bytes | None:
    try:
        with open(path, "rb") as fh:
            head = fh.read(SCAN_BYTES)
    except OSError:
        return None
    start = head.find(b"<x:xmpmeta")
    if start < 0:
        return None
    end = head.find(b"</x:xmpmeta>", start)
    return head[start:end + len(b"</x:xmpmeta>")] if end >= 0 else None


def _embedded_rating(image: str, report: RatingsReport) -> tuple[float | None, bool]:
    data = embedded_xmp(image)
    if data is None:
        return None, False
    try:
        rating, ours = read_ratings(f"{image} (embedded XMP)", data)
    except XmpError as exc:
        report.problems.append(f"unreadable embedded XMP: {exc}")
        return None, False
    return _usable(rating, ours)


def xmp_ratings(files: list[str]) -> RatingsReport:
    """Ratings of ``files`` from their sidecars, else their embedded XMP."""
    report = RatingsReport()
    folders = _Folders()
    for image in files:
        rating, source, own_sidecar = _sidecar_rating(image, folders, report)
        embedded, own_embedded = _embedded_rating(image, report)
        if rating is not None and embedded is not None and embedded != rating:
            report.conflicts.append(f"{image}: sidecar says {_fmt(rating)}, embedded XMP {_fmt(embedded)}; "
                                    "the sidecar wins (as in Lightroom)")
        if rating is None and embedded is not None:
            rating, source = embedded, "embedded XMP"
        if rating is not None:
            report.photos.append(RatedPhoto(image, rating, source))
        elif own_sidecar or own_embedded:
            report.ilgnet_written += 1
        else:
            report.unrated_paths.append(image)
    return report


def folder_ratings(keep: list[str | os.PathLike[str]], reject: list[str | os.PathLike[str]],
                   selection: Selection | None = None) -> RatingsReport:
    """Every image under ``keep`` is liked (5 stars), under ``reject`` rejected (-1)."""
    report = RatingsReport()
    for folders, rating, source in ((keep, 5.0, "keep folder"), (reject, REJECTED, "reject folder")):
        if not folders:
            continue
        missing: list[str] = []
        for path in find_images(list(folders), selection, missing):
            report.photos.append(RatedPhoto(path, rating, source))
        report.problems.extend(f"{source}: no such folder: {m}" for m in missing)
    return _dedupe(report)


def _parse_rating(text: str) -> float | None:
    from ilgnet_cli.photos.xmp import _as_rating

    return _as_rating(text)


def csv_ratings(path: str | os.PathLike[str]) -> RatingsReport:
    """``path,rating`` rows; a first row whose rating is not a number is a header."""
    report = RatingsReport()
    path = Path(path).expanduser()
    try:
        if path.exists() and not path.is_file():  # a FIFO or device would block the run forever
            report.problems.append(f"{path}: not a regular file; not read")
            return report
        if path.stat().st_size > MAX_CSV_BYTES:
            report.problems.append(f"{path}: larger than {MAX_CSV_BYTES >> 20} MB; not read")
            return report
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        report.problems.append(f"{path}: {exc.strerror or exc}")
        return report
    except UnicodeDecodeError:
        report.problems.append(f"{path}: not UTF-8 text")
        return report
    base = path.parent
    try:
        rows = list(csv.reader(io.StringIO(text)))
    except csv.Error as exc:
        report.problems.append(f"{path}: not a CSV file ({str(exc)[:80]})")
        return report
    for line, row in enumerate(rows, 1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if len(row) < 2:
            report.problems.append(f"{path} line {line}: expected path,rating")
            continue
        rating = _parse_rating(row[1])
        if rating is None:
            if line == 1:
                continue  # a header
            report.problems.append(f"{path} line {line}: {row[1][:40]!r} is not a rating (-1, 0, 1-5)")
            continue
        image = Path(row[0].strip()).expanduser()
        image = image if image.is_absolute() else base / image
        if not image.is_file():
            report.problems.append(f"{path} line {line}: no such photo: {str(image)[:80]}")
            continue
        if rating == 0:
            report.unrated_paths.append(str(image))
            continue
        report.photos.append(RatedPhoto(str(image), rating, "csv"))
    return _dedupe(report)


def _key(path: str) -> str:
    return os.path.realpath(path)


def _dedupe(report: RatingsReport) -> RatingsReport:
    """One rating per photo: the first wins, a different later one is a conflict."""
    seen: dict[str, RatedPhoto] = {}
    for p in report.photos:
        first = seen.get(_key(p.path))
        if first is None:
            seen[_key(p.path)] = p
        elif first.rating != p.rating:
            report.conflicts.append(f"{p.path}: {first.source} says {_fmt(first.rating)}, {p.source} "
                                    f"{_fmt(p.rating)}; {first.source} wins")
    report.photos = list(seen.values())
    return report


def collect(paths: Sequence[str | os.PathLike[str]], *, keep: list | None = None, reject: list | None = None,
            ratings_csv: str | os.PathLike[str] | None = None, selection: Selection | None = None,
            missing: list[str] | None = None) -> RatingsReport:
    """All ratings: CSV, then keep/reject folders, then the XMP of the images under ``paths``."""
    parts = []
    if ratings_csv is not None:
        parts.append(csv_ratings(ratings_csv))
    if keep or reject:
        parts.append(folder_ratings(keep or [], reject or [], selection))
    if paths:
        parts.append(xmp_ratings(list(find_images(paths, selection, missing))))
    merged = RatingsReport()
    for part in parts:
        merged.photos.extend(part.photos)
        merged.problems.extend(part.problems)
        merged.conflicts.extend(part.conflicts)
        merged.ilgnet_written += part.ilgnet_written
    merged = _dedupe(merged)
    # A photo unrated in its XMP but rated in the CSV or a folder is rated.
    rated = {_key(p.path) for p in merged.photos}
    unrated = {_key(u): u for part in parts for u in part.unrated_paths if _key(u) not in rated}
    merged.unrated_paths = list(unrated.values())
    return merged
