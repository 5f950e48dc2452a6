"""Small catalogs of darktable, digiKam and Lightroom Classic for the tests, with only the tables
and columns ilgnet reads, written from each program's published schema (not copied from it):

* darktable ``library.db``: ``film_rolls`` and ``images`` as darktable 4.2.1 creates them
  (measured: ``sqlite3 library.db .schema`` after a real import; library version 37);
* digiKam ``digikam4.db``: core/libs/database/coredb/dbconfig.xml.cmake.in (AlbumRoots, Albums,
  Images, ImageInformation, Tags, ImageTags) and coredbconstants.cpp (internal tag names);
* Lightroom Classic ``.lrcat``: Adobe_images, AgLibraryFile, AgLibraryFolder,
  AgLibraryRootFolder, as Lightroom Classic catalogs hold them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

DARKTABLE_SCHEMA = """
CREATE TABLE film_rolls (id INTEGER PRIMARY KEY, access_timestamp INTEGER, folder VARCHAR(1024) NOT NULL);
CREATE TABLE images (id INTEGER PRIMARY KEY AUTOINCREMENT, group_id INTEGER, film_id INTEGER, width INTEGER,
    height INTEGER, filename VARCHAR, flags INTEGER, version INTEGER, max_version INTEGER,
    FOREIGN KEY(film_id) REFERENCES film_rolls(id) ON DELETE CASCADE ON UPDATE CASCADE);
CREATE TABLE db_info (key VARCHAR PRIMARY KEY, value VARCHAR);
INSERT INTO db_info VALUES ('version', 37);
"""

DIGIKAM_SCHEMA = """
CREATE TABLE AlbumRoots (id INTEGER PRIMARY KEY, label TEXT, status INTEGER NOT NULL, type INTEGER NOT NULL,
    identifier TEXT, specificPath TEXT, UNIQUE(identifier, specificPath));
CREATE TABLE Albums (id INTEGER PRIMARY KEY, albumRoot INTEGER NOT NULL, relativePath TEXT NOT NULL, date DATE,
    caption TEXT, collection TEXT, icon INTEGER, UNIQUE(albumRoot, relativePath));
CREATE TABLE Images (id INTEGER PRIMARY KEY, album INTEGER, name TEXT NOT NULL, status INTEGER NOT NULL,
    category INTEGER NOT NULL, modificationDate DATETIME, fileSize INTEGER, uniqueHash TEXT, manualOrder INTEGER,
    UNIQUE (album, name));
CREATE TABLE ImageInformation (imageid INTEGER PRIMARY KEY, rating INTEGER, creationDate DATETIME,
    digitizationDate DATETIME, orientation INTEGER, width INTEGER, height INTEGER, format TEXT,
    colorDepth INTEGER, colorModel INTEGER);
CREATE TABLE Tags (id INTEGER PRIMARY KEY, pid INTEGER, name TEXT NOT NULL, icon INTEGER, iconkde TEXT,
    UNIQUE (name, pid));
CREATE TABLE ImageTags (imageid INTEGER NOT NULL, tagid INTEGER NOT NULL, UNIQUE (imageid, tagid));
CREATE TABLE Settings (keyword TEXT NOT NULL UNIQUE, value TEXT);
INSERT INTO Settings VALUES ('DBVersion', '10');
INSERT INTO Tags (id, pid, name) VALUES (1, 0, '_Digikam_Internal_Tags_');
INSERT INTO Tags (id, pid, name) VALUES (2, 1, 'Pick Label None');
INSERT INTO Tags (id, pid, name) VALUES (3, 1, 'Rejected Item');
INSERT INTO Tags (id, pid, name) VALUES (4, 1, 'Pending Item');
INSERT INTO Tags (id, pid, name) VALUES (5, 1, 'Accepted Item');
INSERT INTO Tags (id, pid, name) VALUES (6, 0, 'Rejected Item');
"""

LIGHTROOM_SCHEMA = """
CREATE TABLE AgLibraryRootFolder (id_local INTEGER PRIMARY KEY, id_global UNIQUE NOT NULL,
    absolutePath UNIQUE NOT NULL DEFAULT '', name NOT NULL DEFAULT '', relativePathFromCatalog);
CREATE TABLE AgLibraryFolder (id_local INTEGER PRIMARY KEY, id_global UNIQUE NOT NULL, parentId INTEGER,
    pathFromRoot NOT NULL DEFAULT '', rootFolder INTEGER NOT NULL DEFAULT 0, visibility INTEGER);
CREATE TABLE AgLibraryFile (id_local INTEGER PRIMARY KEY, id_global UNIQUE NOT NULL, baseName NOT NULL DEFAULT '',
    extension NOT NULL DEFAULT '', folder INTEGER NOT NULL DEFAULT 0, idx_filename NOT NULL DEFAULT '',
    originalFilename NOT NULL DEFAULT '', sidecarExtensions);
CREATE TABLE Adobe_images (id_local INTEGER PRIMARY KEY, id_global UNIQUE NOT NULL, captureTime,
    colorLabels NOT NULL DEFAULT '', copyName, fileFormat NOT NULL DEFAULT 'unset', masterImage INTEGER,
    pick NOT NULL DEFAULT 0, rating, rootFile INTEGER NOT NULL DEFAULT 0);
"""


def darktable_library(path: Path, rows: list[tuple[str, str, int, int]]) -> Path:
    """rows: (folder, filename, flags, version)."""
    conn = sqlite3.connect(path)
    conn.executescript(DARKTABLE_SCHEMA)
    films: dict[str, int] = {}
    for folder, name, flags, version in rows:
        if folder not in films:
            films[folder] = len(films) + 1
            conn.execute("INSERT INTO film_rolls (id, access_timestamp, folder) VALUES (?, 0, ?)",
                         (films[folder], folder))
        conn.execute("INSERT INTO images (film_id, filename, flags, version, group_id) VALUES (?, ?, ?, ?, 0)",
                     (films[folder], name, flags, version))
    conn.commit()
    conn.close()
    return path


def digikam_db(path: Path, roots: list[tuple[int, str, str]], images: list[dict]) -> Path:
    """roots: (id, identifier, specificPath); images: dicts with root, album ('/a/b'), name,
    rating (-1..5 or None), status (1), category (1), label (None or a Tags name under the root)."""
    conn = sqlite3.connect(path)
    conn.executescript(DIGIKAM_SCHEMA)
    for rid, ident, specific in roots:
        conn.execute("INSERT INTO AlbumRoots (id, label, status, type, identifier, specificPath) "
                     "VALUES (?, ?, 0, 1, ?, ?)", (rid, f"root{rid}", ident, specific))
    albums: dict[tuple[int, str], int] = {}
    tag_ids = dict(conn.execute("SELECT name, id FROM Tags WHERE pid = 1").fetchall())
    for i, img in enumerate(images, 1):
        key = (img["root"], img["album"])
        if key not in albums:
            albums[key] = len(albums) + 1
            conn.execute("INSERT INTO Albums (id, albumRoot, relativePath) VALUES (?, ?, ?)", (albums[key], *key))
        conn.execute("INSERT INTO Images (id, album, name, status, category) VALUES (?, ?, ?, ?, ?)",
                     (i, albums[key], img["name"], img.get("status", 1), img.get("category", 1)))
        if img.get("rating", "absent") != "absent":
            conn.execute("INSERT INTO ImageInformation (imageid, rating) VALUES (?, ?)", (i, img["rating"]))
        if img.get("label"):
            tag = 6 if img["label"] == "top-level Rejected Item" else tag_ids[img["label"]]
            conn.execute("INSERT INTO ImageTags (imageid, tagid) VALUES (?, ?)", (i, tag))
    conn.commit()
    conn.close()
    return path


def lightroom_catalog(path: Path, images: list[dict], wal: bool = False) -> Path:
    """images: dicts with root ('/abs/'), folder ('a/b/'), base, ext, rating, pick, master (None)."""
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(LIGHTROOM_SCHEMA)
    roots: dict[str, int] = {}
    folders: dict[tuple[str, str], int] = {}
    for i, img in enumerate(images, 1):
        if img["root"] not in roots:
            roots[img["root"]] = len(roots) + 1
            conn.execute("INSERT INTO AgLibraryRootFolder (id_local, id_global, absolutePath, name) "
                         "VALUES (?, ?, ?, ?)", (roots[img["root"]], f"R{len(roots)}", img["root"], "root"))
        key = (img["root"], img["folder"])
        if key not in folders:
            folders[key] = 100 + len(folders)
            conn.execute("INSERT INTO AgLibraryFolder (id_local, id_global, pathFromRoot, rootFolder) "
                         "VALUES (?, ?, ?, ?)", (folders[key], f"F{folders[key]}", img["folder"], roots[img["root"]]))
        conn.execute("INSERT INTO AgLibraryFile (id_local, id_global, baseName, extension, folder, idx_filename) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (1000 + i, f"L{i}", img["base"], img["ext"], folders[key],
                                                   f"{img['base']}.{img['ext']}"))
        conn.execute("INSERT INTO Adobe_images (id_local, id_global, rating, pick, rootFile, masterImage) "
                     "VALUES (?, ?, ?, ?, ?, ?)", (2000 + i, f"I{i}", img.get("rating"), img.get("pick", 0),
                                                   1000 + i, img.get("master")))
    conn.commit()
    conn.close()
    return path
