"""``learn --catalog``: darktable, digiKam and Lightroom Classic catalogs told apart by their tables,
read strictly read-only (also while the program holds them open, locked, in WAL mode or mid-change),
with paths confined to the catalog's folders and missing photos reported."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from catalog_fixtures import darktable_library, digikam_db, lightroom_catalog
from PIL import Image

from ilgnet_cli.photos import catalogs, ratings
from ilgnet_cli.photos.catalogs import read_catalog


def _photos(folder: Path, *names: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        Image.new("RGB", (32, 24), (len(name) * 7 % 255, 90, 120)).save(folder / name, format="JPEG")
        out.append(folder / name)
    return out


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def _got(report: ratings.RatingsReport) -> dict[str, tuple[float, str]]:
    return {Path(p.path).name: (p.rating, p.source) for p in report.photos}


# --------------------------------------------------------------------------- darktable


def test_darktable_library_stars_rejects_defaults_duplicates(tmp_path):
    shoot = tmp_path / "shoot"
    _photos(shoot, "five.jpg", "reject.jpg", "two.jpg", "default.jpg", "zero.jpg", "dup.jpg")
    lib = darktable_library(tmp_path / "library.db", [
        (str(shoot), "five.jpg", 1061, 0),      # 4.2.1: 0x400 | 5 stars
        (str(shoot), "reject.jpg", 1070, 0),    # 6 in the low bits and DT_IMAGE_REJECTED (8)
        (str(shoot), "two.jpg", 1058, 0),
        (str(shoot), "default.jpg", 1057, 0),   # 1 star: darktable's initial rating
        (str(shoot), "zero.jpg", 1056, 0),
        (str(shoot), "dup.jpg", 1060, 0),       # 4 stars; its duplicate (version 1) says 1
        (str(shoot), "dup.jpg", 1057, 1),
        (str(shoot), "gone.jpg", 1061, 0),      # not on disk
        (str(shoot), "clip.mov", 1061, 0),      # not a photo ilgnet reads: never opened
        (str(shoot), "../../etc/passwd.jpg", 1061, 0),  # a name that leaves its folder
        (str(shoot) + "/../shoot", "five.jpg", 1061, 0),  # a folder that climbs
    ])
    report = ratings.collect([], catalogs=[lib], ledger=None)
    assert _got(report) == {"five.jpg": (5, "darktable library"), "reject.jpg": (-1, "darktable library"),
                            "two.jpg": (2, "darktable library"), "dup.jpg": (4, "darktable library")}
    assert report.set_aside["darktable_default"] == 1
    assert sorted(Path(p).name for p in report.unrated_paths) == ["default.jpg", "zero.jpg"]
    assert [Path(p).name for p in report.missing_on_disk] == ["gone.jpg"]
    assert report.catalogs == [{"path": str(lib), "kind": "darktable", "photos": 6, "with_rating": 5,
                                "missing_on_disk": 1, "skipped": 3}]
    assert any("missing on disk" in line for line in report.set_aside_lines())
    # --darktable-initial-rating 0: darktable gives no stars, so its 1 is the user's.
    assert _got(ratings.collect([], catalogs=[lib], ledger=None, darktable_initial_rating=0))["default.jpg"] == (
        1, "darktable library")


def test_darktablerc_beside_the_library_gives_the_initial_rating_and_the_option_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    shoot = tmp_path / "shoot"
    _photos(shoot, "a.jpg", "b.jpg")
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    lib = darktable_library(cfg / "library.db", [(str(shoot), "a.jpg", 1058, 0), (str(shoot), "b.jpg", 1057, 0)])
    (cfg / "darktablerc").write_text("plugins/x=1\nui_last/import_initial_rating=2\n", encoding="utf-8")
    report = ratings.collect([], catalogs=[lib], ledger=None)
    assert _got(report) == {"b.jpg": (1, "darktable library")}  # 2 is darktable's default here
    assert (report.darktable_initial, report.darktable_initial_from) == (2, str(cfg / "darktablerc"))
    forced = ratings.collect([], catalogs=[lib], ledger=None, darktable_initial_rating=1)
    assert _got(forced) == {"a.jpg": (2, "darktable library")}
    # The user's own darktablerc counts when no library says otherwise.
    (tmp_path / "xdg" / "darktable").mkdir(parents=True)
    (tmp_path / "xdg" / "darktable" / "darktablerc").write_text("ui_last/import_initial_rating=0\n")
    assert catalogs.darktable_initial_rating(None) == (0, str(tmp_path / "xdg" / "darktable" / "darktablerc"))
    (tmp_path / "xdg" / "darktable" / "darktablerc").write_text("ui_last/import_initial_rating=banana\n")
    assert catalogs.darktable_initial_rating(None) == (1, "darktable's default")


# --------------------------------------------------------------------------- digiKam


def test_digikam_ratings_pick_labels_roots_and_trash(tmp_path):
    pictures = tmp_path / "Pictures"
    _photos(pictures / "2024" / "trip", "a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg", "h.jpg")
    _photos(pictures, "top.jpg")
    db = digikam_db(tmp_path / "digikam4.db", [
        (1, f"volumeid:?path={pictures}", "/"),  # a root given by path
        (2, "volumeid:?uuid=00000000-dead-beef-0000-000000000000", str(tmp_path / "elsewhere")),  # not mounted
    ], [
        {"root": 1, "album": "/2024/trip", "name": "a.jpg", "rating": 5},
        {"root": 1, "album": "/2024/trip", "name": "b.jpg", "rating": 3, "label": "Rejected Item"},  # reject wins
        {"root": 1, "album": "/2024/trip", "name": "c.jpg", "rating": -1, "label": "Accepted Item"},  # a pick
        {"root": 1, "album": "/2024/trip", "name": "d.jpg", "rating": 0},
        {"root": 1, "album": "/2024/trip", "name": "e.jpg", "rating": 2, "status": 3},  # in digiKam's trash
        {"root": 1, "album": "/2024/trip", "name": "f.jpg", "rating": 4, "label": "Pending Item"},
        {"root": 1, "album": "/2024/trip", "name": "g.jpg", "rating": 1, "label": "top-level Rejected Item"},
        {"root": 1, "album": "/2024/trip", "name": "h.jpg", "rating": None},
        {"root": 1, "album": "/", "name": "top.jpg", "rating": 4},
        {"root": 1, "album": "/../../etc", "name": "passwd.jpg", "rating": 5},
        {"root": 2, "album": "/", "name": "far.jpg", "rating": 5},
    ])
    report = ratings.collect([], catalogs=[db], ledger=None)
    assert _got(report) == {"a.jpg": (5, "digiKam catalog"), "b.jpg": (-1, "digiKam catalog"),
                            "c.jpg": (5, "digiKam catalog (pick)"), "f.jpg": (4, "digiKam catalog"),
                            "g.jpg": (1, "digiKam catalog"), "top.jpg": (4, "digiKam catalog")}
    assert report.catalogs[0]["kind"] == "digiKam" and report.catalogs[0]["skipped"] == 1
    assert [Path(p).name for p in report.missing_on_disk] == ["far.jpg"]
    assert sorted(Path(p).name for p in report.unrated_paths) == ["d.jpg", "h.jpg"]


def test_digikam_volume_uuid_is_resolved_through_mounts(tmp_path, monkeypatch):
    root = tmp_path / "mnt" / "disk"
    _photos(root / "photos", "x.jpg")
    by_uuid = tmp_path / "by-uuid"
    by_uuid.mkdir()
    assert catalogs._digikam_root("volumeid:?uuid=abcd", "/photos", lambda: {}) is not None  # falls back
    monkeypatch.setattr(catalogs.os.path, "exists",
                        lambda p, _e=os.path.exists: True if str(p) == "/dev/disk/by-uuid/abcd" else _e(p))
    monkeypatch.setattr(catalogs.os.path, "realpath",
                        lambda p, _r=os.path.realpath: "/dev/sdz1" if str(p) == "/dev/disk/by-uuid/abcd" else _r(p))
    got = catalogs._digikam_root("volumeid:?uuid=abcd", "/photos", lambda: {"/dev/sdz1": str(root)})
    assert got == str(root / "photos")
    assert catalogs._digikam_root("volumeid:?uuid=abcd", "/../etc", lambda: {"/dev/sdz1": str(root)}) is None


# --------------------------------------------------------------------------- Lightroom Classic


def test_lightroom_picks_rejects_virtual_copies_and_other_machines(tmp_path):
    root = tmp_path / "Pictures"
    _photos(root / "2023" / "May", "IMG_1.jpg", "IMG_2.jpg", "IMG_3.jpg", "IMG_4.jpg", "IMG_5.jpg")
    lr = lightroom_catalog(tmp_path / "Lightroom Catalog.lrcat", [
        {"root": f"{root}/", "folder": "2023/May/", "base": "IMG_1", "ext": "jpg", "rating": 4.0, "pick": 0},
        {"root": f"{root}/", "folder": "2023/May/", "base": "IMG_2", "ext": "jpg", "rating": 5, "pick": -1.0},
        {"root": f"{root}/", "folder": "2023/May/", "base": "IMG_3", "ext": "jpg", "rating": None, "pick": 1.0},
        {"root": f"{root}/", "folder": "2023/May/", "base": "IMG_4", "ext": "jpg", "rating": 0, "pick": 0},
        {"root": f"{root}/", "folder": "2023/May/", "base": "IMG_5", "ext": "jpg", "rating": 2, "pick": 1},
        {"root": f"{root}/", "folder": "2023/May/", "base": "IMG_1", "ext": "jpg", "rating": 1, "master": 2001},
        {"root": "C:/Users/me/Pictures/", "folder": "2019/", "base": "IMG_9", "ext": "CR2", "rating": 5},
        {"root": f"{root}/", "folder": "../../", "base": "etc", "ext": "jpg", "rating": 5},
    ])
    report = ratings.collect([], catalogs=[lr], ledger=None)
    assert _got(report) == {"IMG_1.jpg": (4, "Lightroom catalog"), "IMG_2.jpg": (-1, "Lightroom catalog"),
                            "IMG_3.jpg": (5, "Lightroom catalog (pick)"), "IMG_5.jpg": (2, "Lightroom catalog")}
    assert report.catalogs[0]["kind"] == "Lightroom Classic" and report.catalogs[0]["skipped"] == 2
    assert report.missing_on_disk == ["C:/Users/me/Pictures/2019/IMG_9.CR2"]


# --------------------------------------------------------------------------- read-only, always


def test_wal_catalog_open_in_lightroom_is_read_from_a_private_copy(tmp_path):
    root = tmp_path / "Pictures"
    _photos(root, "a.jpg", "b.jpg")
    lr = lightroom_catalog(tmp_path / "cat.lrcat", [
        {"root": f"{root}/", "folder": "", "base": "a", "ext": "jpg", "rating": 2}], wal=True)
    # Lightroom has it open: exclusive locking, a change committed to the WAL and not checkpointed.
    owner = sqlite3.connect(lr)
    owner.execute("PRAGMA wal_autocheckpoint=0")
    owner.execute("PRAGMA locking_mode=EXCLUSIVE")
    owner.execute("UPDATE Adobe_images SET rating = 5")
    owner.commit()
    assert Path(f"{lr}-wal").stat().st_size > 0
    before = _snapshot(tmp_path)
    report = ratings.collect([], catalogs=[lr], ledger=None)
    assert _got(report) == {"a.jpg": (5, "Lightroom catalog")}  # the WAL's change is seen
    assert _snapshot(tmp_path) == before  # nothing written, no lock taken, no file added
    owner.execute("UPDATE Adobe_images SET rating = 3")  # the owner still works: we never locked it
    owner.commit()
    owner.close()


def test_catalog_mid_change_is_read_as_last_committed(tmp_path):
    shoot = tmp_path / "shoot"
    _photos(shoot, "a.jpg")
    lib = darktable_library(tmp_path / "library.db", [(str(shoot), "a.jpg", 1061, 0)])
    owner = sqlite3.connect(lib, isolation_level=None)
    owner.execute("BEGIN EXCLUSIVE")
    owner.execute("UPDATE images SET flags = 1058")  # uncommitted: darktable mid-change, -journal on disk
    owner.execute("DELETE FROM film_rolls")
    assert Path(f"{lib}-journal").exists()
    before = _snapshot(tmp_path)
    report = ratings.collect([], catalogs=[lib], ledger=None)
    assert _got(report) == {"a.jpg": (5, "darktable library")}
    assert _snapshot(tmp_path) == before
    owner.execute("ROLLBACK")
    owner.close()


def test_idle_catalog_is_opened_immutable_and_never_changed(tmp_path, monkeypatch):
    shoot = tmp_path / "shoot"
    _photos(shoot, "a.jpg")
    lib = darktable_library(tmp_path / "library.db", [(str(shoot), "a.jpg", 1061, 0)])
    os.chmod(lib, 0o444)  # even a read-only file (another user's catalog) reads
    uris = []
    real_connect = sqlite3.connect

    def connect(where, *args, **kwargs):
        uris.append(where)
        return real_connect(where, *args, **kwargs)

    monkeypatch.setattr(catalogs.sqlite3, "connect", connect)
    before = _snapshot(tmp_path)
    assert _got(ratings.collect([], catalogs=[lib], ledger=None)) == {"a.jpg": (5, "darktable library")}
    assert uris and all(u.endswith("?mode=ro&immutable=1") for u in uris)
    assert _snapshot(tmp_path) == before


def test_catalog_that_changes_while_copied_is_read_again(tmp_path, monkeypatch):
    shoot = tmp_path / "shoot"
    _photos(shoot, "a.jpg")
    lib = lightroom_catalog(tmp_path / "cat.lrcat", [
        {"root": f"{shoot}/", "folder": "", "base": "a", "ext": "jpg", "rating": 2}], wal=True)
    keep = sqlite3.connect(lib)
    keep.execute("PRAGMA wal_autocheckpoint=0")
    keep.execute("UPDATE Adobe_images SET rating = 4")
    keep.commit()
    calls = []
    real_copy = catalogs._copy_regular

    def copy_while_lightroom_writes(src, dst):
        calls.append(src)
        if len(calls) == 1:
            keep.execute("UPDATE Adobe_images SET rating = 5")
            keep.commit()
        real_copy(src, dst)

    monkeypatch.setattr(catalogs, "_copy_regular", copy_while_lightroom_writes)
    report = ratings.collect([], catalogs=[lib], ledger=None)
    assert _got(report) == {"a.jpg": (5, "Lightroom catalog")} and len(calls) >= 3
    keep.close()


@pytest.mark.parametrize("kind", ["score cache", "garbage", "fifo", "folder", "absent"])
def test_what_is_not_a_catalog_is_one_line(tmp_path, kind):
    path = tmp_path / "thing.db"
    if kind == "score cache":
        from ilgnet_cli.photos.cache import ScoreCache

        ScoreCache(path, "w", 1, "draft").close()
    elif kind == "garbage":
        path.write_bytes(b"\x00\xffnot sqlite" * 100)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    cat = read_catalog(path)
    assert cat.entries == [] and len(cat.problems) == 1 and "\n" not in cat.problems[0]
    report = ratings.collect([], catalogs=[path], ledger=None)
    assert report.photos == [] and report.problems == cat.problems


def test_rows_are_capped(tmp_path, monkeypatch):
    shoot = tmp_path / "shoot"
    names = [f"p{i}.jpg" for i in range(5)]
    _photos(shoot, *names)
    lib = darktable_library(tmp_path / "library.db", [(str(shoot), n, 1061, 0) for n in names])
    monkeypatch.setattr(catalogs, "MAX_PHOTOS", 3)
    cat = read_catalog(lib)
    assert len(cat.entries) == 3 and any("more than 3 photos" in p for p in cat.problems)


def test_symlinked_photo_to_a_fifo_is_never_opened(tmp_path):
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    os.mkfifo(tmp_path / "pipe")
    (shoot / "trap.jpg").symlink_to(tmp_path / "pipe")
    lib = darktable_library(tmp_path / "library.db", [(str(shoot), "trap.jpg", 1061, 0)])
    cat = read_catalog(lib)  # would block forever if opened
    assert cat.entries == [] and cat.skipped == 1 and "not a regular file" in cat.problems[0]


def test_catalog_photos_together_with_folders_and_the_fixed_order(tmp_path):
    shoot = tmp_path / "shoot"
    a, b = _photos(shoot, "a.jpg", "b.jpg")
    lib = darktable_library(tmp_path / "library.db", [(str(shoot), "a.jpg", 1060, 0), (str(shoot), "b.jpg", 1057, 0)])
    shutil.copyfile(a, shoot / "c.jpg")
    (shoot / "a.xmp").write_text('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/'
                                 '02/22-rdf-syntax-ns#"><rdf:Description xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
                                 'xmp:Rating="2"/></rdf:RDF></x:xmpmeta>', encoding="utf-8")
    report = ratings.collect([shoot], catalogs=[lib], ledger=None)
    assert _got(report) == {"a.jpg": (4, "darktable library")}  # the catalog beats the sidecar
    assert len(report.conflicts) == 1 and "darktable library wins" in report.conflicts[0]
    assert sorted(Path(p).name for p in report.unrated_paths) == ["b.jpg", "c.jpg"]  # b: darktable's default
    assert report.set_aside["darktable_default"] == 1


def test_names_that_are_not_utf8_are_read_as_the_file_system_has_them(tmp_path):
    shoot = tmp_path / "shoot"
    shoot.mkdir()
    name = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes on disk
    Image.new("RGB", (8, 8)).save(shoot / name, format="JPEG")
    lib = darktable_library(tmp_path / "library.db", [(str(shoot), "ok.jpg", 1061, 0)])
    conn = sqlite3.connect(lib)
    conn.execute("INSERT INTO images (film_id, filename, flags, version) VALUES (1, CAST(? AS TEXT), 1061, 0)",
                 (os.fsencode(name),))
    conn.commit()
    conn.close()
    cat = read_catalog(lib)
    assert cat.problems == [] and [os.fsencode(Path(e.path).name) for e in cat.entries] == [b"caf\xe9.jpg"]
    assert [Path(m).name for m in cat.missing] == ["ok.jpg"]
