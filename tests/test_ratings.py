"""Ratings as photographers write them (photos/ratings.py): XMP sidecars in the Adobe and darktable
styles (attributes or elements, rejects, 0 = unrated), XMP embedded in the photo, a CSV, keep and
reject folders; conflicts resolved and said, ratings ilgnet wrote itself never taken for the
user's, unreadable sources reported and never fatal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_sidecar, xmp
from PIL import Image

from ilgnet_cli.photos import ratings


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
