"""The contact sheet and the first run as a photographer meets them: bursts among single shots,
thumbnails that open the photo, the score distribution, float images, tiny photos."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from ilgnet_cli.decode import decode

# --------------------------------------------------------------------------- float and integer images


def _tiff(tmp_path, name: str, data: np.ndarray):
    path = tmp_path / name
    tifffile.imwrite(path, data)
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
