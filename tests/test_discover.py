"""Finding the photos under what a user named: recursive walks by content (not only by name),
hidden files, include/exclude globs, symlink loops, deep trees, pipes and devices never opened,
and this run's own outputs never taken as inputs."""

from __future__ import annotations

import inspect
import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers import camera_photos

from ilgnet_cli.photos.discover import EXPORT_MANIFEST, Selection, find_images, unusable_reason
from ilgnet_cli.runtime.formats import holds_image, image_reason, sniff


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
    assert sniff(b"GIF89a") == "GIF" and sniff(b"BM" + b"\0" * 16) == "BMP"


def test_holds_image_and_image_reason_read_content_never_a_fifo(tmp_path):
    shutil.copy(camera_photos(1)[0], tmp_path / "photo.dat")
    (tmp_path / "notes.txt").write_text("hello")
    os.mkfifo(tmp_path / "pipe.jpg.fifo")
    assert holds_image(tmp_path / "photo.dat") and not holds_image(tmp_path / "notes.txt")
    assert not holds_image(tmp_path / "pipe.jpg.fifo") and not holds_image(tmp_path / "absent")
    assert image_reason(tmp_path / "photo.dat") == "it is an image"
    assert image_reason(tmp_path / "x.NEF") == "it is named like an image (.NEF)"
    assert image_reason(tmp_path / "notes.txt") is None


def test_pipes_devices_and_broken_links_are_never_opened(tmp_path):
    """A FIFO named like a photo would block a reader forever; links to devices likewise."""
    if not hasattr(os, "mkfifo"):
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


# --------------------------------------------------------------------------- this run's outputs and earlier exports


def _outputs_tree(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    root.mkdir()
    jpg = camera_photos(1)[0]
    for name in ("a.jpg", "b.jpg"):
        shutil.copy2(jpg, root / name)
    (root / "best").mkdir()
    shutil.copy2(jpg, root / "best" / "001_a.jpg")
    shutil.copy2(jpg, root / "report.jpg")  # an -o report given an image extension
    return root


def test_discovery_skips_export_folders_and_the_report_file(tmp_path):
    root = _outputs_tree(tmp_path)
    sel = Selection(skip=[str(root / "best"), str(root / "report.jpg"), str(tmp_path / "not-there")])
    found = sorted(os.path.relpath(p, root) for p in find_images([root], sel))
    assert found == ["a.jpg", "b.jpg"]


def test_discovery_skip_matches_the_folder_however_it_is_spelled(tmp_path, monkeypatch):
    root = _outputs_tree(tmp_path)
    os.symlink(root / "best", root / "alias")  # the same folder under another name
    monkeypatch.chdir(tmp_path)
    found = sorted(os.path.relpath(p, root) for p in find_images([root], Selection(skip=["photos/best"])))
    assert found == ["a.jpg", "b.jpg", "report.jpg"]


def test_export_folders_of_earlier_runs_are_not_walked(tmp_path):
    """--copy-top leaves its manifest in the folder: a later run over the tree that holds it does
    not score the copies (they would fill the ranking twice); named on its own, it is scored."""
    root = _outputs_tree(tmp_path)
    (root / "best" / EXPORT_MANIFEST).write_text('{"files": {}}')
    assert sorted(os.path.relpath(p, root) for p in find_images([root])) == ["a.jpg", "b.jpg", "report.jpg"]
    assert [os.path.relpath(p, root) for p in find_images([root / "best"])] == ["best/001_a.jpg"]


def test_any_depth_of_folders_is_walked(tmp_path):
    """The walk is iterative: a recursive one ended in RecursionError on deep trees. Here the tree
    is 300 deep and the recursion limit 100 frames above the test's own (a tree deeper than the
    real limit could not even be removed by pytest's clean-up, which recurses)."""
    deep = tmp_path / "top"
    folder = deep
    for _ in range(300):
        folder = folder / "d"
    folder.mkdir(parents=True)
    shutil.copy(camera_photos(1)[0], folder / "deep.jpg")
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + 100)
    try:
        found = list(find_images([deep]))
    finally:
        sys.setrecursionlimit(limit)
    assert [Path(p).name for p in found] == ["deep.jpg"]


def test_a_folder_deeper_than_path_max_is_reported_not_left_out(tmp_path):
    """Beyond PATH_MAX no path names the folder: its photos cannot be read, and must show up as
    such (the walk left them out silently). Long names keep the tree shallow enough to remove."""
    name = "d" * 200
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for _ in range(os.pathconf(tmp_path, "PC_PATH_MAX") // len(name) + 2):
            os.mkdir(name, dir_fd=fd)
            deeper = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
        photo = os.open("deep.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(photo, camera_photos(1)[0].read_bytes())
        os.close(photo)
    finally:
        os.close(fd)
    missing: list[str] = []
    assert list(find_images([tmp_path], missing=missing)) == []
    assert len(missing) == 1 and missing[0].startswith(str(tmp_path))
    assert "too long" in unusable_reason(missing[0])
