"""The real darktable (Debian's 4.2.1, headless under Xvfb) on real camera photos: its default
stars, its copies of ilgnet's guesses, its library, read by ``learn`` and respected by
``score --xmp``; ExifTool, exiv2 and gexiv2 read back what ilgnet writes.

Measured with darktable 4.2.1 (and asserted below): every imported photo gets 1 star unless
its embedded XMP has a rating (four of the shared camera photos do: 3, 3, 3 and 2 stars);
darktable writes ``IMG.JPG.xmp`` (``xmp:Rating``, -1 for a reject, its own namespace) for every
photo but one (Canon_IXUS-750.jpg: "failed to serialize xmp data"), imports ilgnet's stars from
an Adobe-style ``IMG.xmp`` (a 1 on a photo at its default 1 toggles to 0), keeps ilgnet's
namespace in its sidecar while writing its own library's star back over ``xmp:Rating``, and
re-reads sidecars when a photo is imported again.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from darktable_client import (
    EXIFTOOL,
    EXIV2,
    Darktable,
    darktable_version,
    exiftool_rating,
    exiv2_tags,
    gexiv2_tags,
    missing_darktable,
    missing_gexiv2,
    xvfb,
)
from helpers import DARKTABLE_XMP, shared_path

from ilgnet_cli.photos import ratings
from ilgnet_cli.photos.results import ScoreResult
from ilgnet_cli.photos.xmp import sidecar_paths, write_sidecars
from ilgnet_cli.training.learn import Thresholds

pytestmark = [pytest.mark.slow, pytest.mark.skipif(missing_darktable() is not None,
                                                   reason=missing_darktable() or "")]
NO_SIDECAR_IN_4_2_1 = "Canon_IXUS-750.jpg"  # darktable 4.2.1: "[xmp_write] failed to serialize xmp data"


def labels(report: ratings.RatingsReport) -> tuple[int, int]:
    """(liked, disliked) under the default thresholds."""
    t = Thresholds()
    got = [t.label(p.rating) for p in report.photos]
    return got.count(1), got.count(0)


def _copy_camera_photos(folder: Path) -> list[Path]:
    src = shared_path("photos", "camera")
    folder.mkdir(parents=True)
    out = []
    for p in sorted(src.iterdir()):
        if p.suffix.lower() in (".jpg", ".heic"):
            shutil.copyfile(p, folder / p.name)  # no copy of the shared files' read-only mode
            out.append(folder / p.name)
    return out


@pytest.fixture(scope="module")
def display():
    with xvfb() as d:
        yield d


@pytest.fixture(scope="module")
def hand_rated(tmp_path_factory, display):
    """All shared camera photos imported into darktable; 12 given 5 stars, 3 given 4, 3 rejected by
    hand, the rest left at darktable's default (or at the rating embedded in the file)."""
    root = tmp_path_factory.mktemp("dt-hand")
    photos = _copy_camera_photos(root / "photos")
    embedded = {Path(p.path).name: p.rating for p in ratings.collect([root / "photos"], ledger=None).photos}
    assert embedded == {"Canon_EOS-7D.jpg": 3, "Nokia_Lumia-800.jpg": 3, "Olympus_FE230.jpg": 3,
                        "Sony_Xperia-Z2-D6503.jpg": 2}
    free = [p for p in photos if p.name not in embedded and p.suffix.lower() == ".jpg"]
    free.sort(key=lambda p: (p.name != NO_SIDECAR_IN_4_2_1, p.name))
    fives, fours, rejects = free[:12], free[12:15], free[15:18]
    hand = {**{p: 5 for p in fives}, **{p: 4 for p in fours}, **{p: -1 for p in rejects}}
    dt = Darktable(root / "darktable", display)
    got = dt.import_and_rate({p: hand.get(p) for p in photos})
    for p in photos:
        expected = hand.get(p, embedded.get(p.name, 1))
        assert got[str(p)] == expected, p.name
    return {"root": root, "folder": root / "photos", "photos": photos, "dt": dt, "hand": hand,
            "embedded": embedded, "fives": fives, "fours": fours, "rejects": rejects}


def test_default_stars_are_not_dislikes(hand_rated):
    folder = hand_rated["folder"]
    sidecars = [p for p in hand_rated["photos"] if sidecar_paths(p, "darktable")[0].exists()]
    report = ratings.collect([folder])
    liked_with_sidecar = sum(p in sidecars for p in hand_rated["fives"] + hand_rated["fours"])
    assert labels(report) == (liked_with_sidecar, 3 + 1)  # the rejects and the photo whose file says 2 stars
    if darktable_version() == "4.2.1":
        assert liked_with_sidecar == 14 and NO_SIDECAR_IN_4_2_1 not in {p.name for p in sidecars}
    defaults = sum(p in sidecars and p not in hand_rated["hand"] and p.name not in hand_rated["embedded"]
                   for p in hand_rated["photos"])
    assert report.set_aside["darktable_default"] == defaults >= 25
    assert report.conflicts == [] and report.problems == []
    assert any("darktable's default star" in line for line in report.set_aside_lines())
    # The user who set darktable's initial rating to 0 says so: every darktable star is theirs.
    theirs = ratings.collect([folder], darktable_initial_rating=0)
    assert labels(theirs) == (liked_with_sidecar, 4 + defaults)


def test_library_gives_every_hand_rating_and_stays_untouched(hand_rated):
    library = hand_rated["dt"].library
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in library.parent.iterdir() if p.is_file()}
    report = ratings.collect([], catalogs=[library])
    assert labels(report) == (15, 4)
    assert report.catalogs[0]["kind"] == "darktable" and report.catalogs[0]["missing_on_disk"] == 0
    assert report.set_aside["darktable_default"] >= 25
    both = ratings.collect([hand_rated["folder"]], catalogs=[library])
    assert labels(both) == (15, 4) and both.conflicts == []
    after = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in library.parent.iterdir() if p.is_file()}
    assert after == before  # not a byte, not a new -journal/-wal/-shm


def test_library_is_read_while_darktable_has_it_open(hand_rated):
    library = hand_rated["dt"].library

    def files() -> dict[str, tuple[bytes, int]]:
        return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in library.parent.iterdir()
                if p.name.startswith("library.db")}

    with hand_rated["dt"].running():  # darktable holds it open (and its library.db.lock)
        before = files()
        report = ratings.collect([], catalogs=[library])
        assert files() == before  # not a byte, no lock, no -journal/-wal/-shm of ours
    assert labels(report) == (15, 4) and report.problems == []


def test_library_mid_change_is_read_as_last_committed(hand_rated, tmp_path):
    # darktable in the middle of a change: its rollback journal beside the library.
    copy = tmp_path / "library.db"
    shutil.copyfile(hand_rated["dt"].library, copy)
    owner = sqlite3.connect(copy, isolation_level=None)
    owner.execute("BEGIN EXCLUSIVE")
    owner.execute("UPDATE images SET flags = (flags & ~7) | 5")  # every photo 5 stars, not committed
    assert Path(f"{copy}-journal").exists()
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    report = ratings.collect([], catalogs=[copy])
    assert labels(report) == (15, 4)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    owner.execute("ROLLBACK")
    owner.close()


def test_learn_dry_run_json_on_the_library(hand_rated, weights_file, cli):
    result = cli("learn", "--catalog", str(hand_rated["dt"].library), "--dry-run", "--json",
                                      "--base", str(weights_file), "--workers", "0", "--no-mirror")
    assert result.code == 1, result.output  # 19 labelled photos: too few to install, said in the JSON
    summary = json.loads(result.stdout)
    assert summary["labelled"] == 19 and summary["liked"] == 15
    assert summary["left_out"] == 3  # the three 3-star photos
    assert summary["ratings"]["set_aside"]["darktable_default"] >= 25
    assert summary["ratings"]["darktable_initial_rating"] == {"value": 1, "from": "darktable's default"}
    assert "too few ratings" in summary["refusal"]


def test_score_xmp_rates_default_stars_and_keeps_hand_ratings(hand_rated):
    # Runs last: it writes sidecars into the module's folder.
    photos, hand, embedded = hand_rated["photos"], hand_rated["hand"], hand_rated["embedded"]
    no_sidecar = {p for p in photos if not sidecar_paths(p, "darktable")[0].exists()}
    results = [ScoreResult(path=str(p), score=(i * 0.37) % 1) for i, p in enumerate(photos)]
    changes, errors = write_sidecars(results, style="darktable", model="m")
    assert errors == []
    by_photo = {c.path.name[:-4]: c for c in changes}
    for p in photos:
        change = by_photo[p.name]
        if p in no_sidecar:  # the rating is in darktable's library only: score --xmp cannot see it
            assert change.action == "create"
        elif p in hand or p.name in embedded:
            assert change.action == "keep-hand-rating", p.name
        else:
            assert change.action == "update", p.name  # darktable's default star is no hand rating
    # Adobe-style sidecars show the user's darktable rating, marked as a copy: never ilgnet's.
    changes, errors = write_sidecars(results, style="adobe", model="m")
    adobe = {c.path.name: c for c in changes}
    five = hand_rated["fives"][1]
    assert adobe[five.stem + ".xmp"].action == "keep-hand-rating"
    assert adobe[five.stem + ".xmp"].kept_from == "darktable sidecar"
    # learn: still the user's ratings only (ilgnet's guesses carry its marker, its copies are copies).
    report = ratings.collect([hand_rated["folder"]])
    liked_with_sidecar = sum(p not in no_sidecar for p in hand_rated["fives"] + hand_rated["fours"])
    assert labels(report) == (liked_with_sidecar, 4) and report.conflicts == []
    guessed = {p for p in photos if (p not in hand and p.name not in embedded) or p in no_sidecar}
    assert report.set_aside["ilgnet_marker"] == len(guessed)
    assert report.set_aside["ilgnet_kept_copy"] == len(photos) - len(guessed)
    assert labels(ratings.collect([], catalogs=[hand_rated["dt"].library])) == (15, 4)


@pytest.mark.skipif(EXIFTOOL is None or EXIV2 is None, reason="ExifTool and exiv2 not installed")
def test_independent_readers_see_the_users_rating_in_the_copy(tmp_path):
    image = tmp_path / "IMG_0001.JPG"
    shutil.copyfile(shared_path("photos", "camera", "Canon_EOS-20D.jpg"), image)
    sidecar_paths(image, "darktable")[0].write_text(DARKTABLE_XMP.replace("{rating}", "4"), encoding="utf-8")
    changes, errors = write_sidecars([ScoreResult(path=str(image), score=0.1)], style="adobe", model="m")
    assert errors == [] and changes[0].action == "keep-hand-rating" and changes[0].new_rating == "4"
    adobe = sidecar_paths(image, "adobe")[0]
    assert exiftool_rating(adobe)["Rating"] == 4
    assert exiv2_tags(adobe)["Xmp.xmp.Rating"] == "4"
    if missing_gexiv2() is None:
        tags = gexiv2_tags(adobe)
        assert tags["Xmp.xmp.Rating"] == "4" and tags["Xmp.ilgnet.KeptRating"] == "4"
        assert "Xmp.ilgnet.Rating" not in tags


# --------------------------------------------------------------------------- ilgnet's guesses, copied


def test_darktable_copies_of_ilgnet_guesses_are_not_the_users(tmp_path, display):
    folder = tmp_path / "photos"
    names = ["Canon_EOS-20D.jpg", "Nikon_D70.jpg", "Nikon_D90.jpg", "Fujifilm_FinePix-S2Pro.jpg",
             "Pentax_Optio-430.jpg", "Sigma_DP1.jpg"]
    folder.mkdir()
    photos = []
    for name in names:
        shutil.copyfile(shared_path("photos", "camera", name), folder / name)
        photos.append(folder / name)
    first = [ScoreResult(path=str(p), score=0.1 + 0.15 * i) for i, p in enumerate(photos)]
    changes, errors = write_sidecars(first, style="adobe", model="m")  # score --xmp: IMG.xmp
    assert errors == [] and {c.action for c in changes} == {"create"}
    stars1 = {c.path.stem: int(c.new_rating or 0) for c in changes}
    dt = Darktable(tmp_path / "darktable", display)
    got = dt.import_and_rate({p: None for p in photos})  # darktable imports ilgnet's stars from IMG.xmp
    copied = {Path(k).stem: v for k, v in got.items()}
    # ilgnet's stars in darktable; applying 1 star to a photo at its default 1 toggles it to 0.
    assert copied == {s: 0 if v == 1 else v for s, v in stars1.items()}
    for p in photos:
        assert sidecar_paths(p, "darktable")[0].exists()
    report = ratings.collect([folder])
    assert report.photos == [], report.photos  # 0 of 6 are the user's
    assert report.set_aside["ilgnet_ledger"] == sum(v > 1 for v in stars1.values())
    assert report.ilgnet_written == len(photos)
    assert ratings.collect([], catalogs=[dt.library]).photos == []

    # A re-score: new stars in both sidecar styles; darktable's copies of the old stars are ilgnet's.
    second = [ScoreResult(path=str(p), score=0.95 - 0.15 * i) for i, p in enumerate(photos)]
    for style in ("adobe", "darktable"):
        changes, errors = write_sidecars(second, style=style, model="m")
        assert errors == [] and {c.action for c in changes} == {"update"}, (style, changes)
    # darktable writes every sidecar again from its library: the OLD stars, beside the new ilgnet:Rating.
    dt.touch_all()
    old_back = 0
    for p in photos:
        text = sidecar_paths(p, "darktable")[0].read_text(encoding="utf-8")
        old_back += f'xmp:Rating="{copied[p.stem]}"' in text and "ilgnet:Rating" in text
    assert old_back == len(photos)
    report = ratings.collect([folder])
    assert report.photos == [], report.photos
    # darktable imports the new stars when the photos are imported again: still ilgnet's.
    dt.reimport(photos)
    assert ratings.collect([], catalogs=[dt.library]).photos == []

    # The user changes two in darktable: to a star ilgnet never wrote for it, and a reject. Heard.
    target = photos[2]
    from ilgnet_cli.photos.ledger import Ledger

    with Ledger() as book:
        ilgnet_stars = book.stars(str(target))
    new = next(s for s in (5, 4, 3, 2) if s not in ilgnet_stars)
    dt.rate({target: new, photos[3]: -1})
    report = ratings.collect([folder])
    assert sorted((Path(p.path).name, p.rating) for p in report.photos) == sorted(
        [(target.name, new), (photos[3].name, -1)])
    assert ratings.collect([], catalogs=[dt.library]).counts() == {"rejected": 1, f"{new}": 1}
