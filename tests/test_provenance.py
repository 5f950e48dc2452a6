"""What weights were trained on (ilgnet_cli.model.provenance) and the evaluation rule it serves
(issue #20): a test list the weights saw is refused, unknown provenance is never clean, the
default weights follow the dataset, and the paper's figures carry their sample size."""

from __future__ import annotations

import json
import lzma
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ilgnet_cli.errors import UsageError
from ilgnet_cli.model import store
from ilgnet_cli.model.provenance import UNKNOWN, Provenance, authors_list_ids, training_ids
from ilgnet_cli.model.registry import load_registry
from ilgnet_cli.training import metrics
from ilgnet_cli.training.evaluate import (
    EvalResult,
    LeakError,
    check_overlap,
    comparison_rows,
    default_weights,
    evaluate,
)


def _shipped(which: str, split: str) -> list[tuple[int, int]]:
    data = resources.files("ilgnet_cli").joinpath("data", "lists", which, f"{split}.txt.xz").read_bytes()
    rows = [line.split() for line in lzma.decompress(data).decode().splitlines() if line.strip()]
    return [(int(name.removesuffix(".jpg")), int(label)) for name, label in rows]


def test_the_registry_states_what_the_authors_weights_were_trained_on():
    reg = load_registry()
    ava1, ava2, trunk = (reg.weights[n].provenance for n in ("ilgnet-ava1", "ilgnet-ava2", "bvlc-googlenet"))
    assert ava1.known and ava1.dataset == "ava1" and ava1.ids_ref == "list:AVA1"
    assert training_ids(ava1, None) == {i for i, _ in _shipped("AVA1", "train")}
    assert len(training_ids(ava2, None) or ()) == 25_553
    assert trunk.known and training_ids(trunk, None) == set()  # ImageNet: no AVA image


def test_unknown_provenance_is_never_clean():
    assert not UNKNOWN.known and training_ids(UNKNOWN, None) is None
    huge = '{"dataset": "ava1"' + " " * 70_000 + "}"
    for text in (None, "", "not json", "[]", '{"dataset": "clean"}', "{" * 10_000, huge):
        assert not Provenance.loads(text).known
    derived = Provenance(dataset="partition", ids_ref="tensor", bases=(UNKNOWN,))
    assert not derived.known  # fine-tuned from weights of unknown origin: unknown too


def test_edited_or_incomplete_training_ids_are_unknown_not_clean():
    """Held-out probes: a record claiming AVA images but naming nowhere to read them, and ids
    edited in the file, both scored as clean (overlap 0) instead of unknown."""
    ids = np.array([5, 7, 9], dtype=np.int64)
    from ilgnet_cli.model.provenance import ids_digest

    run = {"dataset": "partition", "summary": "partition A", "ids_ref": "tensor", "ids_count": 3,
           "ids_sha256": ids_digest(ids.tolist())}
    assert training_ids(Provenance.from_json(run), ids) == {5, 7, 9}
    for broken in ({k: v for k, v in run.items() if k != "ids_ref"}, {**run, "ids_ref": "list:AVA3"},
                   {"dataset": "ava1"}, {"dataset": "photos", "ids_count": 3}):
        assert not Provenance.from_json(broken).known
    prov = Provenance.from_json(run)
    assert training_ids(prov, np.array([1, 2, 3])) is None  # the tensor edited: digest disagrees
    assert training_ids(prov, np.array([5, 7])) is None  # ... or its count
    assert training_ids(Provenance.from_json({**run, "ids_sha256": None}), ids) is None  # a tensor needs its digest
    listed = {"dataset": "ava2", "ids_ref": "list:AVA2", "ids_count": 25_553}
    assert len(training_ids(Provenance.from_json(listed), None)) == 25_553
    assert training_ids(Provenance.from_json({**listed, "ids_count": 10}), None) is None


def test_overlap_is_refused_with_its_count_unless_allowed():
    train = {1, 2, 3}
    items = [(1, 0), (2, 1), (9, 0)]
    with pytest.raises(LeakError, match=r"^2 of the 3 test images of ava2 are in the training data of w"):
        check_overlap(train, items, weights="w", trained_on="x", dataset="ava2", allow=False)
    assert check_overlap(train, items, weights="w", trained_on="x", dataset="ava2", allow=True) == 2
    assert check_overlap({7}, items, weights="w", trained_on="x", dataset="ava2", allow=False) == 0
    with pytest.raises(LeakError, match="unknown"):
        check_overlap(None, items, weights="w", trained_on="unknown", dataset="ava2", allow=False)
    assert check_overlap(None, items, weights="w", trained_on="unknown", dataset="ava2", allow=True) is None


def test_the_authors_ava1_list_overlaps_ava2s_test_list_as_the_issue_says():
    ava1_train = authors_list_ids("list:AVA1")
    assert sum(i in ava1_train for i, _ in _shipped("AVA2", "val")) == 23_768


def test_default_weights_follow_the_dataset():
    assert default_weights("ava1") == "ilgnet-ava1" and default_weights("standard") == "ilgnet-ava1"
    assert default_weights("ava2") == "ilgnet-ava2" and default_weights("ilgnet-ava2") == "ilgnet-ava2"
    with pytest.raises(UsageError, match="-w"):
        default_weights("/data/my-partition")


def test_paper_figures_carry_their_sample_size_ci_and_a_test_against_ours():
    paper = metrics.PAPER["ilgnet-ava1"]
    assert (paper.accuracy, paper.n, paper.listed) == (0.8168, 2500, 20_000)  # 50 batches of 50 in their log
    lo, hi = paper.ci
    assert 0.800 < lo < 0.802 and 0.831 < hi < 0.832  # Wilson: within 0.2 points of the 80.0% majority baseline
    assert metrics.PAPER["ilgnet-ava2"].n == 2400
    m = metrics.compute(np.array([1] * 16 + [0] * 4), np.array([0.9] * 16 + [0.1] * 3 + [0.9]), rounds=50)
    result = EvalResult(dataset="ilgnet-ava1", weights="w", tta="none", metrics=m, missing=19_980, listed=20_000,
                        paper=paper)
    rows = comparison_rows(result)
    assert rows[0][0].startswith("ours") and "19980 of 20000 listed images missing" in rows[0][2]
    assert "2,500 of the 20,000" in rows[1][2] and "95% CI" in rows[1][2]
    assert rows[2][0] == "ours − paper" and "p = " in rows[2][2]
    delta, p = metrics.two_proportions(0.80, 20_000, 0.8168, 2500)
    pooled = (0.80 * 20_000 + 0.8168 * 2500) / 22_500
    z = abs(delta) / math.sqrt(pooled * (1 - pooled) * (1 / 20_000 + 1 / 2500))
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert json.loads(json.dumps(result.to_json()))["paper"]["n"] == 2500


def test_resume_refuses_when_the_images_present_changed(tmp_path):
    from ilgnet_cli.training.train import _check_resume_config

    config = {"train_list_sha256": "a", "train_ids_sha256": "b"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    _check_resume_config(tmp_path, config)
    with pytest.raises(UsageError, match="train_ids_sha256"):
        _check_resume_config(tmp_path, {**config, "train_ids_sha256": "more images arrived"})


def test_two_mean_files_are_told_apart():
    from ilgnet_cli.model.transform import mean_from_image

    a = mean_from_image(np.full((3, 256, 256), 100.0, np.float32))
    b = mean_from_image(np.full((3, 256, 256), 101.0, np.float32))
    assert a.describe() != b.describe() and a.digest != b.digest


def _partition(root: Path, shared, train: list[tuple[int, int]], test: list[tuple[int, int]]) -> Path:
    photos = sorted(shared("photos", "camera").glob("*.jpg"))[:6]
    (root / "images").mkdir(parents=True)
    for n, (image_id, _) in enumerate(train + test):
        with Image.open(photos[n % len(photos)]) as img:
            small = img.convert("RGB")
            small.thumbnail((300, 300))
            small.save(root / "images" / f"{image_id}.jpg", quality=90)
    for name, items in (("train.txt", train), ("test.txt", test)):
        (root / name).write_text("".join(f"{i}.jpg {label}\n" for i, label in items))
    return root


@pytest.mark.slow  # trains a real-size ILGNet for one step (about 20 s on 2 cores)
def test_a_run_records_what_it_trained_on_and_eval_refuses_its_own_training_images(tmp_path, shared):
    from ilgnet_cli.training.train import TrainConfig, train

    train_items = [(100 + i, i % 2) for i in range(8)]
    test_items = train_items[:3] + [(200 + i, i % 2) for i in range(3)]
    part = _partition(tmp_path / "part", shared, train_items, test_items)
    summary = train(TrainConfig(partition=part, out=tmp_path / "run", images=part / "images", init="random",
                                iters=1, batch_size=4, val_size=0, workers=0, device="cpu", recipe="fast"))
    best = Path(summary["run_dir"]) / "best.safetensors"
    rec = store.add_safetensors(best, "mine", replace=False)
    prov = rec.trained_on
    assert prov.known and prov.dataset == "partition" and prov.ids_count == 8 and prov.ids_ref == "tensor"
    assert store.load_model("mine").training_ids() == {i for i, _ in train_items}

    with pytest.raises(LeakError, match=r"^3 of the 6 test images of part"):
        evaluate(str(part), "mine", images=part / "images", device="cpu", workers=0, rounds=20)
    result = evaluate(str(part), "mine", images=part / "images", device="cpu", workers=0, rounds=20,
                      allow_overlap=True)
    assert result is not None and result.overlap == 3 and result.paper is None
    assert "OVERLAP: 3 test images" in comparison_rows(result)[0][2]
    assert json.loads(json.dumps(result.to_json()))["overlap"] == 3


@pytest.mark.slow
def test_eval_ava2_without_weights_never_falls_back_to_ava1(tmp_path, shared, monkeypatch, weights_file):
    from ilgnet_cli.model.store import NoWeightsError

    ava = tmp_path / "ava"
    test = _shipped("AVA2", "val")[:4]
    _partition(ava, shared, [], test)
    from ilgnet_cli.ava.records import AVARecord, write_ava

    write_ava(ava / "AVA.txt", [AVARecord(id=i, votes=(0, 0, 0, 0, 2, 3, 8, 3, 1, 0) if label else
                                          (0, 1, 3, 8, 3, 2, 0, 0, 0, 0)) for i, label in test])
    store.add_safetensors(weights_file, "ilgnet-ava1", trained_on="ilgnet-ava1")  # installed; ava2 is not
    monkeypatch.setenv("ILGNET_OFFLINE", "1")
    with pytest.raises(NoWeightsError, match="ilgnet-ava2"):
        evaluate("ava2", None, ava_dir=ava, device="cpu", workers=0, rounds=20)
    with pytest.raises(LeakError, match="in the training data of ilgnet-ava1"):
        evaluate("ava2", "ilgnet-ava1", ava_dir=ava, device="cpu", workers=0, rounds=20)
