"""Ratings as photographers write them (photos/ratings.py): XMP sidecars in the Adobe and darktable
styles (attributes or elements, rejects, 0 = unrated), XMP embedded in the photo, a CSV, keep and
reject folders; conflicts resolved and said, ratings ilgnet wrote itself never taken for the
user's, unreadable sources reported and never fatal.

Then every place a photo's rating lives, who wrote it, and which one is the user's: darktable's
default star, ilgnet's own guesses wherever they were copied (marker, ledger, ilgnet's copies of
the user's ratings), Windows' and digiKam's fields, EXIF, and the fixed order that no rewrite
can flip; ``score --xmp`` keeping the user's rating from any of them; ``learn``'s counts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import write_sidecar, xmp
from PIL import Image

from ilgnet_cli.photos import ratings
from ilgnet_cli.photos.results import ScoreResult
from ilgnet_cli.photos.xmp import plan_and_write, read_packet, sidecar_paths, write_sidecars
from ilgnet_cli.training import learn


def test_sidecar_styles_rejects_and_ilgnet_ratings(tmp_path):
    img = Image.new("RGB", (64, 48), (90, 120, 150))
    paths = {}
    for name in ("a", "b", "c", "d", "e", "f", "g"):
        paths[name] = tmp_path / f"{name}.jpg"
        img.save(paths[name])
    write_sidecar(paths["a"], 5, "adobe")
    write_sidecar(paths["b"], 2, "darktable")
    write_sidecar(paths["c"], -1, "adobe")  # Lightroom's reject
    write_sidecar(paths["d"], 4, "adobe", ours=4)  # ilgnet wrote it: not the user's
    write_sidecar(paths["e"], 2, "adobe", ours=4)  # the user changed ilgnet's 4 to 2: theirs
    (tmp_path / "f.XMP").write_text(xmp(3.5), encoding="utf-8")  # another case, a real rating
    write_sidecar(paths["g"], 0, "adobe")  # 0 = unrated
    element = xmp().replace("/></rdf:RDF>", "><xmp:Rating>1</xmp:Rating></rdf:Description></rdf:RDF>")
    paths["h"] = tmp_path / "h.jpg"
    img.save(paths["h"])
    (tmp_path / "h.jpg.xmp").write_text(element, encoding="utf-8")  # digiKam writes elements
    report = ratings.collect([tmp_path])
    got = {Path(p.path).stem: (p.rating, p.source) for p in report.photos}
    assert got == {"a": (5, "adobe sidecar"), "b": (2, "darktable sidecar"), "c": (-1, "adobe sidecar"),
                   "e": (2, "adobe sidecar"), "f": (3.5, "adobe sidecar"), "h": (1, "darktable sidecar")}
    assert report.ilgnet_written == 1
    assert report.unrated == 1
    assert report.counts() == {"rejected": 1, "1": 1, "2": 2, "3.5": 1, "5": 1}


def test_embedded_xmp_and_sidecar_conflict(tmp_path):
    img = Image.new("RGB", (64, 48), (200, 100, 50))
    only, both = tmp_path / "only.jpg", tmp_path / "both.jpg"
    img.save(only, xmp=xmp(4).encode())
    img.save(both, xmp=xmp(1).encode())
    write_sidecar(both, 5, "darktable")
    report = ratings.collect([tmp_path])
    got = {Path(p.path).stem: (p.rating, p.source) for p in report.photos}
    assert got == {"only": (4, "embedded XMP"), "both": (5, "darktable sidecar")}  # the sidecar wins
    assert len(report.conflicts) == 1 and "sidecar wins" in report.conflicts[0]


@pytest.mark.parametrize("older", ["adobe", "darktable"])
def test_adobe_and_darktable_disagree_fixed_order_wins(tmp_path, older):
    # No file time decides (an ilgnet rewrite of one sidecar would flip it): darktable's wins.
    image = tmp_path / "x.jpg"
    Image.new("RGB", (32, 32)).save(image)
    sides = {"adobe": write_sidecar(image, 1, "adobe"), "darktable": write_sidecar(image, 5, "darktable")}
    os.utime(sides[older], (1_000_000, 1_000_000))
    report = ratings.collect([tmp_path])
    assert [(p.rating, p.source) for p in report.photos] == [(5, "darktable sidecar")]
    assert len(report.conflicts) == 1 and "darktable sidecar wins" in report.conflicts[0]


def test_unreadable_sidecars_are_reported_not_fatal(tmp_path):
    img = Image.new("RGB", (32, 32))
    for name in ("bomb", "garbage", "fine"):
        img.save(tmp_path / f"{name}.jpg")
    (tmp_path / "bomb.xmp").write_text('<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>')
    (tmp_path / "garbage.xmp").write_bytes(b"\x00\xff not xml at all")
    write_sidecar(tmp_path / "fine.jpg", 4, "adobe")
    report = ratings.collect([tmp_path])
    assert [Path(p.path).stem for p in report.photos] == ["fine"]
    assert len(report.problems) == 2 and all(p.startswith("unreadable sidecar") for p in report.problems)


def test_csv_and_folders(tmp_path):
    img = Image.new("RGB", (32, 32))
    (tmp_path / "k").mkdir()
    (tmp_path / "r").mkdir()
    for p in ("a.jpg", "b.jpg", "k/k1.jpg", "r/r1.jpg"):
        img.save(tmp_path / p)
    csv = tmp_path / "ratings.csv"
    csv.write_text("path,rating\na.jpg,5\nb.jpg,zzz\nmissing.jpg,4\nk/k1.jpg,1\n", encoding="utf-8")
    report = ratings.collect([], keep=[tmp_path / "k"], reject=[tmp_path / "r"], ratings_csv=csv)
    got = {Path(p.path).name: (p.rating, p.source) for p in report.photos}
    # the CSV wins over the keep folder for k1, and says so
    assert got == {"a.jpg": (5, "csv"), "k1.jpg": (1, "csv"), "r1.jpg": (-1, "reject folder")}
    assert len(report.problems) == 2 and any("line 3" in p for p in report.problems)
    assert any("k1.jpg" in c for c in report.conflicts)


def test_embedded_xmp_of_real_phone_photos_is_read(shared):
    # The iPhone's HEIC ends its XMP packet with a NUL byte: still a readable packet, not a problem.
    folder = shared("photos", "camera")
    report = ratings.collect([folder / "Apple_iPhone-11-Pro-Max.heic", folder / "Samsung_Galaxy-S24-FE.heic"])
    assert report.problems == []


def test_ratings_csv_that_is_a_fifo_is_reported_never_read(tmp_path):
    fifo = tmp_path / "ratings.csv"
    os.mkfifo(fifo)
    code = ("import sys; from ilgnet_cli.photos.ratings import csv_ratings; "
            "r = csv_ratings(sys.argv[1]); print(r.problems)")
    proc = subprocess.run([sys.executable, "-c", code, str(fifo)], capture_output=True, text=True, timeout=15)
    assert proc.returncode == 0 and "not a regular file" in proc.stdout


# --------------------------------------------------------------------------- every source, one fixed order (issue #21)


NS = ('xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmlns:ilgnet="https://github.com/ilgnet/ilgnet-cli/ns/1.0/" '
      'xmlns:darktable="http://darktable.sf.net/" xmlns:MicrosoftPhoto="http://ns.microsoft.com/photo/1.0/" '
      'xmlns:digiKam="http://www.digikam.org/ns/1.0/"')


def packet(**attrs: object) -> str:
    """An XMP packet with these attributes (``xmp_Rating=3`` -> ``xmp:Rating="3"``)."""
    body = " ".join(f'{k.replace("_", ":", 1)}="{v}"' for k, v in attrs.items())
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n<x:xmpmeta xmlns:x="adobe:ns:meta/">'
            '<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
            f'<rdf:Description rdf:about="" {NS} {body}/></rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>')


def darktable_sidecar(image: Path, rating: int, **more: object) -> Path:
    """What darktable 4.2.1 writes (its namespace, xmp_version 5), reduced to the fields read."""
    path = sidecar_paths(image, "darktable")[0]
    path.write_text(packet(xmp_Rating=rating, darktable_xmp_version=5, darktable_history_end=0, **more),
                    encoding="utf-8")
    return path


def adobe_sidecar(image: Path, rating: int, **more: object) -> Path:
    path = sidecar_paths(image, "adobe")[0]
    path.write_text(packet(xmp_Rating=rating, **more), encoding="utf-8")
    return path


def photo(path: Path, *, xmp: str | None = None, exif: dict[int, int] | None = None, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.effect_noise((64, 48), 30 + seed).convert("RGB")
    kwargs: dict = {"quality": 90}
    if xmp is not None:
        kwargs["xmp"] = xmp.encode("utf-8")
    if exif is not None:
        e = Image.Exif()
        for tag, value in exif.items():
            e[tag] = value
        kwargs["exif"] = e.tobytes()
    img.save(path, format="JPEG", **kwargs)
    return path


def got(report: ratings.RatingsReport) -> dict[str, tuple[float, str]]:
    return {Path(p.path).name: (p.rating, p.source) for p in report.photos}


@pytest.fixture(autouse=True)
def no_user_darktablerc(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))


# --------------------------------------------------------------------------- darktable's default


def test_darktable_default_star_is_no_opinion(tmp_path):
    default, hand, plain = (photo(tmp_path / n) for n in ("default.jpg", "hand.jpg", "plain.jpg"))
    darktable_sidecar(default, 1)
    darktable_sidecar(hand, 2)
    # digiKam writes IMG.JPG.xmp too: a 1 there is no darktable default
    sidecar_paths(plain, "darktable")[0].write_text(packet(xmp_Rating=1), encoding="utf-8")
    report = ratings.collect([tmp_path])
    assert got(report) == {"hand.jpg": (2, "darktable sidecar"), "plain.jpg": (1, "darktable sidecar")}
    assert report.set_aside["darktable_default"] == 1 and [Path(p).name for p in report.unrated_paths] == [
        "default.jpg"]
    assert any("darktable's default star (1, darktable's default)" in line for line in report.set_aside_lines())
    theirs = ratings.collect([tmp_path], darktable_initial_rating=0)
    assert got(theirs)["default.jpg"] == (1, "darktable sidecar") and not theirs.set_aside


def test_darktablerc_sets_the_default_and_the_option_wins(tmp_path):
    rc = tmp_path / "xdg-config" / "darktable" / "darktablerc"
    rc.parent.mkdir(parents=True)
    rc.write_text("ui_last/import_initial_rating=2\n", encoding="utf-8")
    a, b = photo(tmp_path / "p" / "a.jpg"), photo(tmp_path / "p" / "b.jpg")
    darktable_sidecar(a, 2)
    darktable_sidecar(b, 1)
    report = ratings.collect([tmp_path / "p"])
    assert got(report) == {"b.jpg": (1, "darktable sidecar")}
    assert report.darktable_initial_from == str(rc)
    assert got(ratings.collect([tmp_path / "p"], darktable_initial_rating=1)) == {"a.jpg": (2, "darktable sidecar")}


# --------------------------------------------------------------------------- other programs' fields


def test_windows_digikam_and_exif_ratings(tmp_path):
    photo(tmp_path / "ms.jpg", xmp=packet(MicrosoftPhoto_Rating=75))  # Windows: 4 stars
    photo(tmp_path / "ms_and_xmp.jpg", xmp=packet(xmp_Rating=2, MicrosoftPhoto_Rating=99))  # xmp:Rating first
    photo(tmp_path / "dk_reject.jpg", xmp=packet(xmp_Rating=4, digiKam_PickLabel=1))  # a reject beats stars
    photo(tmp_path / "dk_pick.jpg", xmp=packet(digiKam_PickLabel=3))  # accepted, no stars: liked
    photo(tmp_path / "dk_pending.jpg", xmp=packet(digiKam_PickLabel=2))
    photo(tmp_path / "exif.jpg", exif={0x4746: 3})  # EXIF Rating, as Windows writes it
    photo(tmp_path / "exif_pct.jpg", exif={0x4749: 1})  # RatingPercent 1 = 1 star
    photo(tmp_path / "exif_zero.jpg", exif={0x4746: 0, 0x4749: 0})
    report = ratings.collect([tmp_path])
    assert got(report) == {
        "ms.jpg": (4, "embedded XMP (MicrosoftPhoto)"), "ms_and_xmp.jpg": (2, "embedded XMP"),
        "dk_reject.jpg": (-1, "embedded XMP (digiKam reject)"), "dk_pick.jpg": (5, "embedded XMP (digiKam pick)"),
        "exif.jpg": (3, "EXIF Rating"), "exif_pct.jpg": (1, "EXIF Rating")}
    assert sorted(Path(p).name for p in report.unrated_paths) == ["dk_pending.jpg", "exif_zero.jpg"]


@pytest.mark.parametrize(("percent", "stars"), [(1, 1), (12, 1), (13, 2), (25, 2), (50, 3), (62, 3), (63, 4),
                                                (75, 4), (88, 5), (99, 5), (100, 5)])
def test_microsoft_percent_ranges(tmp_path, percent, stars):
    photo(tmp_path / "a.jpg", xmp=packet(MicrosoftPhoto_Rating=percent))
    assert got(ratings.collect([tmp_path]))["a.jpg"][0] == stars


# --------------------------------------------------------------------------- the fixed order


def test_fixed_order_whatever_the_file_times(tmp_path):
    img = photo(tmp_path / "a.jpg", xmp=packet(xmp_Rating=1), exif={0x4746: 2})
    dt, adobe = darktable_sidecar(img, 5), adobe_sidecar(img, 4)
    outcomes = set()
    for older in (dt, adobe, img):
        os.utime(older, (1_000_000, 1_000_000))
        report = ratings.collect([tmp_path])
        outcomes.add(tuple(got(report).items()))
        assert len(report.conflicts) == 1
        assert report.conflicts[0].endswith("darktable sidecar says 5, adobe sidecar 4, embedded XMP 1, "
                                            "EXIF Rating 2; darktable sidecar wins")
        os.utime(older, None)
    assert outcomes == {(("a.jpg", (5, "darktable sidecar")),)}


def test_an_ilgnet_rewrite_cannot_flip_the_choice(tmp_path):
    # Before: the newer of two disagreeing sidecars won, and score --xmp rewriting (keeping) the
    # hand rating in one made it the newer.
    img = photo(tmp_path / "a.jpg")
    adobe = adobe_sidecar(img, 1)
    darktable_sidecar(img, 5)
    os.utime(adobe, (1_000_000, 1_000_000))
    assert got(ratings.collect([tmp_path])) == {"a.jpg": (5, "darktable sidecar")}
    changes, errors = write_sidecars([ScoreResult(path=str(img), score=0.9)], style="adobe", model="m")
    assert errors == [] and changes[0].action == "keep-hand-rating" and changes[0].new_rating == "1"
    assert os.stat(adobe).st_mtime > os.stat(sidecar_paths(img, "darktable")[0]).st_mtime - 1
    assert got(ratings.collect([tmp_path])) == {"a.jpg": (5, "darktable sidecar")}


def test_ilgnets_copy_of_a_hand_rating_never_outranks_its_original(tmp_path):
    img = photo(tmp_path / "a.jpg", xmp=packet(xmp_Rating=4))  # rated in the file (Lightroom, a JPEG)
    changes, errors = write_sidecars([ScoreResult(path=str(img), score=0.1)], style="adobe", model="m")
    assert errors == []
    assert (changes[0].action, changes[0].new_rating, changes[0].kept_from) == ("keep-hand-rating", "4",
                                                                                "embedded XMP")
    side = read_packet(sidecar_paths(img, "adobe")[0])
    assert side is not None and (side.rating, side.kept, side.ours) == (4, 4, None)
    assert got(ratings.collect([tmp_path])) == {"a.jpg": (4, "embedded XMP")}
    # The user changes it in Lightroom (written to the file): heard, the copy does not outrank it.
    photo(img, xmp=packet(xmp_Rating=2))
    report = ratings.collect([tmp_path])
    assert got(report) == {"a.jpg": (2, "embedded XMP")} and report.conflicts == []
    assert report.set_aside["ilgnet_kept_copy"] == 1
    # The next score --xmp copies the new rating; once the user unrates it, ilgnet's guess goes in.
    changes, _ = write_sidecars([ScoreResult(path=str(img), score=0.1)], style="adobe", model="m")
    assert (changes[0].action, changes[0].new_rating) == ("keep-hand-rating", "2")
    photo(img)
    changes, _ = write_sidecars([ScoreResult(path=str(img), score=0.1)], style="adobe", model="m")
    assert (changes[0].action, changes[0].new_rating) == ("update", "1")
    side = read_packet(sidecar_paths(img, "adobe")[0])
    assert side is not None and (side.rating, side.kept, side.ours) == (1, None, 1)
    assert ratings.collect([tmp_path]).photos == []


# --------------------------------------------------------------------------- the ledger


def test_photo_manager_copies_of_ilgnet_stars_old_and_new(tmp_path):
    imgs = [photo(tmp_path / f"p{i}.jpg", seed=i) for i in range(5)]
    first = [ScoreResult(path=str(p), score=0.1 * (i + 1)) for i, p in enumerate(imgs)]
    write_sidecars(first, style="adobe", model="m")  # stars 1..5
    for i, img in enumerate(imgs):  # darktable's copies: its namespace, no ilgnet marker
        darktable_sidecar(img, i + 1)
    report = ratings.collect([tmp_path])
    assert report.photos == [] and report.set_aside["ilgnet_ledger"] == 5  # (ilgnet's 1 before darktable's default)
    assert report.ilgnet_written == 5
    # A re-score gives new stars; darktable writes the OLD ones back beside the new ilgnet:Rating.
    second = [ScoreResult(path=str(p), score=1 - 0.1 * (i + 1)) for i, p in enumerate(imgs)]
    changes, _ = write_sidecars(second, style="darktable", model="m")
    assert {c.action for c in changes} == {"update"}  # the old copies are ilgnet's: not hand ratings
    for i, img in enumerate(imgs):
        darktable_sidecar(img, i + 1, ilgnet_Rating=5 - i)
    assert ratings.collect([tmp_path]).photos == []
    # The user changes one to a star ilgnet never wrote for it: theirs.
    darktable_sidecar(imgs[1], 4)  # ilgnet wrote 2, then 4, for p1: both are ilgnet's
    assert ratings.collect([tmp_path]).photos == []
    darktable_sidecar(imgs[1], 3)
    assert got(ratings.collect([tmp_path])) == {"p1.jpg": (3, "darktable sidecar")}
    # A copy of a photo elsewhere (a photo manager's import) is known by its content.
    other = tmp_path / "imported" / "IMG.jpg"
    other.parent.mkdir()
    shutil.copyfile(imgs[4], other)
    photo(tmp_path / "fresh" / "new.jpg", seed=9)
    darktable_sidecar(other, 5)
    darktable_sidecar(tmp_path / "fresh" / "new.jpg", 5)
    report = ratings.collect([tmp_path / "imported", tmp_path / "fresh"])
    assert got(report) == {"new.jpg": (5, "darktable sidecar")}


def test_without_a_ledger_only_the_marker_is_known(tmp_path):
    img = photo(tmp_path / "a.jpg")
    write_sidecars([ScoreResult(path=str(img), score=0.5)], model="m", ledger=False)
    darktable_sidecar(img, 1 + 1)
    assert got(ratings.collect([tmp_path])) == {"a.jpg": (2, "darktable sidecar")}


# --------------------------------------------------------------------------- score --xmp


def test_score_xmp_overwrites_darktable_defaults_and_keeps_hand_ratings_from_anywhere(tmp_path):
    names = ["default", "hand_dt", "hand_other_style", "hand_exif", "hand_ms", "reject_dk"]
    imgs = {n: photo(tmp_path / f"{n}.jpg", seed=i) for i, n in enumerate(names)}
    darktable_sidecar(imgs["default"], 1)
    darktable_sidecar(imgs["hand_dt"], 2)
    adobe_sidecar(imgs["hand_other_style"], 4)
    photo(imgs["hand_exif"], exif={0x4746: 5})
    photo(imgs["hand_ms"], xmp=packet(MicrosoftPhoto_Rating=25))
    photo(imgs["reject_dk"], xmp=packet(digiKam_PickLabel=1))
    results = [ScoreResult(path=str(p), score=0.1 + 0.1 * i) for i, p in enumerate(imgs.values())]
    changes, errors = write_sidecars(results, style="darktable", model="m")
    assert errors == []
    by = {c.path.name.split(".")[0]: (c.action, c.new_rating, c.kept_from) for c in changes}
    assert by == {"default": ("update", "1", None), "hand_dt": ("keep-hand-rating", "2", None),
                  "hand_other_style": ("keep-hand-rating", "4", "adobe sidecar"),
                  "hand_exif": ("keep-hand-rating", "5", "EXIF Rating"),
                  "hand_ms": ("keep-hand-rating", "2", "embedded XMP (MicrosoftPhoto)"),
                  "reject_dk": ("keep-hand-rating", "-1", "embedded XMP (digiKam reject)")}
    report = ratings.collect([tmp_path])
    assert got(report) == {"hand_dt.jpg": (2, "darktable sidecar"), "hand_other_style.jpg": (4, "adobe sidecar"),
                           "hand_exif.jpg": (5, "EXIF Rating"), "hand_ms.jpg": (2, "embedded XMP (MicrosoftPhoto)"),
                           "reject_dk.jpg": (-1, "embedded XMP (digiKam reject)")}
    assert report.conflicts == []
    # --overwrite-ratings: ilgnet's guesses everywhere; --darktable-initial-rating 0 keeps the 1.
    changes, _ = write_sidecars(results, style="darktable", model="m", overwrite_ratings=True)
    assert {c.action for c in changes} == {"update"}
    fresh = photo(tmp_path / "other" / "fresh.jpg", seed=7)
    darktable_sidecar(fresh, 1)
    one = [ScoreResult(path=str(fresh), score=0.5)]
    change = write_sidecars(one, style="darktable", model="m", darktable_initial_rating=0, dry_run=True)[0][0]
    assert change.action == "keep-hand-rating"
    assert write_sidecars(one, style="darktable", model="m", dry_run=True)[0][0].action == "update"


def test_plan_and_write_context_defaults_keep_the_old_rules(tmp_path):
    side = tmp_path / "a.xmp"
    side.write_text(packet(xmp_Rating=1, darktable_xmp_version=5), encoding="utf-8")
    assert plan_and_write(side, 4, 0.5, "m").action == "update"  # darktable's default 1
    side.write_text(packet(xmp_Rating=1), encoding="utf-8")
    assert plan_and_write(side, 4, 0.5, "m").action == "keep-hand-rating"  # anyone else's 1


def test_score_cli_prints_ledger_warnings_and_takes_the_option(tmp_path, weights_file, monkeypatch, cli):
    folder = tmp_path / "shoot"
    img = photo(folder / "a.jpg")
    darktable_sidecar(img, 1)
    photo(folder / "b.jpg", seed=1)  # gets ilgnet's star: recorded in the ledger, which cannot be written
    data = tmp_path / "data-file"
    data.write_text("x")
    monkeypatch.setenv("ILGNET_DATA", str(data))
    result = cli("score", str(folder), "--weights", str(weights_file), "--device", "cpu",
                                      "--workers", "0", "--xmp", "--xmp-style", "darktable",
                                      "--darktable-initial-rating", "0", "--no-cache")
    assert result.code == 0, result.output
    assert "1 hand rating(s) kept" in result.output
    assert "warning" in result.output and "ledger" in result.output and "Traceback" not in result.output


# --------------------------------------------------------------------------- learn's counts


def test_learn_counts_photos_left_out_between_the_thresholds(tmp_path, monkeypatch):
    report = ratings.RatingsReport(photos=[ratings.RatedPhoto(f"/p/{i}.jpg", r, "csv")
                                           for i, r in enumerate([5, 5, 4, 3, 3, 2.5, 1, -1])])

    def fake_extract(files, loaded, **kwargs):
        n = len(files)
        return learn.Features(paths=list(files), h=np.zeros((n, learn.FEATURE_DIM), np.float32), h_mirror=None,
                              base_scores=np.full(n, 0.5), info=[{} for _ in files])

    monkeypatch.setattr(learn, "extract", fake_extract)
    out = learn.learn_taste(report, object(), name=None)
    assert out.data is not None and len(out.data.y) == 5 and out.data.left_out == 3


def test_learn_json_and_summary_report_what_was_set_aside(tmp_path, weights_file, cli):
    imgs = [photo(tmp_path / f"p{i}.jpg", seed=i) for i in range(6)]
    write_sidecars([ScoreResult(path=str(imgs[0]), score=0.5)], style="adobe", model="m")  # ilgnet's own
    darktable_sidecar(imgs[1], 1)  # darktable's default
    darktable_sidecar(imgs[2], 5)
    darktable_sidecar(imgs[3], 1)
    adobe_sidecar(imgs[4], 3)  # between the thresholds
    adobe_sidecar(imgs[5], -1)
    args = ["learn", str(tmp_path), "--dry-run", "--base", str(weights_file), "--workers", "0", "--no-mirror"]
    result = cli(*args, "--json")
    assert result.code == 1, result.output  # too few
    summary = json.loads(result.stdout)
    assert summary["labelled"] == 2 and summary["liked"] == 1 and summary["left_out"] == 1
    assert summary["ratings"]["set_aside"] == {"ilgnet_marker": 1, "ilgnet_ledger": 0, "ilgnet_kept_copy": 0,
                                               "darktable_default": 2}
    assert summary["ratings"]["ilgnet_written"] == 1
    text = cli(*args)
    assert "2 photo(s) with darktable's default star" in text.output
    assert "1 photo(s) with rating(s) ilgnet wrote itself" in text.output
    assert "(1 left out between the thresholds)" in text.output or "too few" in text.output
    assert "Traceback" not in text.output
