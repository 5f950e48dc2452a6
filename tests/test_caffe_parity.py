"""ILGNet in PyTorch vs an independent Caffe runtime (OpenCV's dnn Caffe importer).

Random weights are written as a caffemodel with the protobuf package (tests/caffe_schema.py),
imported with ``ilgnet weights import`` (our streaming reader), and both runtimes see the same
preprocessed blobs of real camera photos.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import camera_photos, shared_path
from typer.testing import CliRunner

from ilgnet_cli import store
from ilgnet_cli.cli import app
from ilgnet_cli.decode import decode
from ilgnet_cli.preprocess import CROP, MEANS_BGR, RESIZE, preprocess, resize_bilinear

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
    return torch.stack([preprocess(decode(p).rgb, MEANS_BGR["ava1"]) for p in photos])


@pytest.mark.parametrize("fmt", ["v2", "v1"])
def test_ilgnet_matches_opencv_caffe_runtime(fmt, caffemodels, photo_blobs):
    result = CliRunner().invoke(app, ["weights", "import", str(caffemodels[fmt]), "--name", f"rand-{fmt}",
                                      "--mean", "ava1"])
    assert result.exit_code == 0, result.output
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


def test_preprocessing_matches_opencv_reference():
    """Our blob vs a reference built with OpenCV: cv2.resize to 256x256, centre crop, BGR, mean.

    Our resize reimplements OpenCV's INTER_LINEAR fixed-point arithmetic, so the measured
    difference on the shared camera photos is 0 grey levels (bit-identical). A different
    OpenCV build could round differently, hence the tolerance of one level on <0.1% of values.
    """
    photos = camera_photos(12)
    worst, share = 0.0, 0.0
    for p in photos:
        rgb = decode(p).rgb
        bgr = cv2.resize(np.ascontiguousarray(rgb[:, :, ::-1]), (RESIZE, RESIZE), interpolation=cv2.INTER_LINEAR)
        off = (RESIZE - CROP) // 2
        ref = bgr[off:off + CROP, off:off + CROP].transpose(2, 0, 1).astype(np.float32)
        ref -= np.asarray(MEANS_BGR["ava1"], np.float32)[:, None, None]
        diff = np.abs(preprocess(rgb, MEANS_BGR["ava1"]).numpy() - ref)
        worst = max(worst, float(diff.max()))
        share = max(share, float((diff > 1e-3).mean()))
    print(f"\npreprocessing vs OpenCV reference: max |diff| {worst:g} grey levels, "
          f"largest share of differing values in one photo {share:.4%}")
    assert worst <= 1.0 + 1e-4
    assert share < 1e-3


def test_resize_handles_upscaling_and_tiny_images():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (75, 100), (300, 7), (256, 256), (512, 512)]:
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ours = resize_bilinear(img)
        ref = cv2.resize(img, (RESIZE, RESIZE), interpolation=cv2.INTER_LINEAR)
        assert ours.shape == (RESIZE, RESIZE, 3)
        # 512 -> 256 is OpenCV's exact 2x case, which it computes as INTER_AREA.
        tol = 1 if (h, w) != (512, 512) else 2
        assert np.abs(ours.astype(int) - ref.astype(int)).max() <= tol, (h, w)
