"""Training end to end on CPU: learning, DDP parity (torchrun, gloo), exact resume, eval.

The task (sharp vs blurred crops of real photos) is not an aesthetics result: it proves that
gradients, labels and preprocessing line up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import camera_photos
from trained import make_blur_task
from typer.testing import CliRunner

from ilgnet_cli.ava.records import read_label_list
from ilgnet_cli.cli import app
from ilgnet_cli.model import store
from ilgnet_cli.model.ilgnet import ILGNet
from ilgnet_cli.training.evaluate import predict
from ilgnet_cli.training.metrics import roc_auc
from ilgnet_cli.training.train import RECIPES, CaffeSGD, TrainConfig, lr_at, param_groups, train

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def blur_task(tmp_path_factory):
    photos = camera_photos(16)
    return make_blur_task(photos, tmp_path_factory.mktemp("blur"), crops_per_photo=4, test_photos=4)


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    return make_blur_task(camera_photos(6), tmp_path_factory.mktemp("small"), crops_per_photo=2, test_photos=1)


@pytest.mark.slow
def test_learns_sharp_vs_blurred_from_random_init(blur_task, tmp_path):
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
    p = predict(lw.model, items, blur_task / "images", lw.mean, device=torch.device("cpu"))
    auc = roc_auc(np.array([label for _, label in items]), p)
    assert auc >= 0.72, auc
    # The best checkpoint installs into the store and scores.
    result = CliRunner().invoke(app, ["weights", "add", str(tmp_path / "run" / "best.safetensors"), "--name", "blur"])
    assert result.exit_code == 0, result.output
    assert store.load_model("blur").mean.name == "ava1"  # the protocol's mean image travels with the weights


def _train_cmd(task: Path, out: Path, *extra: str) -> list[str]:
    return ["-m", "ilgnet_cli", "train", "--partition", str(task), "--images", str(task / "images"), "--out", str(out),
            "--init", "random", "--device", "cpu", "--workers", "0", "--deterministic", "--json", *extra]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state, meta = store.read_weights(run / "checkpoints" / "last" / "model.safetensors")
    return state


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.slow  # subprocesses, torchrun and ~1.8 GB of checkpoints: run by .ci/run
def test_ddp_two_processes_match_single_process(small_task, tmp_path):
    args = ("--recipe", "paper", "--lr", "1e-6", "--iters", "2", "--batch-size", "4", "--dropout", "0",
            "--checkpoint-every", "100")
    single = subprocess.run([sys.executable, *_train_cmd(small_task, tmp_path / "single", *args)], env=ENV,
                            capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29517", *_train_cmd(small_task, tmp_path / "ddp", *args)[1:]], env=ENV,
                         capture_output=True, text=True, timeout=900)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
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
def test_resume_after_kill_matches_uninterrupted_run(small_task, tmp_path):
    args = ("--recipe", "fast", "--iters", "4", "--batch-size", "4", "--checkpoint-every", "2", "--val-size", "4")
    full = subprocess.run([sys.executable, *_train_cmd(small_task, tmp_path / "full", *args)], env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert full.returncode == 0, full.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *_train_cmd(small_task, run, *args)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = run / "checkpoints" / "last" / "state.pt"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists():
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = torch.load(state, weights_only=True)
    assert saved["step"] == 2  # killed before the end: the last checkpoint is the one at step 2
    resumed = subprocess.run([sys.executable, *_train_cmd(small_task, run, *args, "--resume")], env=ENV,
                             capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["steps"] == 4
    assert _max_diff(_weights(tmp_path / "full"), _weights(run)) < 1e-6
    steps = [json.loads(x).get("step") for x in (run / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(x)]
    assert steps == [1, 2, 3, 4]  # nothing duplicated after the resume


def test_paper_recipe_multipliers_and_schedule():
    model = ILGNet()
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


@pytest.mark.slow
def test_eval_reports_metrics_baseline_and_missing(blur_task, weights_file, tmp_path):
    (blur_task / "images" / "1.jpg").rename(tmp_path / "hidden.jpg")  # one missing test image at most
    try:
        result = CliRunner().invoke(app, ["eval", "--dataset", str(blur_task), "--weights", str(weights_file),
                                          "--images", str(blur_task / "images"), "--device", "cpu", "--workers", "0",
                                          "--tta", "mirror", "--json"])
    finally:
        (tmp_path / "hidden.jpg").rename(blur_task / "images" / "1.jpg")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    m = data["metrics"]
    assert data["listed"] == 32 and data["missing_images"] in (0, 1) and m["n"] == 32 - data["missing_images"]
    assert m["majority_baseline"] == pytest.approx(0.5, abs=0.04)
    assert 0 <= m["roc_auc"] <= 1 and sum(map(sum, m["confusion"])) == m["n"]
    table = CliRunner().invoke(app, ["eval", "--dataset", str(blur_task), "--weights", str(weights_file),
                                     "--images", str(blur_task / "images"), "--device", "cpu", "--workers", "0"])
    assert "always the majority class" in table.output and "balanced accuracy" in table.output


@pytest.mark.slow  # subprocesses, torchrun and ~1.8 GB of checkpoints: run by .ci/run
def test_torchrun_score_shards_files_and_merges_one_report(tmp_path, weights_file):
    photos = [str(p) for p in camera_photos(5)]
    report = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                           "29519", "-m", "ilgnet_cli", "score", *photos, "--weights", str(weights_file),
                           "--device", "cpu", "--workers", "0", "--no-cache", "-o", str(report)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = json.loads(report.read_text())
    assert sorted(r["path"] for r in data["results"]) == sorted(photos)
    assert data["summary"]["scored"] == 5


@pytest.mark.slow  # subprocesses, torchrun and ~1.8 GB of checkpoints: run by .ci/run
def test_torchrun_eval_matches_single_process(blur_task, weights_file):
    args = ["-m", "ilgnet_cli", "eval", "--dataset", str(blur_task), "--weights", str(weights_file), "--images",
            str(blur_task / "images"), "--device", "cpu", "--workers", "0", "--json"]
    single = subprocess.run([sys.executable, *args], env=ENV, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port",
                          "29521", *args[1:]], env=ENV, capture_output=True, text=True, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    a, b = json.loads(single.stdout)["metrics"], json.loads(ddp.stdout)["metrics"]
    assert a["n"] == b["n"] == 32 and a["confusion"] == b["confusion"]
    assert a["roc_auc"] == pytest.approx(b["roc_auc"], abs=1e-9)
