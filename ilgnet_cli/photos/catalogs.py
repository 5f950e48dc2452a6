"""Ratings straight from a photo manager's catalog, for ``ilgnet learn --catalog PATH``.

darktable ``library.db``, digiKam ``digikam4.db`` and Lightroom Classic ``.lrcat`` are SQLite
databases; which one a file is, is told by its tables, never by its name. What each column
means comes from the program's own published schema (sources per reader below; docs/scoring.md
has the table).

Read strictly read-only, and safe while the program has the catalog open:

* nothing is ever written and no lock is taken: with no ``-wal``/``-journal`` file beside it,
  the catalog is opened with SQLite's ``mode=ro&immutable=1`` (no locks, no journal, no
  ``-shm``); with one (Lightroom and digiKam run in WAL mode, darktable writes a rollback
  journal during a change), the database and that file are copied into a private temporary
  folder and the copy is opened, so SQLite applies the WAL or rolls back the half-done change
  in our copy, never in the user's files (``immutable`` alone would ignore the WAL);
* a catalog that changes while it is copied or read is read again (three tries);
* rows read are capped (:data:`MAX_PHOTOS`), text values are length-checked, and photo paths
  are built only from the catalog's folders: a name with a ``/`` or a ``..`` segment is refused,
  only files with a photo extension that are regular files are taken (nothing else is opened,
  and nothing is opened here at all), and photos missing on disk are counted and reported.

Nothing here raises for a bad catalog: :class:`Catalog` carries one-line ``problems``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

from ilgnet_cli.photos.discover import IMAGE_EXTENSIONS
from ilgnet_cli.photos.ledger import valid_star

MAX_PHOTOS = 2_000_000  # per catalog; the largest real catalogs hold a few hundred thousand
MAX_TEXT = 4096  # characters in one path component read from a catalog
MAX_RC_BYTES = 4 << 20
MAX_MOUNTS_BYTES = 1 << 20
TRIES = 3

DARKTABLE = "darktable library"
DIGIKAM = "digiKam catalog"
LIGHTROOM = "Lightroom catalog"

# darktable (src/common/image.h, src/common/ratings.h): the star is flags & 0x7, 6 is
# DT_VIEW_REJECT, and DT_IMAGE_REJECTED (0x8) marks a rejected photo (4.2.1 sets both).
DT_RATING_MASK = 0x7
DT_REJECT_STARS = 6
DT_REJECTED = 0x8
# digiKam (core/libs/database/coredb/coredbconstants.cpp): pick labels are internal tags
# under this root tag; Images.status 1 is a visible item (2 hidden, 3 trashed, 4 obsolete),
# Images.category 1 an image (2 video, 3 audio); ImageInformation.rating -1 is "no rating".
DIGIKAM_INTERNAL_ROOT = "_Digikam_Internal_Tags_"
DIGIKAM_REJECTED = "Rejected Item"
DIGIKAM_ACCEPTED = "Accepted Item"
DIGIKAM_VISIBLE = 1
DIGIKAM_IMAGE = 1


@dataclass
class CatalogEntry:
    path: str
    rating: float | None  # -1 rejected, 1..5 stars, None unrated
    pick: bool = False  # flagged pick (Lightroom) / accepted (digiKam), without stars
    darktable: bool = False  # its star may be darktable's initial rating (no opinion)


@dataclass
class Catalog:
    path: str
    kind: str | None = None  # "darktable", "digiKam", "Lightroom Classic"
    source: str = ""  # how ratings from it are named: DARKTABLE, DIGIKAM, LIGHTROOM
    entries: list[CatalogEntry] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # photos the catalog lists that are not on disk
    problems: list[str] = field(default_factory=list)
    skipped: int = 0  # rows refused (bad names, paths leaving their folder, not photos, virtual copies)
    initial_rating: int | None = None  # darktable: ui_last/import_initial_rating in the darktablerc beside it
    initial_from: str | None = None

    def summary(self) -> dict[str, object]:
        return {"path": self.path, "kind": self.kind, "photos": len(self.entries),
                "with_rating": sum(e.rating is not None or e.pick for e in self.entries),
                "missing_on_disk": len(self.missing),
                "skipped": self.skipped}


class CatalogChanged(Exception):
    """The catalog changed while it was read: read it again."""


# --------------------------------------------------------------------------- opening


def _uri(path: str, immutable: bool) -> str:
    query = "?mode=ro&immutable=1" if immutable else ""
    return "file:" + quote(os.fsencode(os.path.abspath(path))) + query


def _sidefiles(path: str) -> list[str]:
    return [s for s in ("-wal", "-journal") if os.path.lexists(path + s)]


def _state(path: str) -> tuple:
    """What must not change while we read: size and mtime of the database and its -wal/-journal."""
    out: list[tuple[str, int | None, int | None]] = []
    for suffix in ("", "-wal", "-journal"):
        try:
            st = os.stat(path + suffix)
            out.append((suffix, st.st_size, st.st_mtime_ns))
        except OSError:
            out.append((suffix, None, None))
    return tuple(out)


def _copy_regular(src: str, dst: str) -> None:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(src, flags)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{src}: not a regular file")
        with os.fdopen(os.dup(fd), "rb") as inp, open(dst, "xb") as out:
            shutil.copyfileobj(inp, out, 1 << 20)
    finally:
        os.close(fd)


@contextmanager
def open_readonly(path: str) -> Iterator[sqlite3.Connection]:
    """A read-only connection to the catalog at ``path`` that never writes or locks it.

    Raises CatalogChanged when a copy could not be taken while the files stood still,
    sqlite3.Error or OSError for what cannot be read."""
    side = _sidefiles(path)
    if not side:
        conn = sqlite3.connect(_uri(path, immutable=True), uri=True)
        try:
            yield _prepare(conn)
        finally:
            conn.close()
        return
    with tempfile.TemporaryDirectory(prefix="ilgnet-catalog-") as tmp:  # mkdtemp: 0700, ours alone
        copy = os.path.join(tmp, "catalog.db")
        before = _state(path)
        _copy_regular(path, copy)
        for suffix in side:
            try:
                _copy_regular(path + suffix, copy + suffix)
            except FileNotFoundError:  # the program checkpointed and removed it meanwhile
                raise CatalogChanged from None
        if _state(path) != before:
            raise CatalogChanged
        # Our private copy: SQLite may replay the WAL or roll back a hot journal in it.
        conn = sqlite3.connect(copy)
        try:
            yield _prepare(conn)
        finally:
            conn.close()


def _prepare(conn: sqlite3.Connection) -> sqlite3.Connection:
    # Names that are not UTF-8 (old cameras, Latin-1 file systems) come back as the file system
    # gives them (surrogate escapes), instead of failing the whole catalog.
    conn.text_factory = os.fsdecode
    conn.execute("PRAGMA query_only = 1")
    return conn


def _tables(conn: sqlite3.Connection) -> set[str]:
    rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' LIMIT 10000").fetchall()
    return {r[0] for r in rows if isinstance(r[0], str)}


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")').fetchall() if isinstance(r[1], str)}


# --------------------------------------------------------------------------- paths


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, str) or len(value) > MAX_TEXT or "\x00" in value:
        return None
    return value


def _relative(value: str) -> list[str] | None:
    """The segments of a relative path from a catalog ('/'-separated in all three); None when one
    would leave its folder (a '..' segment, with either separator: Windows reads both)."""
    parts = [p for p in value.split("/") if p not in ("", ".")]
    return None if any(".." in p.split("\\") for p in parts) else parts


def _folder(value: object) -> str | None:
    """A catalog's absolute folder, as it says, or None if it climbs with '..'."""
    text = _text(value)
    if text is None or _relative(text) is None:
        return None
    return text


def _name(value: object) -> str | None:
    name = _text(value)
    if not name or "/" in name or name in (".", ".."):
        return None
    return name


class _Builder:
    """Paths from catalog rows, checked: only existing regular photo files become entries."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def add(self, folder: object, rel: object, name: object, rating: float | None, *, pick: bool = False,
            darktable: bool = False) -> None:
        cat = self.catalog
        folder = _folder(folder)
        rel_text = _text(rel) if rel is not None else ""
        parts = _relative(rel_text) if rel_text is not None else None
        filename = _name(name)
        if folder is None or parts is None or filename is None:
            cat.skipped += 1
            return
        if os.path.splitext(filename)[1].lower() not in IMAGE_EXTENSIONS:
            cat.skipped += 1  # a video, a sidecar, a format ilgnet does not read: never opened
            return
        path = os.path.join(folder, *parts, filename)
        if not os.path.isabs(path):  # e.g. a Windows catalog read on Linux: not on this machine
            cat.missing.append(path)
            return
        try:
            st = os.stat(path)
        except OSError:
            cat.missing.append(path)
            return
        if not stat.S_ISREG(st.st_mode):
            cat.skipped += 1
            cat.problems.append(f"{cat.path}: {path}: not a regular file; not read")
            return
        cat.entries.append(CatalogEntry(os.path.normpath(path), rating, pick, darktable))


def _rows(conn: sqlite3.Connection, sql: str, catalog: Catalog, params: tuple = ()) -> list[tuple]:
    rows = conn.execute(sql + " LIMIT ?", (*params, MAX_PHOTOS + 1)).fetchall()
    if len(rows) > MAX_PHOTOS:
        catalog.problems.append(f"{catalog.path}: more than {MAX_PHOTOS} photos; only the first {MAX_PHOTOS} read")
        rows = rows[:MAX_PHOTOS]
    return rows


# --------------------------------------------------------------------------- darktable


def _read_darktable(conn: sqlite3.Connection, catalog: Catalog) -> None:
    """darktable's library.db (schema measured on 4.2.1, library version 37): ``film_rolls``
    (id, folder: an absolute path) and ``images`` (film_id, filename, flags, version). A photo
    duplicated in darktable (versions 1, 2...) is one file: its original's (lowest version)
    rating is taken."""
    catalog.kind, catalog.source = "darktable", DARKTABLE
    version = "i.version" if "version" in _columns(conn, "images") else "0"
    rows = _rows(conn, f"SELECT f.folder, i.filename, i.flags, {version} FROM images i "
                       "JOIN film_rolls f ON f.id = i.film_id ORDER BY f.folder, i.filename, 4", catalog)
    build = _Builder(catalog)
    seen: set[tuple] = set()
    for folder, filename, flags, _ in rows:
        if (folder, filename) in seen:
            continue  # a duplicate (another version of the same file)
        seen.add((folder, filename))
        if isinstance(flags, bool) or not isinstance(flags, int):
            catalog.skipped += 1
            continue
        stars = flags & DT_RATING_MASK
        if flags & DT_REJECTED or stars == DT_REJECT_STARS:
            rating: float | None = -1.0
        else:
            rating = float(stars) if 1 <= stars <= 5 else None
        build.add(folder, "", filename, rating, darktable=True)
    rc = Path(catalog.path).parent / "darktablerc"
    initial = read_darktablerc(rc)
    if initial is not None:
        catalog.initial_rating, catalog.initial_from = initial, str(rc)


# --------------------------------------------------------------------------- digiKam


def _mounts() -> dict[str, str]:
    """Device (real path) -> mount point, from /proc/self/mounts (Linux; elsewhere empty)."""
    try:
        with open("/proc/self/mounts", "rb") as fh:
            data = fh.read(MAX_MOUNTS_BYTES)
    except OSError:
        return {}
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0].startswith("/dev/"):
            # /proc/mounts escapes space, tab, newline and backslash as octal
            point = fields[1].encode().decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")
            out.setdefault(os.path.realpath(fields[0]), point)
    return out


def _digikam_root(identifier: object, specific: object, mounts: Callable[[], dict[str, str]]) -> str | None:
    """An album root's folder on this machine. digiKam stores a volume identifier
    (``volumeid:?uuid=UUID``, ``volumeid:?path=PATH`` or ``networkshareid:?mountpath=PATH``) and
    ``specificPath``, the root's path inside that volume."""
    ident, inside = _text(identifier), _text(specific)
    if ident is None or inside is None:
        return None
    query = ident.partition("?")[2]
    params: dict[str, list[str]] = {}
    for pair in query.split("&"):
        key, _, value = pair.partition("=")
        params.setdefault(key, []).append(unquote(value))
    rel = _relative(inside)
    if rel is None:
        return None
    bases: list[str] = []
    for uuid in params.get("uuid", []):
        dev = os.path.join("/dev/disk/by-uuid", uuid) if "/" not in uuid else None
        if dev and os.path.exists(dev):
            point = mounts().get(os.path.realpath(dev))
            if point:
                bases.append(point)
    bases += params.get("path", []) + params.get("mountpath", [])
    if not bases and inside.startswith("/"):
        bases.append("/")  # an unmounted or unknown volume: its path as if on the root volume
    for base in bases:
        candidate = os.path.join(base, *rel)
        if os.path.isabs(candidate) and os.path.isdir(candidate):
            return candidate
    return os.path.join(bases[0], *rel) if bases and os.path.isabs(bases[0]) else None


def _read_digikam(conn: sqlite3.Connection, catalog: Catalog) -> None:
    """digiKam's digikam4.db (core/libs/database/coredb/dbconfig.xml.cmake.in): AlbumRoots
    (id, identifier, specificPath), Albums (id, albumRoot, relativePath: '/' or '/a/b'), Images
    (id, album, name, status, category), ImageInformation (imageid, rating), and pick labels as
    internal tags (Tags id/pid/name under ``_Digikam_Internal_Tags_``; ImageTags imageid/tagid)."""
    catalog.kind, catalog.source = "digiKam", DIGIKAM
    mount_cache: dict[str, str] | None = None

    def mounts() -> dict[str, str]:
        nonlocal mount_cache
        if mount_cache is None:
            mount_cache = _mounts()
        return mount_cache

    roots: dict[int, str | None] = {}
    for rid, ident, specific in conn.execute("SELECT id, identifier, specificPath FROM AlbumRoots LIMIT 10000"):
        roots[rid] = _digikam_root(ident, specific, mounts)
        if roots[rid] is None:
            catalog.problems.append(f"{catalog.path}: album root {_text(ident) or '?'!r} not found on this machine")
    picks: dict[int, str] = {}
    tables = _tables(conn)
    if {"Tags", "ImageTags"} <= tables:
        for image_id, name in _rows(conn, "SELECT it.imageid, t.name FROM ImageTags it JOIN Tags t ON t.id = it.tagid "
                                          "JOIN Tags root ON root.id = t.pid WHERE root.name = ? AND t.name IN (?, ?)",
                                    catalog, (DIGIKAM_INTERNAL_ROOT, DIGIKAM_REJECTED, DIGIKAM_ACCEPTED)):
            if isinstance(image_id, int) and isinstance(name, str):
                picks[image_id] = name
    columns = _columns(conn, "Images")
    where = ["i.status = ?"]
    params: list[object] = [DIGIKAM_VISIBLE]
    if "category" in columns:
        where.append("i.category = ?")
        params.append(DIGIKAM_IMAGE)
    rows = _rows(conn, "SELECT i.id, a.albumRoot, a.relativePath, i.name, ii.rating FROM Images i "
                       "JOIN Albums a ON a.id = i.album LEFT JOIN ImageInformation ii ON ii.imageid = i.id "
                       f"WHERE {' AND '.join(where)}", catalog, tuple(params))
    build = _Builder(catalog)
    for image_id, root_id, rel, name, rating in rows:
        root = roots.get(root_id)
        if root is None:
            catalog.missing.append(f"{_text(rel) or '?'}/{_text(name) or '?'}")
            continue
        label = picks.get(image_id)
        stars = valid_star(rating)
        value = -1.0 if label == DIGIKAM_REJECTED else stars
        build.add(root, rel, name, value, pick=label == DIGIKAM_ACCEPTED and stars is None)


# --------------------------------------------------------------------------- Lightroom Classic


def _read_lightroom(conn: sqlite3.Connection, catalog: Catalog) -> None:
    """Lightroom Classic's .lrcat (its SQLite schema as published by Adobe's catalogs and
    documented by their users): AgLibraryRootFolder (id_local, absolutePath, '/'-terminated),
    AgLibraryFolder (id_local, rootFolder, pathFromRoot, '/'-terminated), AgLibraryFile
    (id_local, folder, baseName, extension) and Adobe_images (rootFile, rating: NULL or 0-5,
    pick: -1 rejected, 0 none, 1 picked; masterImage set on a virtual copy, whose rating is the
    copy's, not the file's: skipped)."""
    catalog.kind, catalog.source = "Lightroom Classic", LIGHTROOM
    master = "i.masterImage" if "masterImage" in _columns(conn, "Adobe_images") else "NULL"
    rows = _rows(conn, f"SELECT r.absolutePath, fo.pathFromRoot, fi.baseName, fi.extension, i.rating, i.pick, {master} "
                       "FROM Adobe_images i JOIN AgLibraryFile fi ON fi.id_local = i.rootFile "
                       "JOIN AgLibraryFolder fo ON fo.id_local = fi.folder "
                       "JOIN AgLibraryRootFolder r ON r.id_local = fo.rootFolder", catalog)
    build = _Builder(catalog)
    for root, rel, base, ext, rating, pick, copy_of in rows:
        if copy_of is not None:
            catalog.skipped += 1
            continue
        base, ext = _text(base), _text(ext)
        name = f"{base}.{ext}" if base and ext else base
        stars = valid_star(rating)
        flag = pick if isinstance(pick, int | float) and not isinstance(pick, bool) else 0
        value = -1.0 if flag < 0 else stars
        build.add(root, rel, name, value, pick=flag > 0 and stars is None)


# --------------------------------------------------------------------------- detection


READERS: list[tuple[frozenset[str], Callable[[sqlite3.Connection, Catalog], None]]] = [
    (frozenset({"images", "film_rolls"}), _read_darktable),
    (frozenset({"AlbumRoots", "Albums", "Images", "ImageInformation"}), _read_digikam),
    (frozenset({"Adobe_images", "AgLibraryFile", "AgLibraryFolder", "AgLibraryRootFolder"}), _read_lightroom),
]


def read_catalog(path: str | os.PathLike[str]) -> Catalog:
    """Every photo the catalog at ``path`` lists, with its rating; never raises."""
    path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    catalog = Catalog(path=path)
    try:
        st = os.stat(path)
    except OSError as exc:
        catalog.problems.append(f"{path}: {exc.strerror or exc}")
        return catalog
    if not stat.S_ISREG(st.st_mode):
        catalog.problems.append(f"{path}: not a regular file; not read")
        return catalog
    for _ in range(TRIES):
        attempt = Catalog(path=path)
        before = _state(path)
        try:
            with open_readonly(path) as conn:
                tables = _tables(conn)
                reader = next((r for need, r in READERS if need <= tables), None)
                if reader is None:
                    catalog.problems.append(f"{path}: not a darktable, digiKam or Lightroom Classic catalog")
                    return catalog
                reader(conn, attempt)
        except CatalogChanged:
            continue
        except sqlite3.DatabaseError as exc:
            if _state(path) != before:
                continue
            catalog.problems.append(f"{path}: cannot read it as a catalog ({exc})")
            return catalog
        except OSError as exc:
            catalog.problems.append(f"{path}: {exc.strerror or exc}")
            return catalog
        if _state(path) == before:
            return attempt
    catalog.problems.append(f"{path}: kept changing while it was read; try again with the program closed")
    return catalog


# --------------------------------------------------------------------------- darktable's settings


def read_darktablerc(path: str | os.PathLike[str]) -> int | None:
    """darktable's initial rating (``ui_last/import_initial_rating``, 0-5) in a darktablerc, or None."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None
        with open(path, "rb") as fh:
            data = fh.read(MAX_RC_BYTES)
    except OSError:
        return None
    for line in data.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "ui_last/import_initial_rating":
            try:
                rating = int(value.strip())
            except ValueError:
                return None
            return rating if 0 <= rating <= 5 else None
    return None


def default_darktablerc() -> Path:
    """Where darktable keeps its settings by default: ``$XDG_CONFIG_HOME/darktable/darktablerc``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "darktable" / "darktablerc"


DEFAULT_INITIAL_RATING = 1  # darktable's own default for "initial rating" on import


def darktable_initial_rating(option: int | None, catalogs: list[Catalog] | None = None) -> tuple[int, str]:
    """darktable's initial rating for this run and where it came from: the option, else the
    darktablerc beside a darktable library given with --catalog, else the user's darktablerc,
    else darktable's default (1)."""
    if option is not None:
        return option, "--darktable-initial-rating"
    for cat in catalogs or []:
        if cat.initial_rating is not None:
            return cat.initial_rating, cat.initial_from or "darktablerc"
    rc = default_darktablerc()
    found = read_darktablerc(rc)
    if found is not None:
        return found, str(rc)
    return DEFAULT_INITIAL_RATING, "darktable's default"
