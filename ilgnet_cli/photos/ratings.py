"""The photographer's own ratings, wherever photo managers keep them: for ``ilgnet learn``, and
for ``ilgnet score --xmp``, which keeps them.

A photo's ratings are read from every source there is, and when the user's disagree the first
in this FIXED order wins (no file time ever decides, so an ilgnet rewrite cannot flip it):

1. ``--ratings FILE.csv``: ``path,rating`` rows (paths relative to the CSV's folder; a header
   row is allowed);
2. ``--keep DIR`` / ``--reject DIR``: every image under them is liked (5) / rejected (-1);
3. catalogs (``--catalog``, in the order given): darktable ``library.db``, digiKam
   ``digikam4.db``, Lightroom Classic ``.lrcat`` (catalogs.py; a catalog's photos are read from
   the catalog only, unless they are also under the folders given);
4. the darktable-style sidecar ``IMG.JPG.xmp`` (darktable, digiKam);
5. the Adobe-style sidecar ``IMG.xmp`` (Lightroom for RAW files, Capture One, Bridge);
6. XMP embedded in the image (JPEG APP1, HEIC, TIFF/DNG tag 700): ``xmp:Rating``, else
   Windows' ``MicrosoftPhoto:Rating``; digiKam's ``PickLabel`` (1: rejected, which beats stars;
   3: accepted, read as a pick when there are no stars);
7. EXIF ``Rating`` / ``RatingPercent`` (IFD0 0x4746 / 0x4749; Windows, some cameras).

A pick (Lightroom's flag, digiKam's "accepted") without stars counts as liked, like ``--keep``.
``xmp:Rating`` is -1 (rejected), 0 (unrated) or 1-5 (reals allowed).

Set aside before choosing, never taken for the user's taste (xmp.not_the_users, and counted in
:attr:`RatingsReport.set_aside`):

* ilgnet's own: a rating equal to ``ilgnet:Rating`` in the same packet; ilgnet's copy of the
  user's rating from another source (``ilgnet:KeptRating``: the original is read instead); a
  rating equal to any star the ledger says ilgnet wrote for that photo (ledger.py), wherever a
  photo manager copied it (darktable's sidecar and library, a catalog, the file);
* darktable's default: every photo darktable imports gets its "initial rating" (1 star unless
  the user changed it); in a sidecar darktable wrote (its namespace) or in its library a
  rating equal to it is no opinion. ``--darktable-initial-rating N`` says otherwise (0: every
  darktable star is the user's); without it darktable's own setting is read (the darktablerc
  beside a ``--catalog`` library, else the user's), else 1.

Unrated photos are left out. Nothing here raises for bad input: unreadable sidecars and
catalogs, bad CSV rows and conflicts become one-line notes in the report.
"""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ilgnet_cli.photos.discover import Selection, find_images, unusable_reason
from ilgnet_cli.photos.xmp import (
    DARKTABLE_DEFAULT,
    ILGNET_KEPT,
    ILGNET_LEDGER,
    ILGNET_MARKER,
    PacketRatings,
    RatingContext,
    XmpError,
    not_the_users,
    percent_stars,
    read_packet,
    sidecar_paths,
)

MAX_CSV_BYTES = 64 << 20
# Embedded XMP is found by Pillow (JPEG, HEIC, TIFF/DNG); for other files (RAWs Pillow cannot
# open) the packet is searched in the file's first bytes, where cameras and editors put it.
SCAN_BYTES = 4 << 20
REJECTED = -1.0


@dataclass
class RatedPhoto:
    path: str
    rating: float  # -1 rejected, else 1..5
    source: str  # "csv", "keep folder", "reject folder", a catalog, "darktable sidecar", "adobe sidecar", ...


# Why ratings were set aside, as :attr:`RatingsReport.set_aside` counts them (photos per reason).
SET_ASIDE = {
    ILGNET_MARKER: "rating(s) ilgnet wrote itself (ilgnet:Rating)",
    ILGNET_LEDGER: "star(s) ilgnet once wrote, copied by a photo manager (ledger)",
    ILGNET_KEPT: "copies ilgnet made of your ratings (their originals are read)",
    DARKTABLE_DEFAULT: "darktable default star(s)",
}
ILGNET_OWN = (ILGNET_MARKER, ILGNET_LEDGER)


@dataclass
class RatingsReport:
    photos: list[RatedPhoto] = field(default_factory=list)
    unrated_paths: list[str] = field(default_factory=list)
    ilgnet_written: int = 0  # photos whose only ratings were ilgnet's own: left out
    problems: list[str] = field(default_factory=list)  # unreadable sidecars and catalogs, bad CSV rows
    conflicts: list[str] = field(default_factory=list)
    set_aside: Counter[str] = field(default_factory=Counter)  # photos per reason (SET_ASIDE keys)
    catalogs: list[dict[str, object]] = field(default_factory=list)  # per --catalog: what was read
    missing_on_disk: list[str] = field(default_factory=list)  # photos a catalog lists that are not on disk
    darktable_initial: int = 1
    darktable_initial_from: str = "darktable's default"

    @property
    def unrated(self) -> int:
        return len(self.unrated_paths)

    def counts(self) -> dict[str, int]:
        """Photos per rating ('rejected', '1' ... '5'; reals as written)."""
        c = Counter("rejected" if p.rating == REJECTED else f"{p.rating:g}" for p in self.photos)
        return dict(sorted(c.items(), key=lambda kv: -1.0 if kv[0] == "rejected" else float(kv[0])))

    def sources(self) -> dict[str, int]:
        return dict(Counter(p.source for p in self.photos))

    def set_aside_lines(self) -> list[str]:
        """One line per reason ratings were not taken for the user's (for the summary)."""
        lines = []
        for key, what in SET_ASIDE.items():
            n = self.set_aside.get(key, 0)
            if not n:
                continue
            line = f"{n} photo(s) with {what}: not yours, ignored"
            if key == DARKTABLE_DEFAULT:
                line = (f"{n} photo(s) with darktable's default star ({self.darktable_initial}, "
                        f"{self.darktable_initial_from}): not yours, ignored (--darktable-initial-rating 0 "
                        "if darktable gives no stars on import)")
            elif key == ILGNET_KEPT:
                line = f"{n} photo(s) with {what}"
            lines.append(line)
        for cat in self.catalogs:  # (one that could not be read is among the problems)
            if cat["kind"]:
                lines.append(f"catalog {cat['path']} ({cat['kind']}): {cat['photos']} photo(s) on disk, "
                             f"{cat['with_rating']} with stars, a flag or a reject")
        if self.missing_on_disk:
            lines.append(f"{len(self.missing_on_disk)} catalog photo(s) missing on disk, e.g. "
                         f"{self.missing_on_disk[0]}")
        return lines

    def summary_json(self) -> dict[str, object]:
        """What ``learn --json`` adds to its ``ratings`` object."""
        return {"set_aside": {k: self.set_aside.get(k, 0) for k in SET_ASIDE},
                "darktable_initial_rating": {"value": self.darktable_initial, "from": self.darktable_initial_from},
                "catalogs": self.catalogs, "missing_on_disk": len(self.missing_on_disk)}


def _fmt(rating: float) -> str:
    return "rejected" if rating == REJECTED else f"{rating:g}"


# --------------------------------------------------------------------------- one photo's readings


@dataclass(frozen=True)
class Reading:
    """One source's rating of one photo (unrated sources are not kept)."""

    source: str
    rating: float  # -1 rejected, 1..5
    rank: int  # position in the fixed order (lower wins)
    not_users: str | None = None  # why it is not the user's (a SET_ASIDE key), None when it is


RANK_CSV, RANK_FOLDER, RANK_CATALOG, RANK_DARKTABLE, RANK_ADOBE, RANK_EMBEDDED, RANK_EXIF = range(7)
SIDECAR_RANKS = {"darktable": RANK_DARKTABLE, "adobe": RANK_ADOBE}


class _Context:
    """What classifying a rating needs: the ledger (looked up lazily, per photo) and darktable's
    initial rating."""

    def __init__(self, ledger: object, darktable_initial: int, notes: list[str]) -> None:
        from ilgnet_cli.photos.ledger import Ledger

        self.owned = ledger == "default"  # the user's ledger, opened (and closed) here
        if self.owned:
            ledger = Ledger()
        self.ledger: Ledger | None = ledger if isinstance(ledger, Ledger) else None
        self.darktable_initial = darktable_initial
        self.notes = notes
        self._empty: bool | None = None
        self._stars: dict[str, frozenset[float]] = {}

    def ilgnet_stars(self, image: str) -> Callable[[], frozenset[float]]:
        def lookup() -> frozenset[float]:
            if self.ledger is None:
                return frozenset()
            if self._empty is None:
                self._empty = self.ledger.is_empty()
            if self._empty:
                return frozenset()
            key = os.path.realpath(image)
            if key not in self._stars:
                self._stars[key] = self.ledger.stars(image)
            return self._stars[key]

        return lookup

    def classify(self, image: str, rating: float | None, packet: PacketRatings) -> str | None:
        return not_the_users(rating, packet, self.ilgnet_stars(image), self.darktable_initial)

    def finish(self) -> None:
        """The ledger's notes into ours; the user's ledger closed."""
        if self.ledger is not None:
            self.notes.extend(n for n in self.ledger.notes if n not in self.notes)
            self.ledger.notes.clear()
            if self.owned:
                self.ledger.close()


def _packet_readings(image: str, source: str, rank: int, packet: PacketRatings, ctx: _Context) -> list[Reading]:
    """The readings one XMP packet gives: xmp:Rating (else MicrosoftPhoto:Rating), digiKam's pick label."""
    rating = packet.rating if packet.rating is not None else packet.microsoft
    if packet.pick_label == 1:  # digiKam's reject beats any stars
        return [Reading(f"{source} (digiKam reject)", REJECTED, rank)]
    if rating is None or rating == 0:
        if packet.pick_label == 3:
            return [Reading(f"{source} (digiKam pick)", 5.0, rank)]
        return []
    name = source if packet.rating is not None else f"{source} (MicrosoftPhoto)"
    return [Reading(name, rating, rank, ctx.classify(image, rating, packet))]


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


def _sidecar_readings(image: str, folders: _Folders, ctx: _Context, problems: list[str],
                      skip: Path | None = None) -> list[Reading]:
    out: list[Reading] = []
    for style, path in zip(("adobe", "darktable"), sidecar_paths(image, "both"), strict=True):
        actual = folders.actual(path)
        if actual is None or (skip is not None and os.path.normcase(str(actual)) == os.path.normcase(str(skip))):
            continue
        try:
            packet = read_packet(actual)
        except XmpError as exc:
            problems.append(f"unreadable sidecar: {exc}")
            continue
        except OSError as exc:
            problems.append(f"unreadable sidecar: {actual}: {exc.strerror or exc}")
            continue
        if packet is not None:
            out.extend(_packet_readings(image, f"{style} sidecar", SIDECAR_RANKS[style], packet, ctx))
    return out


def _embedded(path: str) -> tuple[bytes | None, float | None]:
    """(the XMP packet inside an image file, its EXIF Rating/RatingPercent as stars). Never raises."""
    from PIL import Image

    import ilgnet_cli.data.decode  # noqa: F401 - registers the HEIF opener

    stars = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                stars = _exif_stars(img)
                data = img.info.get("xmp")
                if data is None and hasattr(img, "tag_v2"):
                    data = img.tag_v2.get(700)
                if isinstance(data, str):
                    data = data.encode("utf-8")
                if isinstance(data, bytes | bytearray) and data.strip(b"\x00 \t\r\n"):
                    # Phones pad or NUL-terminate the packet (iPhone HEIC): not part of the XML.
                    return bytes(data).strip(b"\x00"), stars
                if hasattr(img, "tag_v2") or img.format in ("JPEG", "MPO"):
                    return None, stars  # Pillow read the container: nothing embedded
    except Exception:  # noqa: BLE001 - a file Pillow cannot open may still hold a packet
        pass
    return _scan_packet(path), stars


def _exif_stars(img: object) -> float | None:
    """EXIF IFD0 Rating (0x4746, 0-5) or else RatingPercent (0x4749), as Windows writes them."""
    try:
        exif = img.getexif()  # type: ignore[attr-defined]
        rating, percent = exif.get(0x4746), exif.get(0x4749)
    except Exception:  # noqa: BLE001 - EXIF parsers raise anything on broken files
        return None
    if isinstance(rating, int) and not isinstance(rating, bool) and 1 <= rating <= 5:
        return float(rating)
    if isinstance(percent, int) and not isinstance(percent, bool):
        return percent_stars(str(percent))
    return None


def embedded_xmp(path: str) -> bytes | None:
    """The XMP packet inside an image file, or None. Never raises."""
    return _embedded(path)[0]


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


def _embedded_readings(image: str, ctx: _Context, problems: list[str]) -> list[Reading]:
    data, exif_stars = _embedded(image)
    out: list[Reading] = []
    if data is not None:
        try:
            packet = read_packet(f"{image} (embedded XMP)", data)
        except XmpError as exc:
            problems.append(f"unreadable embedded XMP: {exc}")
            packet = None
        if packet is not None:
            out.extend(_packet_readings(image, "embedded XMP", RANK_EMBEDDED, packet, ctx))
    if exif_stars is not None:
        out.append(Reading("EXIF Rating", exif_stars, RANK_EXIF, ctx.classify(image, exif_stars, PacketRatings())))
    return out


def file_readings(image: str, ctx: _Context, problems: list[str], folders: _Folders | None = None,
                  skip: Path | None = None) -> list[Reading]:
    """Every rating the photo's own files hold: its sidecars (but ``skip``), embedded XMP, EXIF."""
    return (_sidecar_readings(image, folders or _Folders(), ctx, problems, skip)
            + _embedded_readings(image, ctx, problems))


# --------------------------------------------------------------------------- choosing


@dataclass
class _Photo:
    path: str
    readings: list[Reading] = field(default_factory=list)


def _choose(photo: _Photo, report: RatingsReport) -> None:
    """The user's rating of one photo by the fixed order; what was set aside is counted."""
    for reason in {r.not_users for r in photo.readings if r.not_users}:
        report.set_aside[reason] += 1
    users = sorted((r for r in photo.readings if r.not_users is None), key=lambda r: r.rank)
    if not users:
        if any(r.not_users in ILGNET_OWN for r in photo.readings):
            report.ilgnet_written += 1
        else:
            report.unrated_paths.append(photo.path)
        return
    best = users[0]
    others = [r for r in users[1:] if r.rating != best.rating]
    if others:
        said = ", ".join(f"{r.source} {_fmt(r.rating)}" for r in others)
        report.conflicts.append(f"{photo.path}: {best.source} says {_fmt(best.rating)}, {said}; "
                                f"{best.source} wins")
    report.photos.append(RatedPhoto(photo.path, best.rating, best.source))


def _key(path: str) -> str:
    return os.path.realpath(path)


def xmp_ratings(files: list[str], *, ledger: object = None, darktable_initial: int = 1) -> RatingsReport:
    """Ratings of ``files`` from their sidecars, embedded XMP and EXIF (``ledger``: a
    :class:`ledger.Ledger` to recognise ilgnet's stars by, None: only ``ilgnet:Rating``)."""
    report = RatingsReport(darktable_initial=darktable_initial)
    ctx = _Context(ledger, darktable_initial, report.problems)
    folders = _Folders()
    for image in files:
        _choose(_Photo(image, file_readings(image, ctx, report.problems, folders)), report)
    ctx.finish()
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
        report.problems.extend(f"{source}: {unusable_reason(m)}: {m}" for m in missing)
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
            missing: list[str] | None = None, catalogs: Sequence[str | os.PathLike[str]] | None = None,
            darktable_initial_rating: int | None = None, ledger: object = "default") -> RatingsReport:
    """All ratings: CSV, keep/reject folders, ``catalogs``, and the sidecars, embedded XMP and
    EXIF of the images under ``paths``; one per photo by the fixed order (module docstring).

    ``darktable_initial_rating``: darktable's initial rating (None: its settings, else 1);
    ``ledger``: the :class:`ledger.Ledger` of ilgnet's stars ("default": the user's; None: none).
    """
    from ilgnet_cli.photos.catalogs import darktable_initial_rating as initial_rating
    from ilgnet_cli.photos.catalogs import read_catalog

    report = RatingsReport()
    read = [read_catalog(c) for c in catalogs or []]
    report.darktable_initial, report.darktable_initial_from = initial_rating(darktable_initial_rating, read)
    ctx = _Context(ledger, report.darktable_initial, report.problems)
    photos: dict[str, _Photo] = {}  # by real path, in the order first met

    def photo(path: str) -> _Photo:
        return photos.setdefault(_key(path), _Photo(path))

    explicit = []
    if ratings_csv is not None:
        explicit.append((csv_ratings(ratings_csv), RANK_CSV))
    if keep or reject:
        explicit.append((folder_ratings(keep or [], reject or [], selection), RANK_FOLDER))
    for part, rank in explicit:
        report.problems.extend(part.problems)
        report.conflicts.extend(part.conflicts)
        for p in part.photos:
            photo(p.path).readings.append(Reading(p.source, p.rating, rank))
        for u in part.unrated_paths:
            photo(u)
    for cat in read:
        report.problems.extend(cat.problems)
        report.catalogs.append(cat.summary())
        report.missing_on_disk.extend(cat.missing)
        for e in cat.entries:
            ph = photo(e.path)
            if e.pick:
                ph.readings.append(Reading(f"{cat.source} (pick)", 5.0, RANK_CATALOG))
            elif e.rating is not None:
                why = ctx.classify(e.path, e.rating, PacketRatings(darktable=e.darktable))
                ph.readings.append(Reading(cat.source, e.rating, RANK_CATALOG, why))
    if paths:
        folders = _Folders()
        for image in find_images(paths, selection, missing):
            photo(image).readings.extend(file_readings(image, ctx, report.problems, folders))
    for ph in photos.values():
        _choose(ph, report)
    ctx.finish()
    return report


def sidecar_contexts(plans: Sequence[tuple[str, Path]], darktable_initial_rating: int | None = None, *,
                     use_ledger: bool = True, notes: list[str] | None = None) -> list[RatingContext]:
    """For each (image, sidecar about to be written): what its other sources say (the other
    sidecar style, embedded XMP, EXIF), read before anything is written, for ``score --xmp``."""
    from ilgnet_cli.photos.catalogs import darktable_initial_rating as initial_rating

    initial, _ = initial_rating(darktable_initial_rating)
    notes = notes if notes is not None else []
    ctx = _Context("default" if use_ledger else None, initial, notes)
    folders = _Folders()
    targets = {os.path.normcase(str(sidecar)) for _, sidecar in plans}
    out = []
    for image, sidecar in plans:
        problems: list[str] = []
        readings = file_readings(image, ctx, problems, folders, skip=sidecar)
        # A sidecar that is itself about to be written reports its own problem when it is.
        notes.extend(f"not read before writing: {p}" for p in problems
                     if not any(t in os.path.normcase(p) for t in targets))
        users = sorted((r for r in readings if r.not_users is None), key=lambda r: r.rank)
        hand = (users[0].rating, users[0].source) if users else None
        # ilgnet's stars classify the sidecar's own rating: none to classify in a new sidecar.
        stars = ctx.ilgnet_stars(image)() if os.path.lexists(sidecar) else frozenset()
        out.append(RatingContext(ilgnet_stars=stars, darktable_initial=initial, hand=hand))
    ctx.finish()
    return out
