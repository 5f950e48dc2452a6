"""Partitions: the authors' AVA1/AVA2 lists reproduced on the real vote counts, our seeded
ava1/ava2 splits, the standard split on the official test list, and the validation hold-out."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ava_votes import write_real_ava
from helpers import shared_path

from ilgnet_cli.ava.partition import PartitionError, ava2, holdout, make_partition, shipped_list
from ilgnet_cli.ava.records import AVARecord, read_ava, read_label_list, write_ava


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


@pytest.mark.parametrize("which", ["AVA1", "AVA2"])
def test_shipped_lists_are_the_authors_files(which):
    """The lists the package ships (scripts/package_data.py) are the authors' train/val lists."""
    for split in ("train", "val"):
        theirs = read_label_list(shared_path("ilgnet", "data", which, f"{split}.txt"))
        assert shipped_list(which, split) == theirs and len(theirs) > 1000


def test_ava1_labels_agree_with_authors_lists_on_every_shared_id(real_ava, tmp_path, cli):
    folder, records = real_ava
    result = cli("partition", "ava1", "--ava", str(folder), "--out", str(tmp_path), "--seed", "3")
    assert result.code == 0, result.output
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


def test_holdout_is_stratified_seeded_and_disjoint():
    items = [(i, int(i % 5 == 0)) for i in range(1, 1001)]  # 20% high
    train_a, val_a = holdout(items, 100, seed=3)
    train_b, val_b = holdout(items, 100, seed=3)
    assert val_a == val_b and train_a == train_b  # seeded
    assert len(val_a) == 100 and sum(label for _, label in val_a) == 20  # stratified
    assert not {i for i, _ in val_a} & {i for i, _ in train_a} and len(train_a) + len(val_a) == 1000
    assert holdout(items, 100, seed=4)[1] != val_a


def test_standard_partition_without_ava_folder_or_test_list_is_one_line_error(tmp_path):
    """With only ava_file, the default test list was looked up as None / "aesthetics_image_lists"
    (a TypeError traceback, found by mypy); it needs the AVA folder or test_list."""
    ava_txt = tmp_path / "AVA.txt"
    ava_txt.write_text("1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n")
    with pytest.raises(PartitionError, match="test list"):
        make_partition("standard", None, tmp_path / "out", ava_file=ava_txt)
