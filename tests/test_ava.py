"""AVA metadata, partitions (on real vote counts) and the dataset download/import paths."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from ava_votes import write_real_ava
from conftest import camera_photos, shared_path
from typer.testing import CliRunner

from ilgnet_cli.ava.download import UnsafeArchiveError, download_ava, extract_archive
from ilgnet_cli.ava.partition import ava2, make_partition
from ilgnet_cli.ava.records import AVAFormatError, AVARecord, PartitionDataset, read_ava, read_label_list, write_ava
from ilgnet_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def real_ava(tmp_path_factory):
    """DIR/AVA.txt built from the 48,604 real vote counts in ../shared/ava/votes."""
    folder = tmp_path_factory.mktemp("ava")
    records = write_real_ava(shared_path("ava", "votes"), folder / "AVA.txt")
    return folder, records


def authors_labels(which: str) -> dict[int, int]:
    labels: dict[int, int] = {}
    for split in ("train", "val"):
        labels.update(read_label_list(shared_path("ilgnet", "data", which, f"{split}.txt")))
    return labels


def test_ava1_labels_agree_with_authors_lists_on_every_shared_id(real_ava, tmp_path):
    folder, records = real_ava
    result = runner.invoke(app, ["partition", "ava1", "--ava", str(folder), "--out", str(tmp_path), "--seed", "3"])
    assert result.exit_code == 0, result.output
    ours = dict(read_label_list(tmp_path / "train.txt") + read_label_list(tmp_path / "test.txt"))
    assert len(ours) == len(records) == 48_604
    authors = authors_labels("AVA1")
    shared = [i for i in ours if i in authors]
    assert len(shared) == 48_604
    assert all(ours[i] == authors[i] for i in shared)
    summary = json.loads((tmp_path / "partition.json").read_text())
    assert summary["test"]["total"] == 20_000 and summary["seed"] == 3
    assert len(summary["inputs_sha256"]["AVA.txt"]) == 64


def test_ava1_is_seeded_and_delta_drops_only_training_images(real_ava, tmp_path):
    folder, records = real_ava
    a = make_partition("ava1", folder, tmp_path / "a", seed=1)
    b = make_partition("ava1", folder, tmp_path / "b", seed=1)
    c = make_partition("ava1", folder, tmp_path / "c", seed=2)
    assert a.test == b.test and a.train == b.train and a.test != c.test
    d = make_partition("ava1", folder, tmp_path / "d", seed=1, delta=0.5)
    assert d.test == a.test
    dropped = next(iter(d.excluded.values()))
    assert len(d.train) + len(dropped) == len(a.train)
    assert all(abs(records[i].mean - 5) < 0.5 for i in dropped)
    assert all(abs(records[i].mean - 5) >= 0.5 for i, _ in d.train)


def test_authors_partitions_reproduce_their_counts(real_ava, tmp_path):
    folder, _ = real_ava
    lists = shared_path("ilgnet", "data")
    p1 = make_partition("ilgnet-ava1", folder, tmp_path / "1", lists_dir=lists)
    s1 = json.loads((tmp_path / "1" / "partition.json").read_text())
    assert s1["test"]["per_class"] == {"0": 4000, "1": 16000}
    assert s1["train"]["per_class"] == {"0": 70673, "1": 164856}
    assert s1["test_majority_baseline"] == 0.8
    assert "labels that disagree with mean > 5 on AVA.txt: 0" in p1.notes
    # Our AVA.txt has only the 48,604 ids with public votes: the rest are reported missing.
    assert s1["missing"]["count"] == 255_529 - 48_604
    make_partition("ilgnet-ava2", None, tmp_path / "2", lists_dir=lists)
    s2 = json.loads((tmp_path / "2" / "partition.json").read_text())
    assert s2["train"]["total"] == 25_553 and s2["test"]["total"] == 25_553
    assert s2["test"]["per_class"] == {"0": 12831, "1": 12722}
    assert (tmp_path / "2" / "test.txt").read_text().splitlines()[0].endswith((".jpg 0", ".jpg 1"))


@pytest.mark.slow
def test_ava2_top_and_bottom_ten_percent_on_full_size_ava(tmp_path):
    rng = np.random.default_rng(0)
    votes = rng.multinomial(200, [0.01, 0.02, 0.05, 0.12, 0.25, 0.25, 0.15, 0.09, 0.04, 0.02], size=255_530)
    records = [AVARecord(i + 1, tuple(int(v) for v in row)) for i, row in enumerate(votes)]
    write_ava(tmp_path / "AVA.txt", records)
    ava = read_ava(tmp_path / "AVA.txt")
    part = ava2(ava, seed=0)
    labelled = part.train + part.test
    assert sum(1 for _, label in labelled if label == 1) == 25_553
    assert sum(1 for _, label in labelled if label == 0) == 25_553
    assert len(part.train) == len(part.test) == 25_553
    means = {i: ava.records[i].mean for i, _ in labelled}
    assert max(means[i] for i, lab in labelled if lab == 0) <= min(means[i] for i, lab in labelled if lab == 1)
    assert any("images tie" in n for n in part.notes)  # vote means tie a lot; reported
    again = ava2(ava, seed=0)
    assert again.train == part.train


def test_standard_split_uses_the_official_test_list(real_ava, tmp_path):
    folder, records = real_ava
    jpgl = shared_path("ava", "aesthetics_image_lists", "generic_test.jpgl")
    part = make_partition("standard", folder, tmp_path, test_list=jpgl)
    listed = [int(x) for x in jpgl.read_text().split()]
    assert len(listed) == 20_000
    assert len(part.test) + len(part.missing) == 20_000
    assert {i for i, _ in part.test} == set(listed) & set(records)
    assert not {i for i, _ in part.train} & set(listed)
    assert len(part.train) + len(part.test) == len(records)


@pytest.mark.parametrize("line,message", [
    ("1 12 1 2 3 4 5 6 7 8 9\n", "line 2: expected 15 columns, found 11"),
    ("1 12 1 2 x 4 5 6 7 8 9 10 0 0 7\n", "line 2: non-numeric value 'x'"),
    ("1 12 0 0 0 0 0 0 0 0 0 0 1 2 3\n", "line 2: image 12 has zero votes"),
])
def test_malformed_ava_lines(tmp_path, line, message):
    path = tmp_path / "AVA.txt"
    more = "".join(f"{n} {n + 10} 1 1 1 1 {n} 1 1 1 1 1 0 0 4\n" for n in range(3, 23))
    path.write_text("1 11 0 1 2 3 4 5 6 7 8 9 1 2 3\n" + line + more)
    with pytest.raises(AVAFormatError, match=message):
        read_ava(path, strict=True)
    data = read_ava(path)
    assert sorted(data.records) == [11, *range(13, 33)]
    assert data.skipped == [f"AVA.txt {message}"]
    part_dir = tmp_path / "p"
    result = runner.invoke(app, ["partition", "ava2", "--ava", str(tmp_path), "--out", str(part_dir)])
    assert result.exit_code == 0, result.output
    assert "malformed line(s) skipped" in json.loads((part_dir / "partition.json").read_text())["notes"][-1]


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


def test_unsafe_zip_is_refused_without_writing_anything(tmp_path):
    archive = tmp_path / "evil.zip"
    _evil_zip(archive)
    dest = tmp_path / "sub" / "AVA"
    with pytest.raises(UnsafeArchiveError, match="escaping|absolute"):
        extract_archive(archive, dest)
    assert not (tmp_path / "sub" / "evil.txt").exists() and not Path("/tmp/ilgnet-absolute-evil.txt").exists()
    assert not any(dest.rglob("*"))
    result = runner.invoke(app, ["download", "ava", "--dest", str(dest), "--from", str(archive)])
    assert result.exit_code == 1 and "archive member" in result.output


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
def test_import_existing_copy(tmp_path, kind):
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
    result = runner.invoke(app, ["download", "ava", "--dest", str(dest), "--from", str(given), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["present"] == 3 and summary["missing"] == 0 and summary["corrupt"] == 0
    assert sorted(p.name for p in (dest / "images").iterdir()) == ["7.jpg", "8.jpg", "9.jpg"]
    if kind == "folder":  # hard-linked, the user's copy untouched
        assert (src / "AVA_dataset" / "images" / "7.jpg").exists()
        assert (dest / "images" / "7.jpg").stat().st_ino == (src / "AVA_dataset" / "images" / "7.jpg").stat().st_ino
    assert not (dest / ".extract").exists() or not any((dest / ".extract").iterdir())


def test_partition_dataset_yields_model_inputs(tmp_path):
    ids = [7, 8, 9]
    _payload_tree(tmp_path, ids)
    images = tmp_path / "AVA_dataset" / "images"
    (tmp_path / "train.txt").write_text("7.jpg 1\n8.jpg 0\n9.jpg 1")
    ds = PartitionDataset(tmp_path / "train.txt", images, (91.0, 99.0, 107.0), train=True, seed=5)
    x, y = ds[0]
    assert tuple(x.shape) == (3, 227, 227) and y == 1 and len(ds) == 3
    assert (ds[0][0] == x).all()  # same epoch, same crop
    ds.set_epoch(1)
    assert any(not (ds[i][0] == PartitionDataset(tmp_path / "train.txt", images, (91.0, 99.0, 107.0),
                                                   train=True, seed=5)[i][0]).all() for i in range(3))
    test = PartitionDataset(tmp_path / "train.txt", images, (91.0, 99.0, 107.0))
    assert (test[1][0] == test[1][0]).all() and test[1][1] == 0


def test_shipped_manifests_load_and_are_marked_unverified():
    from ilgnet_cli.ava.download import Manifest, manifest_help, shipped_manifests

    known = shipped_manifests()
    assert {"hf-sxfly", "hf-iceclear", "hf-will33am"} <= set(known)
    for path in known.values():
        m = Manifest.load(path)
        assert m.files and all(f.urls for f in m.files) and not m.verified
        assert any(f.archive for f in m.files) and any(f.target == "AVA.txt" for f in m.files)
    assert "hf-sxfly (unverified)" in manifest_help()
    assert "unverified" in runner.invoke(app, ["download", "ava", "--help"]).output
