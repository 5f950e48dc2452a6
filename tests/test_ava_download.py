"""`ilgnet download ava`: fetching from mirrors (resume, fallback, checksums), importing a copy
the user has (folder, zip, tar.gz, 7z volumes), the shipped manifests, and hostile input:
manifests that aim outside DEST, planted symlinks, archive bombs, malformed JSON (fuzzed) and odd
image names. Every refusal is one AVADownloadError line, decided before anything is written where
it should not be."""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import tarfile
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest
from helpers import camera_photos
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ilgnet_cli.ava import download as ava_download
from ilgnet_cli.ava.download import (
    AVADownloadError,
    Manifest,
    Report,
    UnsafeArchiveError,
    download_ava,
    extract_archive,
    import_from,
    plan_files,
)
from ilgnet_cli.ava.records import AVARecord, write_ava
from ilgnet_cli.runtime.download import DownloadError

AVA_LINE = "1 {id} 0 0 1 2 5 9 5 2 1 0 0 0 0\n"


# --------------------------------------------------------------------------- download / import


def _mini_ava(folder: Path, n: int = 5) -> list[int]:
    ids = [1000 + i for i in range(n)]
    write_ava(folder / "AVA.txt", [AVARecord(i, (0, 0, 1, 2, 5, 9, 5, 2, 1, i % 3)) for i in ids])
    return ids


def _mirror(server, tmp_path: Path, ids: list[int]) -> Path:
    """A local AVA-format mirror; one image only on the mirror, one dropped mid-file, one corrupt."""
    meta = tmp_path / "mirror-meta"
    meta.mkdir()
    _mini_ava(meta, len(ids))
    server.add("/meta/AVA.txt", data=(meta / "AVA.txt").read_bytes())
    photos = camera_photos(len(ids))
    for i, (image_id, photo) in enumerate(zip(ids, photos, strict=True)):
        data = photo.read_bytes()
        if i == 0:
            server.add(f"/primary/{image_id}.jpg", status=404)
        elif i == 1:
            server.add(f"/primary/{image_id}.jpg", data=data, drop_after=20_000, drop_times=1)
        elif i == 2:
            data = data[:2000]  # corrupt: truncated JPEG
            server.add(f"/primary/{image_id}.jpg", data=data)
        else:
            server.add(f"/primary/{image_id}.jpg", data=data)
        server.add(f"/mirror/{image_id}.jpg", data=data)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({
        "name": "local-test", "verified": True,
        "files": [{"name": "AVA.txt", "urls": [server.url("/meta/AVA.txt")], "target": "AVA.txt"}],
        "images": {"urls": [server.url("/primary/{id}.jpg"), server.url("/mirror/{id}.jpg")]},
    }))
    return manifest


def test_download_from_local_mirror_resumes_falls_back_and_verifies(server, tmp_path):
    ids = [1000 + i for i in range(5)]
    manifest = _mirror(server, tmp_path, ids)
    dest = tmp_path / "AVA"
    report = download_ava(dest, manifest=manifest, jobs=2, backoff=0)
    assert report.listed == 5 and report.present == 5 and report.downloaded == 5
    assert report.corrupt == [ids[2]]
    assert (dest / "corrupt.txt").read_text().split() == [str(ids[2])]
    assert (dest / "missing.txt").read_text() == ""
    assert len(server.routes[f"/mirror/{ids[0]}.jpg"].requests) == 1  # 404 -> mirror
    dropped = server.routes[f"/primary/{ids[1]}.jpg"].requests
    assert len(dropped) == 2 and dropped[1]["range"] is not None  # resumed with Range
    assert (dest / "images" / f"{ids[1]}.jpg").read_bytes() == camera_photos(5)[1].read_bytes()
    assert not list(dest.rglob("*.part"))
    # Idempotent: a second run downloads nothing.
    before = sum(len(r.requests) for r in server.routes.values())
    again = download_ava(dest, manifest=manifest, jobs=2, backoff=0)
    assert again.downloaded == 0 and sum(len(r.requests) for r in server.routes.values()) == before


def test_checksum_mismatch_rejected_and_listed_missing(server, tmp_path):
    ids = [1000 + i for i in range(5)]
    manifest = _mirror(server, tmp_path, ids)
    spec = json.loads(manifest.read_text())
    spec["images"]["checksums"] = {str(ids[3]): "0" * 64}
    manifest.write_text(json.dumps(spec))
    report = download_ava(tmp_path / "AVA", manifest=manifest, jobs=1, backoff=0, retries=0)
    assert report.missing == [ids[3]] and any("checksum mismatch" in f for f in report.failures)
    assert not (tmp_path / "AVA" / "images" / f"{ids[3]}.jpg").exists()


def _evil_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("AVA.txt", "1 1 0 0 0 0 1 0 0 0 0 0 0 0 1\n")
        zf.writestr("../evil.txt", "escaped")
        zf.writestr("/tmp/ilgnet-absolute-evil.txt", "escaped")


def test_unsafe_zip_is_refused_without_writing_anything(tmp_path, cli):
    archive = tmp_path / "evil.zip"
    _evil_zip(archive)
    dest = tmp_path / "sub" / "AVA"
    with pytest.raises(UnsafeArchiveError, match="escaping|absolute"):
        extract_archive(archive, dest)
    assert not (tmp_path / "sub" / "evil.txt").exists() and not Path("/tmp/ilgnet-absolute-evil.txt").exists()
    assert not any(dest.rglob("*"))
    result = cli("download", "ava", "--dest", str(dest), "--from", str(archive))
    assert result.code == 1 and "archive member" in result.output


def test_unsafe_tar_symlink_is_refused(tmp_path):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("images/link.jpg")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError, match="not a plain file"):
        extract_archive(archive, tmp_path / "out")


def _payload_tree(folder: Path, ids: list[int]) -> None:
    (folder / "AVA_dataset" / "images").mkdir(parents=True)
    write_ava(folder / "AVA_dataset" / "AVA.txt", [AVARecord(i, (0, 0, 1, 2, 5, 9, 5, 2, 1, 0)) for i in ids])
    for image_id, photo in zip(ids, camera_photos(len(ids)), strict=True):
        shutil.copy2(photo, folder / "AVA_dataset" / "images" / f"{image_id}.jpg")


@pytest.mark.parametrize("kind", ["folder", "zip", "tar.gz", "7z-volumes"])
def test_import_existing_copy(tmp_path, kind, cli):
    ids = [7, 8, 9]
    src = tmp_path / "src"
    _payload_tree(src, ids)
    if kind == "folder":
        given = src
    elif kind == "zip":
        given = tmp_path / "AVA.zip"
        shutil.make_archive(str(given.with_suffix("")), "zip", src)
    elif kind == "tar.gz":
        given = tmp_path / "AVA.tar.gz"
        with tarfile.open(given, "w:gz") as tf:
            tf.add(src / "AVA_dataset", arcname="AVA_dataset")
    else:
        import py7zr

        whole = io.BytesIO()
        with py7zr.SevenZipFile(whole, "w") as z:
            z.writeall(src / "AVA_dataset", arcname="AVA_dataset")
        data = whole.getvalue()
        step = len(data) // 3 + 1
        for n in range(3):
            (tmp_path / f"AVA_dataset.7z.{n + 1:03d}").write_bytes(data[n * step:(n + 1) * step])
        given = tmp_path / "AVA_dataset.7z.001"
    dest = tmp_path / "AVA"
    result = cli("download", "ava", "--dest", str(dest), "--from", str(given), "--json")
    assert result.code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["present"] == 3 and summary["missing"] == 0 and summary["corrupt"] == 0
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["7.jpg", "8.jpg", "9.jpg"]
    if kind == "folder":  # hard-linked, the user's copy untouched
        assert (src / "AVA_dataset" / "images" / "7.jpg").exists()
        assert (dest / "images" / "7.jpg").stat().st_ino == (src / "AVA_dataset" / "images" / "7.jpg").stat().st_ino
    assert not (dest / ".extract").exists() or not any((dest / ".extract").iterdir())


def test_shipped_manifests_load_and_are_marked_unverified(cli):
    from ilgnet_cli.ava.download import manifest_help, shipped_manifests

    known = shipped_manifests()
    assert {"hf-sxfly", "hf-iceclear", "hf-will33am"} <= set(known)
    for path in known.values():
        m = Manifest.load(path)
        assert m.files and all(f.urls for f in m.files) and not m.verified
        assert any(f.archive for f in m.files) and any(f.target == "AVA.txt" for f in m.files)
    assert "hf-sxfly (unverified)" in manifest_help()
    assert "unverified" in cli("download", "ava", "--help").output


# --------------------------------------------------------------------------- hostile input


def _manifest(tmp_path: Path, spec: dict) -> Path:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(spec))
    return path


def _requests(server) -> int:
    return sum(len(r.requests) for r in server.routes.values())


# --------------------------------------------------------------------------- A: confinement under DEST


@pytest.mark.parametrize("entry", [
    {"name": "x.txt", "target": "/tmp/ilgnet-hostile-abs.txt"},
    {"name": "x.txt", "target": "../../ilgnet-hostile-up.txt"},
    {"name": "x.txt", "target": "images/../../ilgnet-hostile-up.txt"},
    {"name": "../../ilgnet-hostile-name.txt"},
    {"name": "../ilgnet-hostile.zip", "archive": "zip"},
    {"name": "/tmp/ilgnet-hostile-absname.txt"},
    {"name": "x.txt", "target": ""},
    {"name": "x.txt", "target": "."},
    {"name": "..", "archive": "zip"},
    {"name": "x.txt", "target": "C:\\evil.txt"},
    {"name": "x.txt", "target": "a\u0000b"},
])
def test_manifest_names_and_targets_outside_dest_are_refused_before_downloading(server, tmp_path, entry):
    server.add("/f", data=b"payload")
    dest = tmp_path / "a" / "b" / "AVA"
    manifest = _manifest(tmp_path, {"name": "evil", "files": [{"urls": [server.url("/f")], **entry}]})
    with pytest.raises(AVADownloadError) as info:
        download_ava(dest, manifest=manifest, backoff=0, retries=0)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300
    assert _requests(server) == 0
    for where in (tmp_path, tmp_path / "a", Path("/tmp")):
        assert not list(where.glob("ilgnet-hostile*"))


def test_archive_entry_cannot_overwrite_a_file_outside_dest(server, tmp_path, cli):
    victim = tmp_path / "victim.zip"
    victim.write_bytes(b"precious")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("AVA.txt", AVA_LINE.format(id=1))
    server.add("/a.zip", data=buf.getvalue())
    manifest = _manifest(tmp_path, {"name": "evil", "files": [
        {"name": "../../victim.zip", "urls": [server.url("/a.zip")], "archive": "zip"}]})
    result = cli("download", "ava", "--dest", str(tmp_path / "d" / "AVA"), "--manifest", str(manifest))
    assert result.code != 0
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    assert victim.read_bytes() == b"precious" and _requests(server) == 0


def test_target_through_a_symlinked_folder_in_dest_is_refused(server, tmp_path):
    server.add("/f", data=b"payload")
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "AVA"
    dest.mkdir()
    (dest / "aesthetics_image_lists").symlink_to(outside)
    manifest = _manifest(tmp_path, {"name": "evil", "files": [
        {"name": "x.jpgl", "urls": [server.url("/f")], "target": "aesthetics_image_lists/x.jpgl"}]})
    with pytest.raises(AVADownloadError, match="outside"):
        download_ava(dest, manifest=manifest, backoff=0, retries=0)
    assert not any(outside.iterdir()) and _requests(server) == 0


# --------------------------------------------------------------------------- B: temp files and planted links


def _plant_links(folder: Path, name: str, victim: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for planted in (f".{name}.tmp", f"{name}.tmp", f".{name}.part", f"{name}.part", f".{name}.tmp.part"):
        (folder / planted).symlink_to(victim)


@pytest.mark.parametrize("link_fails", [False, True])
def test_import_never_writes_through_a_symlink_planted_at_a_temp_name(tmp_path, monkeypatch, link_fails):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    src = tmp_path / "src"
    src.mkdir()
    (src / "1.jpg").write_bytes(b"image one")
    (src / "AVA.txt").write_text(AVA_LINE.format(id=1))
    dest = tmp_path / "AVA"
    _plant_links(dest / "images", "1.jpg", victim)
    _plant_links(dest, "AVA.txt", victim)
    if link_fails:  # a --from folder on another file system: the copy fallback
        def no_link(*args, **kwargs):
            raise OSError(18, "Invalid cross-device link")
        monkeypatch.setattr(os, "link", no_link)
    report = Report()
    import_from(src, dest, report)
    assert victim.read_bytes() == b"precious"
    assert not (dest / "images" / "1.jpg").is_symlink() and (dest / "images" / "1.jpg").read_bytes() == b"image one"
    assert not (dest / "AVA.txt").is_symlink() and (dest / "AVA.txt").read_text() == AVA_LINE.format(id=1)
    assert report.imported == 1


def test_copied_imports_respect_the_umask(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    (src / "1.jpg").write_bytes(b"image one")
    os.chmod(src / "1.jpg", 0o600)  # the copy gets the user's umask, not the source's mode

    def no_link(*args, **kwargs):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    old = os.umask(0o022)
    try:
        import_from(src, tmp_path / "AVA", Report())
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "AVA" / "images" / "1.jpg").stat().st_mode) == 0o644


# --------------------------------------------------------------------------- C: archive size and ratio limits


def _zip(path: Path, members: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _assert_refused_cleanly(archive: Path, match: str) -> None:
    """Importing ``archive`` fails with ``match`` and leaves neither images nor the extract folder."""
    dest = archive.parent / "AVA"
    with pytest.raises(AVADownloadError, match=match):
        import_from(archive, dest, Report())
    assert not (dest / "images").exists() or not any((dest / "images").iterdir())
    assert not (dest / ".extract").exists()


def test_zip_bomb_is_refused_by_the_compression_ratio_limit(tmp_path):
    archive = _zip(tmp_path / "bomb.zip", {"AVA.txt": AVA_LINE.format(id=900003).encode(),
                                           "900003.jpg": b"\0" * (80 << 20)})
    assert archive.stat().st_size < 1 << 20
    _assert_refused_cleanly(archive, "ratio|larger than")


def test_member_over_the_size_cap_is_refused_while_streaming(tmp_path, monkeypatch):
    monkeypatch.setattr(ava_download, "MAX_MEMBER_BYTES", 1 << 20, raising=False)
    archive = _zip(tmp_path / "big.zip", {"1.jpg": os.urandom(2 << 20)}, zipfile.ZIP_STORED)
    _assert_refused_cleanly(archive, "larger than")


def test_zip_member_lying_about_its_size_is_caught_by_counting_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(ava_download, "MAX_MEMBER_BYTES", 1 << 20, raising=False)
    archive = _zip(tmp_path / "liar.zip", {"1.jpg": os.urandom(2 << 20)}, zipfile.ZIP_STORED)
    # Patch the declared (central directory) uncompressed size down to 10 bytes.
    data = bytearray(archive.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    data[cd + 24:cd + 28] = (10).to_bytes(4, "little")
    lh = data.find(b"PK\x03\x04")
    data[lh + 22:lh + 26] = (10).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    with pytest.raises(AVADownloadError):
        extract_archive(archive, tmp_path / "out")
    big = [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.stat().st_size > 1 << 20] \
        if (tmp_path / "out").exists() else []
    assert not big


def test_tar_gz_over_the_total_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ava_download, "MAX_TOTAL_BYTES", 3 << 20, raising=False)
    archive = tmp_path / "AVA.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        for i in range(4):
            data = os.urandom(1 << 20)
            info = tarfile.TarInfo(f"images/{i + 1}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    _assert_refused_cleanly(archive, "total")


def test_tar_gz_bomb_is_refused(tmp_path):
    archive = tmp_path / "AVA.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        data = b"\0" * (80 << 20)
        info = tarfile.TarInfo("900003.jpg")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    _assert_refused_cleanly(archive, "ratio|larger than")


def _seven_zip(path: Path, members: dict[str, bytes]) -> Path:
    import py7zr

    with py7zr.SevenZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(data, name)
    return path


def test_7z_member_over_the_size_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ava_download, "MAX_MEMBER_BYTES", 1 << 20, raising=False)
    archive = _seven_zip(tmp_path / "big.7z", {"1.jpg": os.urandom(2 << 20)})
    _assert_refused_cleanly(archive, "larger than")


def test_7z_with_too_many_members_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ava_download, "MAX_MEMBERS", 10, raising=False)
    archive = _seven_zip(tmp_path / "many.7z", {f"{i}.jpg": b"x" for i in range(1, 30)})
    _assert_refused_cleanly(archive, "members")


def test_refused_archive_through_the_cli_is_one_line_and_leaves_no_extract_folder(tmp_path, cli):
    archive = _zip(tmp_path / "bomb.zip", {"900003.jpg": b"\0" * (80 << 20)})
    dest = tmp_path / "AVA"
    result = cli("download", "ava", "--dest", str(dest), "--from", str(archive))
    assert result.code == 1 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (dest / ".extract").exists()


def test_unsafe_archive_refusal_removes_the_empty_extract_folder(tmp_path):
    archive = _zip(tmp_path / "evil.zip", {"../evil.txt": b"x"})
    dest = tmp_path / "AVA"
    with pytest.raises(AVADownloadError):
        import_from(archive, dest, Report())
    assert not (dest / ".extract").exists()


# --------------------------------------------------------------------------- D: malformed manifests


@pytest.mark.parametrize("spec", [
    "just a string",
    42,
    None,
    [],
    {"name": 5},
    {"files": []},
    {"name": "m", "files": {"name": "x"}},
    {"name": "m", "files": ["x"]},
    {"name": "m", "files": [{"name": "x"}]},
    {"name": "m", "files": [{"name": "x", "urls": "http://a/x"}]},
    {"name": "m", "files": [{"name": "x", "urls": [5]}]},
    {"name": "m", "files": [{"name": "x", "urls": []}]},
    {"name": "m", "files": [{"name": "x", "urls": ["http://a/x"], "size": "10"}]},
    {"name": "m", "files": [{"name": "x", "urls": ["http://a/x"], "size": -1}]},
    {"name": "m", "files": [{"name": "x", "urls": ["http://a/x"], "size": True}]},
    {"name": "m", "files": [{"name": "x", "urls": ["http://a/x"], "checksum": "nope"}]},
    {"name": "m", "files": [{"name": "x", "urls": ["http://a/x"], "checksum": 5}]},
    {"name": "m", "files": [{"name": "x", "urls": ["http://a/x"], "archive": "rar"}]},
    {"name": "m", "files": [{"name": "x", "urls": ["http://a/x"], "bogus": 1}]},
    {"name": "m", "files": [{"name": "x", "urls": ["file:///etc/passwd"]}]},
    {"name": "m", "verified": "yes"},
    {"name": "m", "unknown": 1},
    {"name": "m", "images": "http://a/{id}.jpg"},
    {"name": "m", "images": {"urls": "http://a/{id}.jpg"}},
    {"name": "m", "images": {"urls": ["http://a/{idx}.jpg"]}},
    {"name": "m", "images": {"urls": ["http://a/{0}.jpg"]}},
    {"name": "m", "images": {"urls": ["http://a/{id.__class__}.jpg"]}},
    {"name": "m", "images": {"urls": ["http://a/{id:999999999d}.jpg"]}},
    {"name": "m", "images": {"urls": ["http://a/{id.jpg"]}},
    {"name": "m", "images": {"urls": ["http://a/x.jpg"]}},
    {"name": "m", "images": {"urls": ["http://a/{id}.jpg"], "checksums": []}},
    {"name": "m", "images": {"urls": ["http://a/{id}.jpg"], "checksums": {"1": 5}}},
    {"name": "m", "images": {"urls": ["http://a/{id}.jpg"], "extra": 1}},
])
def test_malformed_manifest_is_one_line_error(tmp_path, spec):
    path = _manifest(tmp_path, spec)
    with pytest.raises(AVADownloadError) as info:
        Manifest.load(path)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_malformed_manifest_through_the_cli(tmp_path, cli):
    path = _manifest(tmp_path, {"name": "m", "images": {"urls": ["http://127.0.0.1:9/{idx}.jpg"]}})
    result = cli("download", "ava", "--dest", str(tmp_path / "AVA"), "--manifest", str(path))
    assert result.code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "idx" in result.output


def test_valid_template_with_padding_still_loads(tmp_path):
    m = Manifest.load(_manifest(tmp_path, {"name": "m", "images": {"urls": ["http://a/{id:06d}.jpg", "https://b/{id}"],
                                                                   "checksums": {"1": "a" * 64}}}))
    assert m.images["urls"][0].format(id=12) == "http://a/000012.jpg"


def test_symlinks_in_a_from_folder_are_skipped_and_reported(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    src = tmp_path / "src"
    src.mkdir()
    (src / "1.jpg").write_bytes(b"image one")
    (src / "2.jpg").symlink_to(secret)
    (src / "AVA.txt").symlink_to(secret)
    dest = tmp_path / "AVA"
    report = Report()
    import_from(src, dest, report)
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["1.jpg"]
    assert not (dest / "AVA.txt").exists()
    assert report.imported == 1 and any("2.jpg" in f and "link" in f for f in report.failures)


def test_fifo_in_a_from_folder_is_skipped_not_read(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "3.jpg")
    worker = threading.Thread(target=import_from, args=(src, tmp_path / "AVA", Report()), daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():  # blocked reading the FIFO: release it so the test run can go on
        with open(src / "3.jpg", "wb"):
            pass
        worker.join(10)
        pytest.fail("import blocked on a FIFO in the --from folder")
    assert not (tmp_path / "AVA" / "images" / "3.jpg").exists()


# --------------------------------------------------------------------------- F: image ids and reports


@pytest.mark.parametrize("name", ["\uff11\uff12\uff13.jpg", "\u0661\u0662.jpg", "9" * 200 + ".jpg", "+5.jpg",
                                  " 5.jpg"])
def test_image_names_that_are_not_plain_ascii_ids_are_not_imported(tmp_path, name):
    src = tmp_path / "src"
    src.mkdir()
    (src / name).write_bytes(b"x")
    (src / "7.jpg").write_bytes(b"seven")
    dest = tmp_path / "AVA"
    report = Report()
    import_from(src, dest, report)
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["7.jpg"] and report.imported == 1


def test_non_ascii_image_names_inside_an_archive_are_not_imported(tmp_path):
    archive = _zip(tmp_path / "a.zip", {"\uff11\uff12\uff13.jpg": b"x", "images/8.jpg": b"eight"})
    dest = tmp_path / "AVA"
    import_from(archive, dest, Report())
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["8.jpg"]


def test_reports_are_written_with_the_umask_not_0600(tmp_path, monkeypatch):
    dest = tmp_path / "AVA"
    dest.mkdir()
    write_ava(dest / "AVA.txt", [AVARecord(1, (0, 0, 1, 2, 5, 9, 5, 2, 1, 0))])
    old = os.umask(0o022)
    try:
        report = download_ava(dest, jobs=1)
    finally:
        os.umask(old)
    assert report.missing == [1]
    for name in ("missing.txt", "corrupt.txt"):
        assert stat.S_IMODE((dest / name).stat().st_mode) == 0o644, name


def test_ids_in_ava_txt_that_cannot_be_file_names_do_not_crash_image_fetching(server, tmp_path):
    dest = tmp_path / "AVA"
    dest.mkdir()
    (dest / "AVA.txt").write_text(AVA_LINE.format(id="9" * 300) + AVA_LINE.format(id=5))
    server.add("/img/5.jpg", data=b"five")
    manifest = _manifest(tmp_path, {"name": "m", "images": {"urls": [server.url("/img/{id}.jpg")]}})
    report = download_ava(dest, manifest=manifest, jobs=1, retries=0, backoff=0)
    # The 300-digit id is no AVA record at all (a malformed line, skipped and counted); the good one is fetched.
    from ilgnet_cli.ava.records import read_ava

    assert report.downloaded == 1 and len(read_ava(dest / "AVA.txt").skipped) == 1


def test_enormous_ava_txt_inside_an_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(ava_download, "MAX_MEMBER_BYTES", 1 << 20, raising=False)
    archive = _zip(tmp_path / "a.zip", {"AVA_dataset/AVA.txt": AVA_LINE.format(id=1).encode() * 60_000},
                   zipfile.ZIP_STORED)
    dest = tmp_path / "AVA"
    with pytest.raises(AVADownloadError, match="AVA.txt.*larger than"):
        import_from(archive, dest, Report())
    assert not (dest / "AVA.txt").exists()


def test_oversized_or_deeply_nested_manifest_is_one_line_error(tmp_path, monkeypatch):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(AVADownloadError, match="cannot read manifest"):
        Manifest.load(deep)
    monkeypatch.setattr(ava_download, "MAX_MANIFEST_BYTES", 1000, raising=False)
    big = _manifest(tmp_path, {"name": "m", "description": "x" * 5000})
    with pytest.raises(AVADownloadError, match="larger than"):
        Manifest.load(big)


def test_7z_volume_names_with_glob_characters_join_only_their_own_parts(tmp_path):
    import py7zr

    whole = io.BytesIO()
    with py7zr.SevenZipFile(whole, "w") as z:
        z.writestr(b"seven", "7.jpg")
    data = whole.getvalue()
    half = len(data) // 2
    (tmp_path / "[A].7z.001").write_bytes(data[:half])
    (tmp_path / "[A].7z.002").write_bytes(data[half:])
    (tmp_path / "A.7z.001").write_bytes(b"another set")  # what the unescaped glob "[A].7z.*" matches
    dest = tmp_path / "AVA"
    import_from(tmp_path / "[A].7z.001", dest, Report())
    assert (dest / "images" / "7.jpg").read_bytes() == b"seven"


def test_download_never_appends_through_a_symlink_planted_at_the_part_name(server, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious")
    server.add("/meta/AVA.txt", data=AVA_LINE.format(id=5).encode())
    server.add("/img/5.jpg", data=b"five, and longer than the victim")
    dest = tmp_path / "AVA"
    _plant_links(dest / ".downloads", "AVA.txt", victim)
    _plant_links(dest / "images", "5.jpg", victim)
    manifest = _manifest(tmp_path, {"name": "m", "files": [{"name": "AVA.txt", "urls": [server.url("/meta/AVA.txt")]}],
                                    "images": {"urls": [server.url("/img/{id}.jpg")]}})
    report = download_ava(dest, manifest=manifest, jobs=1, retries=0, backoff=0)
    assert victim.read_bytes() == b"precious"
    assert report.downloaded == 1 and (dest / "images" / "5.jpg").read_bytes() == b"five, and longer than the victim"


@pytest.mark.parametrize("zip64", [False, True])
def test_zip_with_too_many_members_is_refused_before_its_directory_is_loaded(tmp_path, monkeypatch, zip64):
    archive = tmp_path / "many.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(1, 30):
            zf.writestr(f"{i}.jpg", b"x")
    if zip64:  # the count lives in the zip64 end record when the classic one says 0xFFFF
        from ilgnet_cli.ava.download import zip_member_count

        data = bytearray(archive.read_bytes())
        eocd = data.rfind(b"PK\x05\x06")
        cd_size = int.from_bytes(data[eocd + 12:eocd + 16], "little")
        cd_offset = int.from_bytes(data[eocd + 16:eocd + 20], "little")
        record = (b"PK\x06\x06" + (44).to_bytes(8, "little") + (45).to_bytes(2, "little") * 2 + bytes(8)
                  + (29).to_bytes(8, "little") * 2 + cd_size.to_bytes(8, "little") + cd_offset.to_bytes(8, "little"))
        locator = b"PK\x06\x07" + bytes(4) + eocd.to_bytes(8, "little") + (1).to_bytes(4, "little")
        end = bytearray(data[eocd:eocd + 22])
        end[8:12] = b"\xff\xff\xff\xff"
        archive.write_bytes(bytes(data[:eocd]) + record + locator + bytes(end))
        assert zip_member_count(archive) == 29
    monkeypatch.setattr(ava_download, "MAX_MEMBERS", 10, raising=False)

    def not_opened(*args, **kwargs):
        raise AssertionError("the central directory was loaded")

    monkeypatch.setattr(zipfile, "ZipFile", not_opened)
    with pytest.raises(AVADownloadError, match="members"):
        import_from(archive, tmp_path / "AVA", Report())


@pytest.mark.parametrize("kind", ["zip", "tar.gz", "7z"])
def test_member_under_the_size_cap_that_expands_1000x_is_refused_by_the_ratio(tmp_path, kind):
    data = b"\0" * (20 << 20)  # under 64 MiB, so only the ratio can catch it
    if kind == "zip":
        archive = _zip(tmp_path / "r.zip", {"1.jpg": data})
    elif kind == "tar.gz":
        archive = tmp_path / "r.tar.gz"
        with tarfile.open(archive, "w:gz") as tf:
            info = tarfile.TarInfo("1.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    else:
        archive = _seven_zip(tmp_path / "r.7z", {"1.jpg": data})
    _assert_refused_cleanly(archive, "ratio")


def test_plain_file_of_unknown_size_is_capped_while_downloading(server, tmp_path, monkeypatch):
    monkeypatch.setattr(ava_download, "MAX_MEMBER_BYTES", 1 << 20, raising=False)
    server.add("/AVA.txt", data=AVA_LINE.format(id=1).encode() * 60_000)  # ~2.5 MB, no size in the manifest
    manifest = _manifest(tmp_path, {"name": "m", "files": [{"name": "AVA.txt", "urls": [server.url("/AVA.txt")]}]})
    dest = tmp_path / "AVA"
    with pytest.raises(DownloadError, match="AVA.txt"):
        download_ava(dest, manifest=manifest, retries=0, backoff=0)
    assert not (dest / "AVA.txt").exists()


# --------------------------------------------------------------------------- fuzzed manifests


VALID = {
    "name": "local", "description": "d", "verified": True, "note": "n",
    "files": [
        {"name": "AVA.txt", "urls": ["http://127.0.0.1:1/AVA.txt"], "target": "AVA.txt"},
        {"name": "AVA.zip", "urls": ["https://example.org/AVA.zip"], "size": 10,
         "checksum": "sha256:" + "0" * 64, "archive": "zip"},
        {"name": "generic_test.jpgl", "urls": ["http://a/g"], "target": "aesthetics_image_lists/generic_test.jpgl"},
    ],
    "images": {"urls": ["http://a/{id}.jpg", "http://b/{id:06d}.jpg"], "checksums": {"1": "a" * 64}},
}

# Strings biased towards the characters that matter here: path separators, dots, braces, NULs.
tricky = st.lists(st.sampled_from(list("./\\{}:%0 id\x00ab1\uff11") + ["..", "{id}", "http://"]),
                  max_size=12).map("".join)
scalars = st.none() | st.booleans() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=True) | tricky | st.text(
    max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10) | st.sampled_from(sorted(VALID) + ["urls", "target"]),
                                             inner, max_size=4), max_leaves=20)


def _paths(value, prefix=()):
    """Every (path, leaf) in a JSON value, so a mutation can replace any node."""
    yield prefix, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def _replace(value, path, new):
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replace(value[path[0]], path[1:], new)
    return copy


NODES = [p for p, _ in _paths(VALID)]


@st.composite
def mutated(draw):
    spec = VALID
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(NODES))
        try:
            spec = _replace(spec, path, draw(json_values))
        except (KeyError, IndexError, TypeError):  # an earlier mutation removed the node
            pass
    return spec


def _check(raw, folder: Path) -> None:
    path = folder / "m.json"
    path.write_text(json.dumps(raw, allow_nan=True))
    start = time.monotonic()
    try:
        m = Manifest.load(path)
    except AVADownloadError as exc:
        assert "\n" not in str(exc) and len(str(exc)) < 400
        return
    finally:
        assert time.monotonic() - start < 2.0
    assert isinstance(m, Manifest)
    dest = folder / "AVA"
    try:
        plan = plan_files(m, dest)
    except AVADownloadError as exc:  # e.g. a name that resolves to DEST/.downloads itself
        assert "\n" not in str(exc)
        return
    for _, download_to, target in plan:
        assert download_to.parent == (dest / ".downloads").resolve()
        assert target.is_relative_to(dest.resolve()) and target != dest.resolve()
    if m.images:
        for template in m.images["urls"]:
            assert len(template.format(id=123456)) < 10_000


def test_valid_manifest_loads():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.json"
        path.write_text(json.dumps(VALID))
        assert len(Manifest.load(path).files) == 3


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_value_is_a_manifest_or_one_line_error(raw):
    with tempfile.TemporaryDirectory() as tmp:
        _check(raw, Path(tmp))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_valid_manifest_is_a_manifest_or_one_line_error(raw):
    with tempfile.TemporaryDirectory() as tmp:
        _check(raw, Path(tmp))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_a_manifest_or_one_line_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.json"
        path.write_bytes(data)
        try:
            Manifest.load(path)
        except AVADownloadError as exc:
            assert "\n" not in str(exc)
