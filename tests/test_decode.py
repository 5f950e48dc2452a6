"""Decoding what photographers have: every shared photo decodes or is refused with its reason
(../shared/photos/manifest.tsv), EXIF orientation, float and 16-bit images, multi-frame files,
camera RAW (a DNG built here, with and without a usable preview), and the reduced decodes that
fast and draft scoring ask for."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
from helpers import camera_photos, shared_path, write_dng
from PIL import Image

from ilgnet_cli.data.decode import MAX_PIXELS, DecodeError, decode, draft_size
from ilgnet_cli.model.transform import DecodeMode, Transform, parse_mean, resize_bilinear
from ilgnet_cli.photos.exif import read_exif


def manifest() -> list[dict]:
    with shared_path("photos", "manifest.tsv").open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def expected_reason(expected: str) -> str:
    """Manifest 'reject: X' -> the prefix our reason must start with."""
    return expected.removeprefix("reject: ").replace(" by Pillow", "").rstrip(")")


# --------------------------------------------------------------------------- the shared photos


def test_every_shared_photo_decodes_or_is_refused_with_its_reason():
    """As ``ilgnet score`` decodes by default (JPEGs DCT-scaled, see Transform.decode_request)."""
    photos = shared_path("photos")
    fast = Transform(parse_mean("ava1"), DecodeMode.FAST).decode_request()
    for row in manifest():
        path = photos / row["path"]
        if row["expected"] == "score":
            d = decode(path, **fast)
            assert d.rgb.ndim == 3 and d.rgb.shape[2] == 3 and d.rgb.dtype == np.uint8, row["path"]
        else:
            with pytest.raises(DecodeError) as info:
                decode(path, **fast)
            assert str(info.value).startswith(expected_reason(row["expected"])), (row, str(info.value))
            assert "\n" not in str(info.value)


def _orientation_files(kind: str) -> list[str]:
    folder = shared_path("photos", "orientation")
    return [str(folder / f"{kind}_{i}.jpg") for i in range(9)]


@pytest.mark.parametrize("kind", ["landscape", "portrait"])
def test_orientation_samples_are_the_same_picture(kind):
    """After EXIF orientation every sample is the upright picture.

    The samples were re-encoded after rotating, so they differ by JPEG noise (measured: mean
    |diff| 0.3-1.8 grey levels of the 256x256 input); a wrong or missing rotation gives > 20.
    """
    files = _orientation_files(kind)
    ref = resize_bilinear(decode(files[1], draft=256).rgb).astype(float)
    for f in files:
        diff = np.abs(resize_bilinear(decode(f, draft=256).rgb).astype(float) - ref).mean()
        assert diff < 2.5, (f, diff)
    wrong = np.abs(np.rot90(ref, 2) - ref).mean()
    assert wrong > 20


# --------------------------------------------------------------------------- reduced decodes


def test_fast_decoding_keeps_the_long_side_at_least_what_was_asked():
    assert draft_size((4000, 3000), None, 800) == (800, 600)
    assert draft_size((1500, 1000), None, 800) is None  # no DCT scale keeps 800: every pixel
    assert draft_size((4000, 3000), 256, None) == (256, 256) and draft_size((4000, 3000), None, None) is None
    big = next(p for p in camera_photos(12) if max(decode(p, draft=64).size) >= 3200)
    full, fast = decode(big), decode(big, long_side=800)
    assert full.scale == 1 and fast.scale in (2, 4) and fast.size == full.size  # size: as stored
    assert max(fast.rgb.shape[:2]) >= 800 and max(fast.rgb.shape[:2]) < max(full.rgb.shape[:2])


def test_pixel_limit_is_checked_before_decoding():
    photo = camera_photos(1)[0]
    w, h = decode(photo, draft=64).size
    with pytest.raises(DecodeError, match=r"decompression bomb \(.* pixels declared, limit"):
        decode(photo, max_pixels=w * h - 1)
    assert decode(photo, max_pixels=w * h).size == (w, h) and MAX_PIXELS == 120_000_000


# --------------------------------------------------------------------------- odd formats


def test_odd_formats_convert_correctly(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(ramp, "F").save(tmp_path / "float.tiff")
    rgb = decode(tmp_path / "float.tiff").rgb
    assert rgb.shape == (64, 64, 3) and 100 < rgb.mean() < 155  # not black
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(tmp_path / "gray16.png")
    assert 100 < decode(tmp_path / "gray16.png").rgb.mean() < 155
    base = Image.open(camera_photos(1)[0]).convert("RGB").resize((320, 240))
    base.save(tmp_path / "stereo.mpo", "MPO", save_all=True, append_images=[base.transpose(Image.FLIP_LEFT_RIGHT)])
    decoded = decode(tmp_path / "stereo.mpo", draft=256)
    assert decoded.format == "MPO" and decoded.rgb.shape == (240, 320, 3)
    frames = [Image.new("RGB", (40, 30), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    first = decode(tmp_path / "anim.gif").rgb
    assert first[..., 0].mean() > 200 and first[..., 2].mean() < 50  # the first (red) frame


def _tiff(tmp_path, name: str, data: np.ndarray):
    path = tmp_path / name
    pytest.importorskip("tifffile").imwrite(path, data)
    return path


def test_float_tiff_outside_unit_range_is_scaled_by_its_own_range(tmp_path):
    ramp = np.linspace(-3.14, 3.14, 64 * 64, dtype=np.float32).reshape(64, 64)
    rgb = decode(_tiff(tmp_path, "phase.tif", ramp)).rgb
    grey = rgb[..., 0].astype(int)
    assert grey.min() == 0 and grey.max() == 255  # was 0..3: an all-black picture
    assert abs(int(grey[32, 0]) - 128) <= 2  # the middle of the range is mid-grey
    assert (np.diff(grey.ravel()) >= 0).all()  # order kept


def test_float_tiff_in_unit_range_is_scaled_as_before(tmp_path):
    ramp = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    ramp[0, 0], ramp[-1, -1] = 0.25, 0.75  # a 0..1 image that does not use the whole range
    grey = decode(_tiff(tmp_path, "unit.tif", ramp)).rgb[..., 0]
    assert grey[0, 0] == 64 and grey[-1, -1] == 191  # not stretched to 0..255
    dim = np.full((16, 16), 0.2, dtype=np.float32)
    assert (decode(_tiff(tmp_path, "dim.tif", dim)).rgb == 51).all()


@pytest.mark.parametrize("value", [0.0, 7.5, -2.0, 1e30])
def test_constant_float_tiff_decodes(tmp_path, value):
    rgb = decode(_tiff(tmp_path, "flat.tif", np.full((16, 16), value, dtype=np.float32))).rgb
    assert rgb.shape == (16, 16, 3) and len(np.unique(rgb)) == 1


def test_float_tiff_with_nan_and_inf_pixels_decodes(tmp_path):
    data = np.linspace(-10, 10, 32 * 32, dtype=np.float32).reshape(32, 32)
    data[0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    grey = decode(_tiff(tmp_path, "holes.tif", data)).rgb[..., 0]
    assert grey[0, 0] == 0 and grey[0, 3] == 0  # NaN -> 0
    assert grey[0, 1] == 255 and grey[0, 2] == 0  # +inf at the top, -inf at the bottom
    finite = grey[np.isfinite(data)]
    assert finite.min() <= 1 and finite.max() == 255  # the finite pixels set the range
    allnan = np.full((8, 8), np.nan, dtype=np.float32)
    assert (decode(_tiff(tmp_path, "nan.tif", allnan)).rgb == 0).all()


def test_signed_integer_tiff_with_negative_values_is_visible(tmp_path):
    data = np.linspace(-30000, 30000, 64 * 64).astype(np.int32).reshape(64, 64)
    with Image.open(_tiff(tmp_path, "signed.tif", data)) as img:
        assert img.mode == "I"
    grey = decode(tmp_path / "signed.tif").rgb[..., 0].astype(int)
    assert grey.min() == 0 and grey.max() == 255 and abs(int(grey[32, 0]) - 128) <= 2


# --------------------------------------------------------------------------- camera RAW

@pytest.fixture
def photo_rgb():
    pytest.importorskip("rawpy")
    return np.asarray(Image.open(camera_photos(1)[0]).convert("RGB").resize((600, 400)))


def test_dng_decoded_via_embedded_preview(tmp_path, photo_rgb):
    path = tmp_path / "IMG_0001.DNG"
    write_dng(path, photo_rgb, preview_scale=1)
    d = decode(path, draft=256)
    assert d.format == "RAW (preview)" and d.rgb.shape == (400, 600, 3)
    assert np.abs(d.rgb.astype(int) - photo_rgb.astype(int)).mean() < 1  # the preview itself
    exif = read_exif(path)
    assert exif.make == "ilgnet" and exif.model == "TestCam"


def test_dng_without_usable_preview_is_demosaiced(tmp_path, photo_rgb):
    path = tmp_path / "small_preview.dng"
    write_dng(path, photo_rgb, preview_scale=4)  # 150x100 preview: too small for 256
    d = decode(path, draft=256)
    assert d.format == "RAW (demosaic)" and d.rgb.shape == (200, 300, 3)  # half size
    # Same picture: strongly correlated with the source, despite white balance and gamma.
    small = photo_rgb[::2, ::2].mean(axis=2).ravel()
    assert np.corrcoef(small, d.rgb.mean(axis=2).ravel())[0, 1] > 0.8


def test_raw_orientation_applied(tmp_path, photo_rgb):
    path = tmp_path / "rotated.dng"
    write_dng(path, photo_rgb, orientation=6)
    d = decode(path, draft=256)
    assert d.rgb.shape == (600, 400, 3)


def test_broken_raw_gets_a_reason(tmp_path):
    pytest.importorskip("rawpy")
    path = tmp_path / "broken.nef"
    path.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(DecodeError, match="cannot decode RAW"):
        decode(path)


def test_raw_decodes_from_any_path_like(tmp_path, photo_rgb):
    """decode() takes os.PathLike, but the RAW branch gave LibRaw str(path): for an os.DirEntry
    that is "<DirEntry 'x.dng'>", not the path (found by mypy)."""
    write_dng(tmp_path / "IMG_0001.DNG", photo_rgb)
    [entry] = list(os.scandir(tmp_path))
    d = decode(entry, draft=256)
    assert d.format == "RAW (preview)" and d.rgb.shape == (400, 600, 3)
