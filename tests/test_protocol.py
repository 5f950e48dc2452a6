"""The paper's protocol, honestly: the authors' solvers and mean images, validation held out of
the training list, one decode mode per run, the paper's number only for the authors' lists,
and the mission's command lines (`ilgnet eval --dataset ava1`, `ilgnet train`) run as typed."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import camera_photos, shared_path
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from ilgnet_cli.ava.partition import holdout, shipped_list
from ilgnet_cli.ava.records import AVARecord, read_label_list, write_ava, write_label_list
from ilgnet_cli.cli import app
from ilgnet_cli.model import store
from ilgnet_cli.model.ilgnet import ILGNet
from ilgnet_cli.runtime.distributed import Dist
from ilgnet_cli.runtime.download import file_digest
from ilgnet_cli.training.train import RECIPES, SOLVERS, TrainConfig, _setup, param_groups, resolve_recipe, train

runner = CliRunner()


def _solver_file(which: str) -> dict[str, str]:
    text = shared_path("ilgnet", "solver", f"{which}_solver.prototxt").read_text()
    return dict(re.findall(r"^(\w+):\s*\"?([^\"\n]+)\"?", text, re.M))


@pytest.mark.parametrize("which", ["AVA1", "AVA2"])
def test_solvers_are_the_authors_files(which):
    theirs, ours = _solver_file(which), SOLVERS[which.lower()]
    assert float(theirs["base_lr"]) == ours.base_lr and theirs["lr_policy"] == ours.lr_policy
    assert int(theirs["stepsize"]) == ours.stepsize and float(theirs["gamma"]) == ours.gamma
    assert int(theirs["max_iter"]) == ours.max_iter and int(theirs["test_interval"]) == ours.test_interval
    assert int(theirs["test_iter"]) == ours.test_iter
    assert float(theirs["momentum"]) == ours.momentum and float(theirs["weight_decay"]) == ours.weight_decay
    batch = re.search(r"batch_size:\s*(\d+)", shared_path("ilgnet", "train.prototxt").read_text())
    assert int(batch.group(1)) == ours.batch


def test_holdout_is_stratified_seeded_and_disjoint():
    items = [(i, int(i % 5 == 0)) for i in range(1, 1001)]  # 20% high
    train_a, val_a = holdout(items, 100, seed=3)
    train_b, val_b = holdout(items, 100, seed=3)
    assert val_a == val_b and train_a == train_b  # seeded
    assert len(val_a) == 100 and sum(label for _, label in val_a) == 20  # stratified
    assert not {i for i, _ in val_a} & {i for i, _ in train_a} and len(train_a) + len(val_a) == 1000
    assert holdout(items, 100, seed=4)[1] != val_a


def test_fast_recipe_decays_every_layer_alike():
    """AdamW's decoupled decay is lr x wd with the group's lr: the fan-in lr scaling must not
    switch weight decay off for temp1/temp2 (their lr multiplier is ~1e-3)."""
    fast = RECIPES["fast"]
    groups = [g for g in param_groups(ILGNet(), fast) if g["decay_mult"]]
    effective = {g["lr_mult"] * g["weight_decay"] for g in groups}
    assert len(groups) > 2 and max(effective) == pytest.approx(min(effective)) == pytest.approx(fast.weight_decay)


# --------------------------------------------------------------------------- a tiny AVA


def _write_photo(src: Path, dest: Path, blur: bool) -> None:
    with Image.open(src) as img:
        img = img.convert("RGB")
        img.thumbnail((320, 320))
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(radius=6))
        img.save(dest, quality=90)


def make_tiny_ava(root: Path, which: str = "AVA1", n_train: int = 16, n_test: int = 6) -> dict[str, list]:
    """AVA as 'ilgnet download ava' leaves it, for a few ids of the authors' lists: AVA.txt
    (votes agreeing with their labels) and images/<id>.jpg (real photos, blurred when low)."""
    photos = camera_photos(8)
    train = shipped_list(which, "train")[:n_train]
    test = shipped_list(which, "val")[:n_test]
    (root / "images").mkdir(parents=True)
    records = []
    for n, (image_id, label) in enumerate(train + test):
        _write_photo(photos[n % len(photos)], root / "images" / f"{image_id}.jpg", blur=label == 0)
        votes = (0, 0, 0, 0, 2, 3, 8, 3, 1, 0) if label else (0, 1, 3, 8, 3, 2, 0, 0, 0, 0)
        records.append(AVARecord(id=image_id, votes=votes))
    write_ava(root / "AVA.txt", records)
    return {"train": train, "test": test}


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "data"
    monkeypatch.setenv("ILGNET_DATA", str(home))
    return home


def _trunk_registry(tmp_path, monkeypatch, server, caffemodels) -> None:
    """A registry whose bvlc-googlenet is a random GoogLeNet trunk on the local server."""
    from caffe_schema import write_caffemodel

    from ilgnet_cli.model.ilgnet import TRUNK_LAYERS

    trunk = tmp_path / "bvlc_googlenet.caffemodel"
    write_caffemodel(trunk, [e for e in caffemodels["layers"] if e[0] in TRUNK_LAYERS], v1=True)
    server.add("/bvlc_googlenet.caffemodel", file=trunk)
    entry = {"description": "trunk", "kind": "caffemodel", "architecture": "ilgnet-trunk",
             "file": "bvlc_googlenet.caffemodel", "sources": [server.url("/bvlc_googlenet.caffemodel")],
             "checksum": "sha256:" + file_digest(trunk), "size": trunk.stat().st_size, "mean": "imagenet"}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps({"default": "ilgnet-ava1", "weights": {"bvlc-googlenet": entry}}))
    monkeypatch.setenv("ILGNET_REGISTRY", str(path))


@pytest.mark.slow
def test_mission_commands_run_as_typed(data_home, tmp_path, monkeypatch, server, caffemodels, weights_file):
    """`ilgnet eval --dataset ava1` and `ilgnet train` with ILGNET_DATA holding a tiny AVA."""
    lists = make_tiny_ava(data_home / "ava")
    _trunk_registry(tmp_path, monkeypatch, server, caffemodels)
    store.add_safetensors(weights_file, "ilgnet-ava1")  # as if fetched

    result = runner.invoke(app, ["eval", "--dataset", "ava1", "--device", "cpu", "--workers", "0", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["partition_kind"] == "ilgnet-ava1" and data["listed"] == 20_000
    assert data["metrics"]["n"] == len(lists["test"]) and data["missing_images"] == 20_000 - len(lists["test"])
    assert data["paper_accuracy"] == 0.8168  # the authors' own test list
    assert data["precision"] == "fp32" and data["decode"] == "exact"

    # `ilgnet train` with nothing but what keeps the test short: paper recipe on ilgnet-ava1,
    # ImageNet trunk fetched on first use, a new run folder under $ILGNET_DATA/runs.
    result = runner.invoke(app, ["train", "--iters", "1", "--batch-size", "4", "--device", "cpu", "--workers", "0",
                                 "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    run = Path(summary["run_dir"])
    assert run.parent == data_home / "runs" and run.name.startswith("ilgnet-ava1-")
    assert store.installed("bvlc-googlenet") is not None and "bvlc-googlenet" in summary["init"]
    config = json.loads((run / "config.json").read_text())
    assert config["solver"] == {"base_lr": 1e-4, "lr_policy": "step", "stepsize": 115_000, "gamma": 0.96,
                                "momentum": 0.9, "weight_decay": 2e-4, "max_iter": 475_000, "batch": 4}
    assert config["mean"] == "ava1 mean image" and config["precision"] == "fp32" and config["decode"] == "exact"
    val = read_label_list(run / "val.txt")
    train_ids = {i for i, _ in lists["train"]}
    assert val and {i for i, _ in val} <= train_ids  # held out of the training list ...
    assert not {i for i, _ in val} & {i for i, _ in shipped_list("AVA1", "val")}  # ... never the test list
    assert (run / "best.safetensors").exists() and summary["val_n"] == len(val)


def test_missing_data_says_what_to_run(data_home):
    for args in (["eval", "--dataset", "ava1", "--device", "cpu"], ["train", "--device", "cpu", "--init", "random"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 1, (args, result.output)
        assert "ilgnet download ava" in result.output and "32 GB" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def _tiny_partition(root: Path, kind: str | None, which: str = "AVA2") -> Path:
    """A partition folder over the tiny AVA (partition.json records ``kind``)."""
    lists = make_tiny_ava(root / "ava", which)
    folder = root / "part"
    folder.mkdir()
    write_label_list(folder / "train.txt", lists["train"])
    write_label_list(folder / "test.txt", lists["test"])
    if kind:
        (folder / "partition.json").write_text(json.dumps({"kind": kind}))
    return folder


def test_paper_recipe_takes_the_partitions_solver_and_mean(tmp_path):
    folder = _tiny_partition(tmp_path, "ilgnet-ava2")
    cfg = TrainConfig(partition=folder, out=tmp_path / "run", images=tmp_path / "ava" / "images", init="random",
                      batch_size=4)
    run = _setup(cfg, Dist(), cuda=False)
    assert run.recipe == resolve_recipe("paper", "ava2")
    assert run.total == 533_000 and run.every == 533  # the AVA2 solver's max_iter and test_interval
    assert run.config["solver"]["base_lr"] == 1e-5 and run.config["solver"]["stepsize"] == 13_325
    assert run.config["mean"] == "ava2 mean image" and run.config["precision"] == "fp32"


@pytest.mark.slow
def test_validation_never_reads_the_test_list(tmp_path):
    folder = _tiny_partition(tmp_path, "ava1", "AVA1")
    (folder / "test.txt").write_text("this is not a list\n")  # reading it would fail
    cfg = TrainConfig(partition=folder, out=tmp_path / "run", images=tmp_path / "ava" / "images", init="random",
                      recipe="fast", iters=1, batch_size=4, workers=0, device="cpu", seed=5)
    summary = train(cfg)
    val = read_label_list(tmp_path / "run" / "val.txt")
    assert summary["val_n"] == len(val) == 1
    assert {i for i, _ in val} <= {i for i, _ in read_label_list(folder / "train.txt")}


@pytest.mark.slow
def test_resume_refuses_a_changed_configuration(tmp_path):
    folder = _tiny_partition(tmp_path, "ilgnet-ava1", "AVA1")
    args = ["train", "--dataset", str(folder), "--images", str(tmp_path / "ava" / "images"), "--init", "random",
            "--recipe", "fast", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert runner.invoke(app, [*args, "--iters", "1"]).exit_code == 0
    result = runner.invoke(app, [*args, "--iters", "2", "--lr", "0.01", "--resume"])
    assert result.exit_code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "iters: 1 -> 2" in line and "base_lr" in line
    assert runner.invoke(app, [*args, "--iters", "1", "--resume"]).exit_code == 0  # same settings: fine


@pytest.mark.slow
def test_paper_number_only_for_the_authors_lists(tmp_path, weights_file):
    """A folder named ava1 or a partition that merely claims the kind gets no paper row."""
    cases = {"ava1": ("ava1", False), "fake": ("ilgnet-ava1", False), "none": (None, False)}
    for name, (kind, _) in cases.items():
        folder = _tiny_partition(tmp_path / name, kind, "AVA1")
        renamed = folder.rename(folder.parent / "ava1")  # the folder name must not matter
        result = runner.invoke(app, ["eval", "--dataset", str(renamed), "--weights", str(weights_file), "--images",
                                     str(tmp_path / name / "ava" / "images"), "--device", "cpu", "--workers", "0",
                                     "--json"])
        assert result.exit_code == 0, result.output
        data = json.loads(result.stdout)
        assert data["paper_accuracy"] is None, name
        assert any("not comparable" in n for n in data["notes"])


@pytest.mark.slow
def test_eval_html_report(data_home, tmp_path, weights_file):
    make_tiny_ava(data_home / "ava")
    report = tmp_path / "eval.html"
    result = runner.invoke(app, ["eval", "--weights", str(weights_file), "--device", "cpu", "--workers", "0",
                                 "-o", str(report)])
    assert result.exit_code == 0, result.output
    page = report.read_text()
    assert "81.68%" in page and "<svg" in page and "<script" not in page.lower()
    assert "paper (Jin et al. 2016)" in result.output and "fp32" in result.output


def test_one_decode_mode_per_run(tmp_path):
    """The authors' convert_imageset decoded every pixel: so do prepare, train and eval by default,
    and a cache prepared otherwise is refused instead of mixed in."""
    from ilgnet_cli.ava.records import resized_image
    from ilgnet_cli.data.decode import decode
    from ilgnet_cli.model.transform import resize_bilinear

    folder = _tiny_partition(tmp_path, "ilgnet-ava1", "AVA1")
    images = tmp_path / "ava" / "images"
    first = read_label_list(folder / "train.txt")[0][0]
    full = resize_bilinear(decode(images / f"{first}.jpg").rgb)
    assert np.array_equal(resized_image(first, images), full)
    prepared = tmp_path / "prep"
    result = runner.invoke(app, ["prepare", "--dataset", str(folder), "--images", str(images), "--out", str(prepared),
                                 "--draft", "--jobs", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["train", "--dataset", str(folder), "--prepared", str(prepared), "--init", "random",
                                 "--iters", "1", "--batch-size", "4", "--workers", "0", "--device", "cpu",
                                 "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "draft" in result.output
    result = runner.invoke(app, ["prepare", "--dataset", str(folder), "--images", str(images), "--out", str(prepared),
                                 "--jobs", "1"])
    assert result.exit_code == 2 and "draft" in result.output  # a resumed prepare keeps its mode


# --------------------------------------------------------------------------- weights carry their mean


def _mean_files(tmp_path: Path) -> dict[str, Path]:
    from caffe_schema import MESSAGES

    image = np.load(shared_path("ilgnet", "mean", "AVA2_mean.npy"), allow_pickle=False,
                    encoding="latin1").astype(np.float32)
    blob = MESSAGES["BlobProto"](num=1, channels=3, height=256, width=256)
    blob.data.extend(image.reshape(-1).tolist())
    proto = tmp_path / "mean.binaryproto"
    proto.write_bytes(blob.SerializeToString())  # Caffe's compute_image_mean output format
    npy = tmp_path / "mean.npy"
    np.save(npy, image[:, ::-1].copy())  # a different image: mirrored
    return {"binaryproto": proto, "npy": npy, "image": image}


@pytest.mark.slow
def test_import_takes_every_kind_of_mean(tmp_path, caffemodels):
    files = _mean_files(tmp_path)
    cases = {"ava1": "ava1 mean image", "ava2": "ava2 mean image", "imagenet": "per-channel 104,117,123 (imagenet)",
             "1.5,2,3": "per-channel 1.5,2,3", str(files["binaryproto"]): "mean image (from a file)",
             str(files["npy"]): "mean image (from a file)"}
    for n, (mean, described) in enumerate(cases.items()):
        result = runner.invoke(app, ["weights", "import", str(caffemodels["v2"]), "--name", f"m{n}", "--mean", mean])
        assert result.exit_code == 0, result.output
        loaded = store.load_model(f"m{n}")
        assert loaded.mean.describe() == described
        assert store.installed(f"m{n}").mean == described
    # A mean image read from a file travels inside the weights file, exactly.
    np.testing.assert_array_equal(store.load_model("m4").mean.image, files["image"])
    np.testing.assert_array_equal(store.load_model("m5").mean.image, files["image"][:, ::-1])
    # ... and survives 'weights add' of that file under another name.
    assert runner.invoke(app, ["weights", "add", str(store.installed("m5").path), "--name", "copy"]).exit_code == 0
    np.testing.assert_array_equal(store.load_model("copy").mean.image, files["image"][:, ::-1])


@pytest.mark.slow
@pytest.mark.parametrize("content", [b"", b"\x0a\x05hello", b"\x08\x01" * 10, b"not a mean at all" * 100])
def test_unusable_mean_file_is_one_line_error(tmp_path, caffemodels, content):
    for suffix in (".binaryproto", ".npy"):
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        result = runner.invoke(app, ["weights", "import", str(caffemodels["v2"]), "--name", "bad", "--mean", str(path)])
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert store.installed("bad") is None


@pytest.mark.slow
def test_non_finite_or_absurd_mean_is_refused(tmp_path, caffemodels):
    image = np.full((3, 256, 256), 100, np.float32)
    image[1, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", image)
    for mean in (str(tmp_path / "nan.npy"), "nan,1,2", "1e9,1,2"):
        result = runner.invoke(app, ["weights", "import", str(caffemodels["v2"]), "--name", "bad", "--mean", mean])
        assert result.exit_code == 1 and "finite" in result.output, (mean, result.output)
