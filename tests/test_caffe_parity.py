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

from ilgnet_cli.cli import app
from ilgnet_cli.data.decode import decode
from ilgnet_cli.model import store
from ilgnet_cli.model.transform import CROP, RESIZE, parse_mean, preprocess, resize_bilinear, to_blob

cv2 = pytest.importorskip("cv2")


def authors_mean(which: str = "AVA1") -> np.ndarray:
    """The authors' mean image straight from their release (not ilgnet's shipped copy)."""
    return np.load(shared_path("ilgnet", "mean", f"{which}_mean.npy"), allow_pickle=False,
                   encoding="latin1").astype(np.float32)


def caffe_transform(bgr256: np.ndarray, mean: np.ndarray, h_off: int, w_off: int, mirror: bool) -> np.ndarray:
    """Caffe's DataTransformer::Transform(Datum) for uint8 data with a mean file, loop for loop."""
    height, width = bgr256.shape[:2]
    datum = bgr256.transpose(2, 0, 1).reshape(-1).astype(np.float32)  # Datum: C,H,W
    flat_mean = mean.reshape(-1)
    out = np.empty(3 * CROP * CROP, np.float32)
    for c in range(3):
        for h in range(CROP):
            for w in range(CROP):
                data_index = (c * height + h_off + h) * width + w_off + w
                top_index = (c * CROP + h) * CROP + ((CROP - 1 - w) if mirror else w)
                out[top_index] = datum[data_index] - flat_mean[data_index]
    return out.reshape(3, CROP, CROP)

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
    """Our blob vs Caffe's val transform built with OpenCV: cv2.imread, cv2.resize to 256x256,
    the authors' mean image subtracted, centre crop 227 at offset 14.

    Our resize reimplements OpenCV's INTER_LINEAR fixed-point arithmetic and our decoder is the
    same libjpeg-turbo: the measured difference on the shared camera photos is 0 (bit-identical).
    """
    photos = camera_photos(12)
    mean = authors_mean()
    off = (RESIZE - CROP) // 2
    worst = 0.0
    for p in photos:
        bgr = cv2.resize(cv2.imread(str(p), cv2.IMREAD_COLOR), (RESIZE, RESIZE), interpolation=cv2.INTER_LINEAR)
        ref = bgr.transpose(2, 0, 1).astype(np.float32) - mean
        ref = ref[:, off:off + CROP, off:off + CROP]
        worst = max(worst, float(np.abs(preprocess(decode(p).rgb, parse_mean("ava1")).numpy() - ref).max()))
    print(f"\npreprocessing vs Caffe's val transform (OpenCV): max |diff| {worst:g}")
    assert worst <= 1e-4


def test_shipped_mean_images_are_the_authors():
    for which in ("AVA1", "AVA2"):
        mean = parse_mean(which.lower())
        assert mean.image is not None and mean.image.dtype == np.float32
        np.testing.assert_array_equal(mean.image, authors_mean(which))


@pytest.mark.parametrize(("top", "left", "mirror"), [(14, 14, False), (0, 29, True), (7, 3, True), (29, 0, False)])
def test_training_crops_match_caffe_data_transformer(top, left, mirror):
    """Random crops and mirrors subtract the mean image at the same window, mirrored with it."""
    rgb = resize_bilinear(decode(camera_photos(1)[0]).rgb)
    ours = to_blob(rgb, parse_mean("ava1"), top, left, mirror)
    theirs = caffe_transform(np.ascontiguousarray(rgb[:, :, ::-1]), authors_mean(), top, left, mirror)
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.slow
def test_score_exact_equals_opencv_caffe_runtime_with_caffes_val_transform(caffemodels, tmp_path):
    """End to end: ``ilgnet score --exact`` against OpenCV's Caffe runtime fed Caffe's own val
    transform (cv2.imread, cv2.resize, minus the authors' mean image, centre crop)."""
    photos = camera_photos(8)
    assert CliRunner().invoke(app, ["weights", "import", str(caffemodels["v2"]), "--name", "rand-exact",
                                    "--mean", "ava1"]).exit_code == 0
    report = tmp_path / "scores.json"
    result = CliRunner().invoke(app, ["score", *map(str, photos), "--weights", "rand-exact", "--exact",
                                      "--device", "cpu", "--workers", "0", "--no-cache", "-o", str(report)])
    assert result.exit_code == 0, result.output
    ours = {r["path"]: r["score"] for r in __import__("json").loads(report.read_text())["results"]}

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


def test_resize_handles_upscaling_and_tiny_images():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (75, 100), (17, 200), (100, 100), (300, 7), (256, 256), (512, 512)]:
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        ours = resize_bilinear(img)
        ref = cv2.resize(img, (RESIZE, RESIZE), interpolation=cv2.INTER_LINEAR)
        assert ours.shape == (RESIZE, RESIZE, 3)
        # 512 -> 256 is OpenCV's exact 2x case, which it computes as INTER_AREA.
        tol = 0 if (h, w) != (512, 512) else 2
        assert np.abs(ours.astype(int) - ref.astype(int)).max() <= tol, (h, w)
