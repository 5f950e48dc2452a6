from __future__ import annotations

import os
import shutil
from pathlib import Path

from conftest import camera_photos

from ilgnet_cli.photos.discover import Selection, find_images, sniff, unusable_reason


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    (root / "2024" / "trip").mkdir(parents=True)
    (root / ".thumbnails").mkdir()
    jpg = camera_photos(1)[0]
    shutil.copy2(jpg, root / "a.jpg")
    shutil.copy2(jpg, root / "2024" / "b.JPG")
    shutil.copy2(jpg, root / "2024" / "trip" / "ç_日本_🌸.jpeg")
    shutil.copy2(jpg, root / "2024" / "export.dat")  # a JPEG without an image extension
    shutil.copy2(jpg, root / ".hidden.jpg")
    shutil.copy2(jpg, root / ".thumbnails" / "t.jpg")
    (root / "notes.txt").write_text("not an image")
    (root / "IMG_0001.xmp").write_text("<x:xmpmeta/>")
    (root / "mystery.bin").write_bytes(b"\x00" * 64)
    os.symlink(root, root / "2024" / "loop")  # a symlink loop back to the top
    return root


def rel(paths, root):
    return sorted(str(Path(p).relative_to(root)) for p in paths)


def test_recursive_walk_by_content_skips_hidden_and_survives_loops(tmp_path):
    root = _tree(tmp_path)
    found = rel(find_images([root]), root)
    assert found == ["2024/b.JPG", "2024/export.dat", "2024/trip/ç_日本_🌸.jpeg", "a.jpg"]


def test_no_recursive_hidden_include_exclude(tmp_path):
    root = _tree(tmp_path)
    assert rel(find_images([root], Selection(recursive=False)), root) == ["a.jpg"]
    hidden = rel(find_images([root], Selection(hidden=True)), root)
    assert ".hidden.jpg" in hidden and ".thumbnails/t.jpg" in hidden
    assert rel(find_images([root], Selection(include=["*.jpeg", "*.JPG"])), root) == ["2024/b.JPG",
                                                                                     "2024/trip/ç_日本_🌸.jpeg"]
    assert rel(find_images([root], Selection(exclude=["2024/*"])), root) == ["a.jpg"]


def test_explicit_files_always_taken_and_missing_reported(tmp_path):
    root = _tree(tmp_path)
    missing: list[str] = []
    found = list(find_images([root / "notes.txt", root / "a.jpg", root / "a.jpg", tmp_path / "nope"], missing=missing))
    assert rel(found, root) == ["a.jpg", "notes.txt"]
    assert missing == [str(tmp_path / "nope")]


def test_sniff_signatures():
    assert sniff(b"\xff\xd8\xff\xe1....") == "JPEG"
    assert sniff(b"\x89PNG\r\n\x1a\n") == "PNG"
    assert sniff(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "WEBP"
    assert sniff(b"\x00\x00\x00\x18ftypheic") == "HEIF"
    assert sniff(b"\x00\x00\x00\x1cftypavif") == "HEIF"
    assert sniff(b"II*\x00\x08\x00") == "TIFF"
    assert sniff(b"hello") is None


def test_pipes_devices_and_broken_links_are_never_opened(tmp_path):
    """A FIFO named like a photo would block a reader forever; links to devices likewise."""
    if not hasattr(os, "mkfifo"):
        import pytest

        pytest.skip("no FIFOs on this platform")
    shutil.copy(camera_photos(1)[0], tmp_path / "ok.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")
    assert list(find_images([tmp_path])) == [str(tmp_path / "ok.jpg")]
    missing: list[str] = []
    names = ["pipe.jpg", "zero.jpg", "dangling.jpg", "nothere.jpg"]
    assert list(find_images([tmp_path / n for n in names], missing=missing)) == []
    assert [unusable_reason(m) for m in missing] == [
        "not a regular file or folder (pipe, device or socket)",
        "not a regular file or folder (pipe, device or socket)",
        "broken symbolic link",
        "no such file or folder",
    ]
