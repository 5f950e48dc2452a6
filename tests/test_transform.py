"""What the model is fed (:class:`Transform`): the authors' pipeline bit for bit against OpenCV
and Caffe's DataTransformer, the decode modes and what each asks of the decoder, test-time and
training crops, and the mean that belongs to the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import authors_mean, caffe_transform, camera_photos

from ilgnet_cli.data.decode import decode
from ilgnet_cli.model.transform import (
    CENTRE,
    CROP,
    REFERENCE_SIDE,
    RESIZE,
    Crops,
    DecodeMode,
    Mean,
    MeanError,
    Transform,
    antialias,
    channel_mean,
    parse_mean,
    preprocess,
    resize_bilinear,
    to_blob,
    windows,
)

cv2 = pytest.importorskip("cv2")
MEAN = parse_mean("ava1")


# --------------------------------------------------------------------------- the authors' pipeline, exactly


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


def test_preprocess_is_the_exact_transform_with_the_centre_crop():
    rgb = np.random.default_rng(1).integers(0, 256, size=(300, 400, 3), dtype=np.uint8)
    x = preprocess(rgb, MEAN)
    assert x.shape == (3, CROP, CROP) and x.dtype == torch.float32
    torch.testing.assert_close(x, Transform(MEAN)(rgb), rtol=0, atol=0)
    np.testing.assert_array_equal(x.numpy(), to_blob(resize_bilinear(rgb), MEAN, CENTRE, CENTRE))


# --------------------------------------------------------------------------- decode modes


def test_each_decode_mode_says_what_it_asks_of_the_decoder_and_what_checks_it():
    exact = Transform(MEAN)
    assert exact.decode is DecodeMode.EXACT and exact.crops is Crops.CENTRE
    assert (exact.key, exact.decode_request(), exact.faithful) == ("exact", {}, exact)
    fast = exact.with_(decode=DecodeMode.FAST)
    # DCT-scaled to at least twice the reference side: the DCT's own filtering then only touches
    # detail the Lanczos step removes anyway.
    assert (fast.key, fast.decode_request()) == ("fast-800", {"long_side": 2 * REFERENCE_SIDE})
    assert fast.faithful.decode is DecodeMode.REFERENCE and fast.faithful.key == "reference-800"
    draft = exact.with_(decode=DecodeMode.DRAFT)
    assert (draft.key, draft.decode_request(), draft.faithful.key) == ("draft", {"draft": RESIZE}, "reference-800")
    reference = exact.with_(decode=DecodeMode.REFERENCE)
    assert (reference.key, reference.decode_request(), reference.faithful) == ("reference-800", {}, reference)
    assert fast.with_(reference_side=640).key == "fast-640"  # the key changes with what changes the pixels
    for t in (exact, fast, draft, reference):
        text = t.describe()
        assert "ava1 mean image" in text and "227x227" in text and "INTER_LINEAR" in text


def test_reference_brings_a_large_photo_to_800_pixels_with_an_antialiased_resize():
    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, size=(1500, 2000, 3), dtype=np.uint8)
    small = antialias(big)
    assert small.shape == (600, 800, 3)  # long side 800, aspect kept
    assert antialias(small) is small and antialias(big[:700, :500]).shape == (700, 500, 3)  # never upscaled
    reference = Transform(MEAN, decode=DecodeMode.REFERENCE)
    np.testing.assert_array_equal(reference.resize(big), resize_bilinear(small))
    np.testing.assert_array_equal(Transform(MEAN).resize(big), resize_bilinear(big))  # exact: the authors' resize
    square = big[:256, :256]
    assert Transform(MEAN).resize(square) is square  # already the authors' size


def test_fast_decoding_sees_nearly_the_reference_picture(camera):
    """DCT-scaled decoding of a large JPEG (at least 800 px kept) then the reference steps: a
    few grey levels from decoding every pixel (the fidelity gate bounds what that does to scores)."""
    photo = next(p for p in camera(12) if max(decode(p, draft=64).size) >= 4 * REFERENCE_SIDE)
    fast, reference = Transform(MEAN, DecodeMode.FAST), Transform(MEAN, DecodeMode.REFERENCE)
    quick = decode(photo, **fast.decode_request())
    assert quick.scale > 1 and max(quick.rgb.shape[:2]) >= 2 * REFERENCE_SIDE
    a = fast.resize(quick.rgb).astype(int)
    b = reference.resize(decode(photo).rgb).astype(int)
    assert np.abs(a - b).mean() < 1.5


# --------------------------------------------------------------------------- crops


def test_test_time_windows():
    e = RESIZE - CROP
    assert windows(Crops.CENTRE) == [(CENTRE, CENTRE, False)]
    assert windows(Crops.MIRROR) == [(CENTRE, CENTRE, False), (CENTRE, CENTRE, True)]
    ten = windows(Crops.TENCROP)
    assert len(ten) == len(set(ten)) == 10 and {(t, left) for t, left, _ in ten} == {
        (0, 0), (0, e), (e, 0), (e, e), (CENTRE, CENTRE)}
    with pytest.raises(ValueError):
        windows(Crops.RANDOM)


def test_tta_blobs_are_the_windows_and_a_mirror_is_the_mirrored_blob():
    rgb = resize_bilinear(np.random.default_rng(3).integers(0, 256, size=(300, 300, 3), dtype=np.uint8))
    centre = Transform(MEAN).blobs(rgb)
    both = Transform(MEAN, crops=Crops.MIRROR).blobs(rgb)
    ten = Transform(MEAN, crops=Crops.TENCROP)(rgb)
    assert centre.shape == (3, CROP, CROP) and both.shape == (2, 3, CROP, CROP)
    assert tuple(ten.shape) == (10, 3, CROP, CROP)
    np.testing.assert_array_equal(both[0], centre)
    np.testing.assert_array_equal(both[1], centre[:, :, ::-1])  # (image - mean) mirrored over the window
    for blob, (top, left, mirror) in zip(ten.numpy(), windows(Crops.TENCROP), strict=True):
        np.testing.assert_array_equal(blob, to_blob(rgb, MEAN, top, left, mirror))


def test_training_crops_are_random_windows_and_mirrors_reproducible_by_seed():
    """Training's crop (Caffe's train phase): any of the 30x30 windows, mirrored half the time,
    the same for the same generator. A zero mean and pixels that encode their position show
    which window was taken."""
    ys, xs = np.mgrid[0:RESIZE, 0:RESIZE]
    rgb = np.stack([xs, ys, np.zeros_like(xs)], axis=2).astype(np.uint8)  # R = x, G = y
    random = Transform(channel_mean((0.0, 0.0, 0.0)), crops=Crops.RANDOM)
    with pytest.raises(ValueError):
        random.blobs(rgb)
    seen = set()
    for seed in range(40):
        blob = random.blobs(rgb, np.random.default_rng(seed))
        np.testing.assert_array_equal(blob, random.blobs(rgb, np.random.default_rng(seed)))
        red, green = blob[2], blob[1]  # BGR
        top, left = int(green[0, 0]), int(min(red[0, 0], red[0, -1]))
        mirror = bool(red[0, 0] > red[0, -1])
        assert 0 <= top <= RESIZE - CROP and 0 <= left <= RESIZE - CROP
        np.testing.assert_array_equal(blob, to_blob(rgb, random.mean, top, left, mirror))
        seen.add((top, left, mirror))
    assert len(seen) > 30 and {m for _, _, m in seen} == {False, True}


# --------------------------------------------------------------------------- the mean


def test_a_mean_says_what_it_is_and_its_digest_tells_means_apart(tmp_path):
    ava1, ava2 = parse_mean("ava1"), parse_mean("ava2")
    assert ava1.kind == "image" and ava1.describe() == "ava1 mean image" and ava1.digest != ava2.digest
    assert parse_mean("imagenet").describe() == "per-channel 104,117,123 (imagenet)"
    assert parse_mean("1.5,2,3").describe() == "per-channel 1.5,2,3"
    assert parse_mean("1.5,2,3").digest == channel_mean((1.5, 2.0, 3.0)).digest != parse_mean("1.5,2,3.5").digest
    np.save(tmp_path / "m.npy", ava1.image)
    from_file = parse_mean(str(tmp_path / "m.npy"))
    # A mean image from a file is named by what it is (its digest), not by where it came from.
    assert from_file.digest == ava1.digest
    assert from_file.describe() == f"mean image sha256:{ava1.digest[:12]} (from a file)"
    assert isinstance(from_file, Mean) and repr(from_file) == f"Mean({from_file.describe()})"


@pytest.mark.parametrize(("value", "match"), [
    ("1,2", "mean must be ava1, ava2, imagenet"),
    ("a,b,c", "must be numbers"),
    ("nan,1,2", "finite"),
    ("1e9,1,2", "finite"),
    ("-5,0,0", "finite"),
])
def test_unusable_means_are_one_line_errors(value, match):
    with pytest.raises(MeanError, match=match) as info:
        parse_mean(value)
    assert "\n" not in str(info.value)


def test_mean_files_are_checked_before_their_data_is_read(tmp_path):
    huge = tmp_path / "huge.npy"
    with huge.open("wb") as fh:  # a header declaring 3x100000x100000 float64 and no data
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": (3, 100000, 100000)})
    np.save(tmp_path / "str.npy", np.array(["1", "abc", "3"]))
    np.save(tmp_path / "complex.npy", np.full(3, 100 + 1j))
    with (tmp_path / "arch.npy").open("wb") as fh:  # an .npz archive named .npy
        np.savez(fh, image=np.zeros((3, 256, 256)))
    image = np.full((3, 256, 256), 100, np.float32)
    image[1, 5, 5] = np.nan
    np.save(tmp_path / "nan.npy", image)
    (tmp_path / "junk.binaryproto").write_bytes(b"not a mean at all" * 100)
    for name in ("huge.npy", "str.npy", "complex.npy", "nan.npy", "junk.binaryproto"):
        with pytest.raises(MeanError) as info:
            parse_mean(str(tmp_path / name))
        assert "\n" not in str(info.value), name
    with pytest.raises(MeanError, match="not an .npz archive"):
        parse_mean(str(tmp_path / "arch.npy"))
