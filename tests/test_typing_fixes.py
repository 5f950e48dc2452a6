"""Bugs that mypy found: each test failed before its fix."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ilgnet_cli.data.decode import decode

tifffile = pytest.importorskip("tifffile")
from test_raw import write_dng  # noqa: E402 - needs tifffile


def _scene() -> np.ndarray:
    rng = np.random.default_rng(0)
    return (rng.random((400, 600, 3)) * 255).astype(np.uint8)


def test_raw_decodes_from_any_path_like(tmp_path):
    # decode() takes os.PathLike (LoadedWeights.preprocess documents it), but the RAW branch
    # gave LibRaw str(path): for an os.DirEntry that is "<DirEntry 'x.dng'>", not the path.
    write_dng(tmp_path / "IMG_0001.DNG", _scene())
    [entry] = list(os.scandir(tmp_path))
    d = decode(entry, draft=256)
    assert d.format == "RAW (preview)" and d.rgb.shape == (400, 600, 3)


def test_standard_partition_without_ava_folder_or_test_list_is_one_line_error(tmp_path):
    # With only ava_file, the default test list was looked up as None / "aesthetics_image_lists"
    # (a TypeError traceback); it needs the AVA folder or test_list.
    from ilgnet_cli.ava.partition import PartitionError, make_partition

    ava_txt = tmp_path / "AVA.txt"
    ava_txt.write_text("1 953619 0 1 5 17 38 36 15 6 5 1 1 22 1396\n")
    with pytest.raises(PartitionError, match="test list"):
        make_partition("standard", None, tmp_path / "out", ava_file=ava_txt)
