"""EXIF for reports and bursts (photos/exif.py): read from real camera files, cut when absurdly
long, and any failure loses the EXIF fields only, never the score."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from ilgnet_cli.photos.collection import score_files
from ilgnet_cli.photos.exif import CUT_MARK, MAX_TEXT, ExifInfo, read_exif


def test_camera_photos_have_their_camera_time_and_settings(camera):
    found = [read_exif(p) for p in camera(12)]
    assert all(e.error is None for e in found)
    assert sum(bool(e.camera) for e in found) >= 10 and sum(bool(e.captured) for e in found) >= 10
    iphone = read_exif(next(p for p in camera(12) if p.name == "Apple_iPhone-4.jpg"))
    assert iphone.make == "Apple" and iphone.camera == "Apple iPhone 4" and iphone.has_gps
    assert iphone.captured.startswith("20") and "T" in iphone.captured and iphone.timestamp() > 1e9


def test_camera_reads_without_repeating_the_make():
    assert ExifInfo(make="Canon", model="Canon EOS 5D Mark III").camera == "Canon EOS 5D Mark III"
    assert ExifInfo(make="NIKON CORPORATION", model="NIKON D90").camera == "NIKON D90"
    assert ExifInfo(make="Apple", model="iPhone 4").camera == "Apple iPhone 4"
    assert ExifInfo().camera == "" and ExifInfo(captured="not a date").timestamp() is None


def test_json_round_trip_keeps_only_fields_of_the_right_type():
    e = ExifInfo(captured="2024-05-01T10:00:00.10", make="Canon", iso=100, aperture=2.8, has_gps=True)
    assert ExifInfo.from_json(e.to_json()) == e
    edited = {"make": 3, "iso": "100", "aperture": True, "has_gps": "yes", "unknown": 1, "model": "M"}
    assert ExifInfo.from_json(edited) == ExifInfo(model="M")


def test_absurdly_long_strings_are_cut_and_marked(tmp_path, camera):
    img = Image.open(camera(1)[0])
    exif = img.getexif()
    exif[0x010F] = "M" * 30_000  # Make (a JPEG segment holds 64 KB)
    img.save(tmp_path / "long.jpg", exif=exif.tobytes(), quality=80)
    make = read_exif(tmp_path / "long.jpg").make
    assert make == "M" * MAX_TEXT + CUT_MARK


def test_exif_failure_loses_only_exif(monkeypatch, tiny, photo_folder):
    import exifread

    def boom(*args, **kwargs):
        raise AssertionError("exifread exploded")

    monkeypatch.setattr(exifread, "process_file", boom)
    photo = next(photo_folder(1, size=400).iterdir())
    result = score_files([str(photo)], tiny).results[0]
    assert result.ok and result.score is not None
    assert result.exif.error.startswith("EXIF unreadable: AssertionError") and result.exif.camera == ""


@pytest.mark.parametrize("name", ["Apple_iPhone-11-Pro-Max.heic", "Samsung_Galaxy-S24-FE.heic"])
def test_heic_exif(shared, tmp_path, name):
    shutil.copy(shared("photos", "camera", name), tmp_path / name)
    e = read_exif(tmp_path / name)
    assert e.error is None and e.camera and e.captured


def test_an_endless_chain_of_tiff_ifds_costs_a_bounded_number_of_reads(tmp_path):
    # 200,000 chained IFDs of 8 entries took exifread 27 s; real photos need under 2,000 reads.
    import struct

    n = 200_000
    data = bytearray(b"II*\x00" + struct.pack("<I", 8))
    entries = b"".join(struct.pack("<HHII", 0x010F + k, 2, 4, 0x41414141) for k in range(8))
    for i in range(n):
        following = len(data) + 2 + len(entries) + 4 if i < n - 1 else 0
        data += struct.pack("<H", 8) + entries + struct.pack("<I", following)
    path = tmp_path / "chain.tif"
    path.write_bytes(data)
    info = read_exif(path)
    assert info.error is not None and "reads" in info.error and info.make is None
