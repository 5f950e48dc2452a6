"""Files ilgnet writes and reads for itself: atomic writes that follow the umask (or keep the
mode of what they replace), the one check every writer makes before replacing a path (never a
link, device, FIFO, folder, or a photo), copies that never overwrite, and reads that never
block on a FIFO or trust a file's size or shape."""

from __future__ import annotations

import errno
import json
import os
import socket

import pytest

from ilgnet_cli.errors import UsageError
from ilgnet_cli.runtime import fsutil
from ilgnet_cli.runtime.fsutil import (
    OutputRefused,
    UnreadableFile,
    atomic_write_bytes,
    atomic_write_text,
    check_output_file,
    check_target,
    check_writable_folder,
    copy_new,
    current_umask,
    db_text,
    read_json_object,
    read_regular,
)


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------- atomic writes and modes


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_follow_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    assert current_umask() == mask  # read without changing it
    atomic_write_text(tmp_path / "r.csv", "x\n")
    assert (tmp_path / "r.csv").stat().st_mode & 0o7777 == mode and (tmp_path / "r.csv").read_text() == "x\n"
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("existing", [0o644, 0o640, 0o600, 0o664])
def test_replacing_a_file_keeps_its_mode(tmp_path, umask, existing):
    umask(0o077)
    path = tmp_path / "IMG_0001.xmp"
    path.write_text("old")
    path.chmod(existing)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and path.stat().st_mode & 0o7777 == existing


def test_a_symlink_at_the_target_is_refused_never_replaced_or_followed(tmp_path):
    """ilgnet 0.2 replaced the link itself; an output path that is a link (``-o /dev/stdout``, a
    link planted in a shared folder) is now refused before anything is written."""
    target = tmp_path / "target.txt"
    target.write_text("keep")
    link = tmp_path / "report.csv"
    os.symlink(target, link)
    with pytest.raises(OutputRefused, match="symbolic link") as info:
        atomic_write_text(link, "new")
    assert "\n" not in str(info.value) and isinstance(info.value, UsageError)
    assert target.read_text() == "keep" and link.is_symlink() and _leftovers(tmp_path) == []


def test_a_failed_write_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: full(fd, b""))
    with pytest.raises(OSError) as info:
        atomic_write_bytes(tmp_path / "r.json", b"{}")
    assert info.value.filename == str(tmp_path / "r.json")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- what may be replaced


def test_check_target_takes_nothing_or_a_regular_file(tmp_path):
    check_target(tmp_path / "absent.csv")
    (tmp_path / "old.csv").write_text("a")
    check_target(tmp_path / "old.csv")
    refused = {"folder": tmp_path / "sub", "FIFO": tmp_path / "pipe.csv", "device": "/dev/null",
               "symbolic link": tmp_path / "link.csv", "socket": tmp_path / "s.sock"}
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "pipe.csv")
    os.symlink(tmp_path / "old.csv", tmp_path / "link.csv")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "s.sock"))
        for what, path in refused.items():
            with pytest.raises(OutputRefused, match=f"it is a {what}"):
                check_target(path)
            with pytest.raises(OutputRefused):
                check_output_file(path)


def test_a_photo_is_never_written_over_by_name_or_by_content(tmp_path):
    (tmp_path / "IMG_0001.CR2").write_bytes(b"raw bytes")
    (tmp_path / "scores.dat").write_bytes(b"\xff\xd8\xff\xe0 a JPEG by its signature")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputRefused, match=r"named like an image \(\.CR2\)"):
        check_target(tmp_path / "IMG_0001.CR2")
    with pytest.raises(OutputRefused, match="it is an image"):
        atomic_write_text(tmp_path / "scores.dat", "rank,score\n")
    assert (tmp_path / "scores.dat").read_bytes().startswith(b"\xff\xd8")
    check_target(tmp_path / "notes.txt")
    check_target(tmp_path / "IMG_0001.CR2", image_ok=True)  # e.g. copying a photo on purpose


@pytest.mark.parametrize("head", [
    b"FUJIFILMCCD-RAW 0201FF383501",  # RAF
    b"IIRO\x08\x00\x00\x00", b"IIRS\x08\x00\x00\x00", b"MMOR\x00\x00\x00\x08",  # ORF
    b"IIU\x00\x08\x00\x00\x00",  # RW2
    b"FOVb\x00\x00\x00\x00",  # X3F
    b"\x00MRM\x00\x00\x00\x00",  # MRW
    b"II\x1a\x00\x00\x00HEAPCCDR",  # CRW
    b"\x00\x00\x00\x18ftypcrx \x00\x00\x00\x01",  # CR3
    b"\x00\x00\x00\x18ftypMSF1\x00\x00\x00\x00",  # a HEIF brand sniff() does not decode
    b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00",  # a video
])
def test_a_raw_known_only_by_its_content_is_never_written_over(tmp_path, head):
    raw = tmp_path / "report.csv"  # a RAW renamed, or a name the user happened to give
    raw.write_bytes(head + os.urandom(2000))
    before = raw.read_bytes()
    with pytest.raises(OutputRefused, match="it is an image"):
        atomic_write_text(raw, "rank,score\n")
    assert raw.read_bytes() == before


def test_outputs_are_checked_before_long_work(tmp_path):
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    with pytest.raises(UsageError, match="it is a folder|folder"):
        check_output_file(tmp_path)
    with pytest.raises(UsageError, match="cannot write"):
        check_output_file(a_file / "report.json")
    with pytest.raises(UsageError, match="a file of that name exists"):
        check_writable_folder(a_file)
    with pytest.raises(UsageError, match="cannot use"):
        check_writable_folder(a_file / "sub")
    check_output_file(tmp_path / "new" / "deep" / "r.csv")  # the folders it needs are made
    assert (tmp_path / "new" / "deep").is_dir() and not (tmp_path / "new" / "deep" / "r.csv").exists()
    assert a_file.read_text() == "x"


# --------------------------------------------------------------------------- copies


@pytest.mark.parametrize(("source", "mask", "mode"), [(0o666, 0o022, 0o644), (0o777, 0o027, 0o750),
                                                      (0o600, 0o022, 0o600), (0o4755, 0o022, 0o755)])
def test_copies_keep_the_source_mode_within_the_umask(tmp_path, umask, source, mask, mode):
    """A world-writable (or setuid) photo in someone else's tree must not become a file others
    can change (or run as us): the mode is the source's, as cp makes it, times kept."""
    src = tmp_path / "a.jpg"
    src.write_bytes(b"photo bytes")
    src.chmod(source)
    os.utime(src, ns=(1_000_000_000, 2_000_000_000))
    umask(mask)
    copy_new(src, tmp_path / "b.jpg")
    st = (tmp_path / "b.jpg").stat()
    assert st.st_mode & 0o7777 == mode and st.st_mtime_ns == 2_000_000_000
    assert (tmp_path / "b.jpg").read_bytes() == b"photo bytes" and _leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["hard link", "rename without replacing", "exclusive create"])
def test_copy_never_overwrites_anything_at_the_name(tmp_path, monkeypatch, how):
    """A copy appears under its name in one step that fails if anything is there: a hard link;
    without hard links (FAT, some shares) renameat2(RENAME_NOREPLACE); else an O_EXCL create."""
    if how != "hard link":
        def no_links(*args, **kwargs):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(fsutil.os, "link", no_links)
    if how == "exclusive create":
        monkeypatch.setattr(fsutil, "rename_noreplace", lambda src, dst: False)
    src = tmp_path / "a.jpg"
    src.write_bytes(b"photo")
    (tmp_path / "taken.jpg").write_text("mine")
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.jpg")
    for name in ("taken.jpg", "dangling.jpg"):
        with pytest.raises(FileExistsError):
            copy_new(src, tmp_path / name)
    assert (tmp_path / "taken.jpg").read_text() == "mine" and not (tmp_path / "nowhere").exists()
    copy_new(src, tmp_path / "free.jpg")
    assert (tmp_path / "free.jpg").read_bytes() == b"photo" and _leftovers(tmp_path) == []


# --------------------------------------------------------------------------- reading our own files


def test_read_regular_never_blocks_and_never_reads_past_its_limit(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_regular(tmp_path / "absent", 10)
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(UnreadableFile, match="not a regular file"):
        read_regular(tmp_path / "fifo", 10)  # a reader of a FIFO would wait for a writer forever
    (tmp_path / "big").write_bytes(b"x" * 11)
    with pytest.raises(UnreadableFile, match="11 bytes"):
        read_regular(tmp_path / "big", 10)
    assert read_regular(tmp_path / "big", 11) == b"x" * 11
    with pytest.raises(UnreadableFile):
        read_regular(tmp_path, 10)  # a folder


@pytest.mark.parametrize(("content", "match"), [(b"[1, 2]", "not a JSON object"), (b"{", "not valid JSON"),
                                                 (b"\xff\xfe", "not valid JSON"), (b"[" * 100_000, "not valid JSON"),
                                                 (b'{"a": ' * 50_000, "not valid JSON")])
def test_read_json_object_refuses_what_is_not_a_small_json_object(tmp_path, content, match):
    path = tmp_path / "config.json"
    path.write_bytes(content)
    with pytest.raises(UnreadableFile, match=match) as info:
        read_json_object(path)
    assert "\n" not in str(info.value)
    path.write_text(json.dumps({"default": "mine"}))
    assert read_json_object(path) == {"default": "mine"}
    with pytest.raises(UnreadableFile):
        read_json_object(path, limit=5)


def test_paths_as_sqlite_keys():
    assert db_text("/photos/a.jpg") == "/photos/a.jpg"
    assert db_text("/photos/caf\udce9.jpg") == b"/photos/caf\xe9.jpg"  # its exact bytes, as a BLOB
