"""Training (training/train.py) on CPU: the authors' solvers and multipliers, the recipes, the
training crops, learning a simple task end to end, validation held out of the training list,
DDP parity (torchrun, gloo), exact resume after kill -9, refusal to resume a changed run, and run
folders that are input like any other (a tampered config, a pickle in a checkpoint).

The task (sharp vs blurred crops of real photos, tests/trained.py) is not an aesthetics result:
it proves that gradients, labels and preprocessing line up.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import camera_photos, make_tiny_ava, shared_path, tiny_partition
from trained import make_blur_task

from ilgnet_cli.ava.partition import shipped_list
from ilgnet_cli.ava.records import read_label_list
from ilgnet_cli.ava.source import AvaImages
from ilgnet_cli.model import store
from ilgnet_cli.model.ilgnet import ILGNet, empty_ilgnet
from ilgnet_cli.model.transform import Crops, Transform, channel_mean
from ilgnet_cli.runtime.distributed import Dist
from ilgnet_cli.runtime.download import file_digest
from ilgnet_cli.training.evaluate import predict
from ilgnet_cli.training.metrics import roc_auc
from ilgnet_cli.training.train import (
    RECIPES,
    SOLVERS,
    CaffeSGD,
    TrainConfig,
    TrainingImages,
    _check_resume_config,
    _resume,
    _setup,
    _step_of,
    lr_at,
    make_optimizer,
    param_groups,
    resolve_recipe,
    train,
)

ENV = {"OMP_NUM_THREADS": "1"}


# --------------------------------------------------------------------------- the authors' recipe


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


def test_fast_recipe_decays_every_layer_alike():
    """AdamW's decoupled decay is lr x wd with the group's lr: the fan-in lr scaling must not
    switch weight decay off for temp1/temp2 (their lr multiplier is ~1e-3)."""
    fast = RECIPES["fast"]
    groups = [g for g in param_groups(empty_ilgnet(), fast) if g["decay_mult"]]
    effective = {g["lr_mult"] * g["weight_decay"] for g in groups}
    assert len(groups) > 2 and max(effective) == pytest.approx(min(effective)) == pytest.approx(fast.weight_decay)


def test_paper_recipe_multipliers_and_schedule():
    model = empty_ilgnet()
    groups = {g["name"]: g for g in param_groups(model, RECIPES["paper"])}
    assert groups["trunk-weight"]["lr_mult"] == 1 and groups["trunk-bias"]["lr_mult"] == 2
    assert groups["head-weight"]["lr_mult"] == 10 and groups["head-bias"]["lr_mult"] == 20
    assert groups["trunk-bias"]["weight_decay"] == 0 and groups["head-weight"]["weight_decay"] == pytest.approx(2e-4)
    paper = RECIPES["paper"]
    assert lr_at(paper, 0, 475_000) == pytest.approx(1e-4)
    assert lr_at(paper, 115_000, 475_000) == pytest.approx(0.96e-4)
    assert lr_at(paper, 230_001, 475_000) == pytest.approx(1e-4 * 0.96 ** 2)


def test_caffe_sgd_update_rule():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = CaffeSGD([{"params": [w], "weight_decay": 0.1}], lr=0.5, momentum=0.9, weight_decay=0.1)
    for _ in range(2):
        w.grad = torch.tensor([0.2, 0.4])
        opt.step()
    # v1 = 0.5*(g + 0.1 w0); w1 = w0 - v1; v2 = 0.9 v1 + 0.5*(g + 0.1 w1); w2 = w1 - v2
    w0 = torch.tensor([1.0, -2.0])
    g = torch.tensor([0.2, 0.4])
    v1 = 0.5 * (g + 0.1 * w0)
    w1 = w0 - v1
    v2 = 0.9 * v1 + 0.5 * (g + 0.1 * w1)
    assert torch.allclose(w.detach(), w1 - v2)


def test_paper_recipe_takes_the_partitions_solver_and_mean(tmp_path):
    folder = tiny_partition(tmp_path, "ilgnet-ava2")
    cfg = TrainConfig(partition=folder, out=tmp_path / "run", images=tmp_path / "ava" / "images", init="random",
                      batch_size=4)
    run = _setup(cfg, Dist(), cuda=False)
    assert run.recipe == resolve_recipe("paper", "ava2")
    assert run.total == 533_000 and run.every == 533  # the AVA2 solver's max_iter and test_interval
    assert run.config["solver"]["base_lr"] == 1e-5 and run.config["solver"]["stepsize"] == 13_325
    assert run.config["mean"] == "ava2 mean image" and run.config["precision"] == "fp32"


# --------------------------------------------------------------------------- training crops


def test_training_images_give_random_crops_reproducible_by_seed_epoch_and_index(tmp_path):
    """The one training Dataset: (index, epoch) -> (random crop and mirror of the 256x256 image,
    label), the generator seeded by (seed, epoch, index), so a run's crops do not depend on the
    number of workers (exact resume and DDP parity need that)."""
    folder = tiny_partition(tmp_path, "ilgnet-ava1", "AVA1")
    items = read_label_list(folder / "train.txt")[:3]
    source = AvaImages(items, tmp_path / "ava" / "images")
    ds = TrainingImages(source, Transform(channel_mean((91.0, 99.0, 107.0))), seed=5)
    assert ds.transform.crops is Crops.RANDOM and len(ds) == 3
    x, y = ds[(0, 0)]
    assert tuple(x.shape) == (3, 227, 227) and x.dtype == torch.float32 and y == items[0][1]
    assert torch.equal(ds[(0, 0)][0], x)  # same epoch, same crop
    again = TrainingImages(source, Transform(channel_mean((91.0, 99.0, 107.0))), seed=5)
    assert torch.equal(again[(0, 0)][0], x)  # a fresh dataset (another worker) gives it too
    assert any(not torch.equal(ds[(i, 1)][0], ds[(i, 0)][0]) for i in range(3))  # another epoch, other crops
    other = TrainingImages(source, Transform(channel_mean((91.0, 99.0, 107.0))), seed=6)
    assert any(not torch.equal(other[(i, 0)][0], ds[(i, 0)][0]) for i in range(3))


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def blur_task(tmp_path_factory):
    photos = camera_photos(16)
    return make_blur_task(photos, tmp_path_factory.mktemp("blur"), crops_per_photo=4, test_photos=4)


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    return make_blur_task(camera_photos(6), tmp_path_factory.mktemp("small"), crops_per_photo=2, test_photos=1)


@pytest.mark.slow
def test_learns_sharp_vs_blurred_from_random_init(blur_task, tmp_path, cli):
    cfg = TrainConfig(partition=blur_task, out=tmp_path / "run", images=blur_task / "images", init="random",
                      recipe="fast", lr=1e-3, iters=20, batch_size=8, dropout=0.0, workers=0, device="cpu",
                      checkpoint_every=10, seed=0)
    summary = train(cfg)
    assert summary["steps"] == 20 and summary["best_val_accuracy"] is not None
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert sum(losses[-10:]) / 10 < sum(losses[:5]) / 5
    # 32 held-out crops from 4 photos never seen in training; chance is AUC 0.5 (measured: 0.82).
    lw = store.load_model(str(tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"))
    items = read_label_list(blur_task / "test.txt")
    p = predict(lw.model, items, blur_task / "images", lw.transforms(), device=torch.device("cpu"))
    auc = roc_auc(np.array([label for _, label in items]), p)
    assert auc >= 0.72, auc
    # The best checkpoint installs into the store and scores.
    result = cli("weights", "add", str(tmp_path / "run" / "best.safetensors"), "--name", "blur")
    assert result.code == 0, result.output
    assert store.load_model("blur").mean.name == "ava1"  # the protocol's mean image travels with the weights


@pytest.mark.slow
def test_validation_never_reads_the_test_list(tmp_path):
    folder = tiny_partition(tmp_path, "ava1", "AVA1")
    (folder / "test.txt").write_text("this is not a list\n")  # reading it would fail
    cfg = TrainConfig(partition=folder, out=tmp_path / "run", images=tmp_path / "ava" / "images", init="random",
                      recipe="fast", iters=1, batch_size=4, workers=0, device="cpu", seed=5)
    summary = train(cfg)
    val = read_label_list(tmp_path / "run" / "val.txt")
    assert summary["val_n"] == len(val) == 1
    assert {i for i, _ in val} <= {i for i, _ in read_label_list(folder / "train.txt")}


@pytest.mark.slow
def test_resume_refuses_a_changed_configuration(tmp_path, cli):
    folder = tiny_partition(tmp_path, "ilgnet-ava1", "AVA1")
    args = ["train", "--dataset", str(folder), "--images", str(tmp_path / "ava" / "images"), "--init", "random",
            "--recipe", "fast", "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", str(tmp_path / "r")]
    assert cli(*args, "--iters", "1").code == 0
    result = cli(*args, "--iters", "2", "--lr", "0.01", "--resume")
    assert result.code == 2, result.output
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "iters: 1 -> 2" in line and "base_lr" in line
    assert cli(*args, "--iters", "1", "--resume").code == 0  # same settings: fine


def _train_args(task: Path, out: Path, *extra: str) -> list:
    return ["train", "--partition", task, "--images", task / "images", "--out", out, "--init", "random", "--device",
            "cpu", "--workers", "0", "--deterministic", "--json", *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state, meta = store.read_weights(run / "checkpoints" / "last" / "model.safetensors")
    return state


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow  # subprocesses, torchrun and ~1.8 GB of checkpoints: run by .ci/run
def test_ddp_two_processes_match_single_process(small_task, tmp_path, cli):
    args = ("--recipe", "paper", "--lr", "1e-6", "--iters", "2", "--batch-size", "4", "--dropout", "0",
            "--checkpoint-every", "100")
    single = cli(*_train_args(small_task, tmp_path / "single", *args), env=ENV, timeout=900, subprocess=True)
    assert single.code == 0, single.stderr
    ddp = cli(*_train_args(small_task, tmp_path / "ddp", *args), env=ENV, timeout=900, torchrun=2)
    assert ddp.code == 0, ddp.stderr[-3000:]
    summary = json.loads(ddp.stdout.strip().splitlines()[-1])
    assert summary["world"] == 2 and summary["steps"] == 2
    # One checkpoint set, written by rank 0 only.
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").iterdir()) == ["last"]
    a, b = _weights(tmp_path / "single"), _weights(tmp_path / "ddp")
    initial = ILGNet()
    initial.reset_parameters(torch.Generator().manual_seed(0))
    moved = max(float((a[k] - initial.state_dict()[k]).abs().max()) for k in a)
    assert moved > 1e-6  # training changed the weights ...
    assert _max_diff(a, b) < 1e-6  # ... identically with one process and with two


@pytest.mark.slow  # subprocesses, torchrun and ~1.8 GB of checkpoints: run by .ci/run
def test_resume_after_kill_matches_uninterrupted_run(small_task, tmp_path, cli):
    args = ("--recipe", "fast", "--iters", "4", "--batch-size", "4", "--checkpoint-every", "2", "--val-size", "4")
    full = cli(*_train_args(small_task, tmp_path / "full", *args), env=ENV, timeout=900, subprocess=True)
    assert full.code == 0, full.stderr
    run = tmp_path / "killed"
    proc = cli.start(*_train_args(small_task, run, *args), env=ENV)
    state = run / "checkpoints" / "last" / "state.pt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 2  # killed before the end: the last checkpoint is the one at step 2
    resumed = cli(*_train_args(small_task, run, *args, "--resume"), env=ENV, timeout=900, subprocess=True)
    assert resumed.code == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 4
    assert _max_diff(_weights(tmp_path / "full"), _weights(run)) < 1e-6
    steps = [json.loads(x).get("step") for x in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4]  # nothing duplicated after the resume


# --------------------------------------------------------------------------- the mission's command lines


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "data"
    monkeypatch.setenv("ILGNET_DATA", str(home))
    return home


def _trunk_registry(tmp_path, registry, server, caffemodels) -> None:
    """A registry whose bvlc-googlenet is a random GoogLeNet trunk on the local server."""
    from caffe_schema import write_caffemodel

    from ilgnet_cli.model.ilgnet import TRUNK_LAYERS

    trunk = tmp_path / "bvlc_googlenet.caffemodel"
    write_caffemodel(trunk, [e for e in caffemodels["layers"] if e[0] in TRUNK_LAYERS], v1=True)
    server.add("/bvlc_googlenet.caffemodel", file=trunk)
    entry = registry.entry([server.url("/bvlc_googlenet.caffemodel")], "sha256:" + file_digest(trunk),
                           size=trunk.stat().st_size, arch="ilgnet-trunk", mean="imagenet",
                           file="bvlc_googlenet.caffemodel")
    registry({"bvlc-googlenet": {**entry, "provenance": {"dataset": "imagenet", "summary": "ImageNet"}}},
             default="ilgnet-ava1")


@pytest.mark.slow
def test_mission_commands_run_as_typed(data_home, tmp_path, registry, server, caffemodels, ava1_weights, cli):
    """`ilgnet eval --dataset ava1` and `ilgnet train` with ILGNET_DATA holding a tiny AVA."""
    lists = make_tiny_ava(data_home / "ava")
    _trunk_registry(tmp_path, registry, server, caffemodels)
    store.add_safetensors(ava1_weights, "ilgnet-ava1")  # as if fetched: trained on the AVA1 training list

    result = cli("eval", "--dataset", "ava1", "--device", "cpu", "--workers", "0", "--json")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    assert data["partition_kind"] == "ilgnet-ava1" and data["listed"] == 20_000
    assert data["metrics"]["n"] == len(lists["test"]) and data["missing_images"] == 20_000 - len(lists["test"])
    assert data["paper_accuracy"] == 0.8168 and data["overlap"] == 0  # the authors' own test list, never trained on
    assert data["precision"] == "fp32" and data["decode"] == "exact"

    # `ilgnet train` with nothing but what keeps the test short: paper recipe on ilgnet-ava1,
    # ImageNet trunk fetched on first use, a new run folder under $ILGNET_DATA/runs.
    result = cli("train", "--iters", "1", "--batch-size", "4", "--device", "cpu", "--workers", "0",
                                 "--json")
    assert result.code == 0, result.output
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


def test_missing_data_says_what_to_run(data_home, cli):
    for args in (["eval", "--dataset", "ava1", "--device", "cpu"], ["train", "--device", "cpu", "--init", "random"]):
        result = cli(*args)
        assert result.code == 1, (args, result.output)
        assert "ilgnet download ava" in result.output and "32 GB" in result.output
        assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


# --------------------------------------------------------------------------- run folders are input


def test_tampered_run_folders_are_one_line_errors(tmp_path):
    from ilgnet_cli.errors import DataError

    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="config.json"):
        _check_resume_config(tmp_path, {})
    (tmp_path / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match="config.json"):
        _check_resume_config(tmp_path, {})
    assert _step_of("garbage") == float("inf") and _step_of("[1]") == float("inf") and _step_of('{"step": 3}') == 3


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/ilgnet-pwned",))


def test_a_pickle_bomb_checkpoint_is_refused_not_run(tmp_path, weights_file):
    from ilgnet_cli.errors import DataError
    from ilgnet_cli.training.train import RECIPES

    ckpt = tmp_path / "checkpoints" / "last"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").symlink_to(weights_file)  # a real model file: the pickle is what is wrong
    with (ckpt / "state.pt").open("wb") as fh:
        pickle.dump({"x": _Evil()}, fh)
    model = empty_ilgnet()
    with pytest.raises(DataError, match="damaged or not ilgnet's"):
        _resume(tmp_path, model, make_optimizer(model, RECIPES["fast"]), cuda=False)
    assert not os.path.exists("/tmp/ilgnet-pwned")
