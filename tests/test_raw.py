"""Camera RAW through rawpy: a valid DNG is built in the test (tifffile), with and without a
usable embedded preview."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import camera_photos
from PIL import Image
from typer.testing import CliRunner

from ilgnet_cli.cli import app
from ilgnet_cli.data.decode import decode
from ilgnet_cli.photos.exif import read_exif

tifffile = pytest.importorskip("tifffile")
pytest.importorskip("rawpy")


def write_dng(path, rgb: np.ndarray, preview_scale: int = 1, orientation: int = 1) -> None:
    """A minimal DNG 1.4: IFD0 = RGB preview, SubIFD = 16-bit RGGB CFA data of the same scene."""
    h, w = rgb.shape[0] // 2 * 2, rgb.shape[1] // 2 * 2
    rgb = rgb[:h, :w]
    cfa = np.zeros((h, w), np.uint16)
    cfa[0::2, 0::2] = rgb[0::2, 0::2, 0]
    cfa[0::2, 1::2] = rgb[0::2, 1::2, 1]
    cfa[1::2, 0::2] = rgb[1::2, 0::2, 1]
    cfa[1::2, 1::2] = rgb[1::2, 1::2, 2]
    cfa = cfa * 256
    preview = np.ascontiguousarray(rgb[::preview_scale, ::preview_scale])
    with tifffile.TiffWriter(path) as tw:
        tw.write(preview, photometric="rgb", subfiletype=1, subifds=1, extratags=[
            (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
            (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
            (50708, "s", 0, "ilgnet TestCam", True),  # UniqueCameraModel
            (271, "s", 0, "ilgnet", True), (272, "s", 0, "TestCam", True),
            (274, "H", 1, orientation, True),
            (50721, "2i", 9, (1, 1, 0, 1, 0, 1) * 3, True),  # ColorMatrix1 (identity)
            (50778, "H", 1, 21, True),  # CalibrationIlluminant1 = D65
            (50728, "2I", 3, (1, 1, 1, 1, 1, 1), True),  # AsShotNeutral
        ])
        tw.write(cfa, photometric=32803, subfiletype=0, extratags=[
            (33421, "H", 2, (2, 2), True),  # CFARepeatPatternDim
            (33422, "B", 4, (0, 1, 1, 2), True),  # CFAPattern RGGB
            (50717, "I", 1, 65535, True),  # WhiteLevel
        ])


@pytest.fixture
def photo_rgb():
    return np.asarray(Image.open(camera_photos(1)[0]).convert("RGB").resize((600, 400)))


def test_dng_scored_via_embedded_preview(tmp_path, photo_rgb, weights_file):
    path = tmp_path / "IMG_0001.DNG"
    write_dng(path, photo_rgb, preview_scale=1)
    d = decode(path, draft=256)
    assert d.format == "RAW (preview)" and d.rgb.shape == (400, 600, 3)
    assert np.abs(d.rgb.astype(int) - photo_rgb.astype(int)).mean() < 1  # the preview itself
    exif = read_exif(path)
    assert exif.make == "ilgnet" and exif.model == "TestCam"
    result = CliRunner().invoke(app, ["score", str(tmp_path), "--weights", str(weights_file), "--device", "cpu",
                                      "--workers", "0", "--json", "--xmp"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "IMG_0001.xmp").exists()  # sidecars work for RAW too


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
    path = tmp_path / "broken.nef"
    path.write_bytes(b"II*\x00" + b"\x00" * 100)
    from ilgnet_cli.data.decode import DecodeError

    with pytest.raises(DecodeError, match="cannot decode RAW"):
        decode(path)
