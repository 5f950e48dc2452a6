"""ILGNet in PyTorch vs an independent Caffe runtime (OpenCV's dnn Caffe importer).

Random weights are written as a caffemodel with the protobuf package (tests/caffe_schema.py),
imported with ``ilgnet weights import`` (our streaming reader), and both runtimes see the same
preprocessed blobs of real camera photos.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import authors_mean, caffe_transform, camera_photos, shared_path

from ilgnet_cli.data.decode import decode
from ilgnet_cli.model import store
from ilgnet_cli.model.transform import CROP, RESIZE, parse_mean, preprocess

cv2 = pytest.importorskip("cv2")


BLOBS = {  # our blob name -> OpenCV layer whose output is that Caffe blob
    "inception_3a/output": "inception_3a/output",
    "inception_4a/output": "inception_4a/output",
    "temp": "temp",
    "loss1/classifier_cjy": "loss1/classifier_cjy",
}


@pytest.fixture(scope="module")
def photo_blobs():
    photos = camera_photos(8)
    return torch.stack([preprocess(decode(p).rgb, parse_mean("ava1")) for p in photos])


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_ilgnet_matches_opencv_caffe_runtime(fmt, caffemodels, photo_blobs, cli):
    result = cli("weights", "import", caffemodels[fmt], "--name", f"rand-{fmt}", "--mean", "ava1")
    assert result.code == 0, result.output
    loaded = store.load_model(f"rand-{fmt}")
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in loaded.model.blobs(photo_blobs).items()}

    net = cv2.dnn.readNetFromCaffe(str(shared_path("ilgnet", "deploy.prototxt")), str(caffemodels[fmt]))
    net.setInput(photo_blobs.numpy())
    theirs = dict(zip(BLOBS, net.forward(list(BLOBS.values())), strict=True))

    for name in BLOBS:
        a, b = ours[name], theirs[name].reshape(ours[name].shape)
        scale = max(1.0, float(np.abs(b).max()))
        # Intermediate blobs reach ~100: compare relative to their range to locate a fault.
        assert np.abs(a - b).max() / scale < 1e-5, f"{name}: max |diff| {np.abs(a - b).max():.3g}"

    logits_ours, logits_cv = ours["loss1/classifier_cjy"], theirs["loss1/classifier_cjy"].reshape(-1, 2)
    assert np.abs(logits_ours - logits_cv).max() <= 1e-3
    p_ours = torch.softmax(torch.from_numpy(logits_ours), 1).numpy()
    p_cv = torch.softmax(torch.from_numpy(logits_cv.astype(np.float32)), 1).numpy()
    assert np.abs(p_ours - p_cv).max() <= 1e-4
    # The comparison means something only if the probabilities are not saturated.
    assert 0.02 < p_ours[:, 1].min() and p_ours[:, 1].max() < 0.98
    assert p_ours[:, 1].std() > 1e-3


@pytest.mark.slow
def test_score_exact_equals_opencv_caffe_runtime_with_caffes_val_transform(caffemodels, tmp_path, cli):
    """End to end: ``ilgnet score --exact`` against OpenCV's Caffe runtime fed Caffe's own val
    transform (cv2.imread, cv2.resize, minus the authors' mean image, centre crop)."""
    photos = camera_photos(8)
    assert cli("weights", "import", caffemodels["v2"], "--name", "rand-exact", "--mean", "ava1").code == 0
    report = tmp_path / "scores.json"
    result = cli("score", *photos, "--weights", "rand-exact", "--exact", "--device", "cpu", "--workers", "0",
                 "--no-cache", "-o", report)
    assert result.code == 0, result.output
    ours = {r["path"]: r["score"] for r in json.loads(report.read_text())["results"]}

    mean = authors_mean()
    off = (RESIZE - CROP) // 2
    blobs = []
    for p in photos:
        bgr = cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (RESIZE, RESIZE), interpolation=cv2.INTER_LINEAR)
        blobs.append(caffe_transform(bgr, mean, off, off, mirror=False))
    net = cv2.dnn.readNetFromCaffe(str(shared_path("ilgnet", "deploy.prototxt")), str(caffemodels["v2"]))
    net.setInput(np.stack(blobs))
    logits = net.forward("loss1/classifier_cjy").reshape(-1, 2).astype(np.float64)
    p_caffe = np.exp(logits[:, 1]) / np.exp(logits).sum(1)
    p_ours = np.array([ours[str(p)] for p in photos])
    print(f"\nscore --exact vs Caffe runtime: max |dP| {np.abs(p_ours - p_caffe).max():.2e}")
    assert np.abs(p_ours - p_caffe).max() <= 1e-4
    assert p_ours.std() > 1e-3  # the comparison means something only if the scores differ


