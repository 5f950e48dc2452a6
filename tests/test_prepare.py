"""``ilgnet prepare`` (ava/prepare.py) and AVA images as a source (ava/source.py): resized once to
256x256 as the authors' LMDB was, resumable, one decode mode per run."""

from __future__ import annotations

import json

import numpy as np
import torch
from helpers import tiny_partition

from ilgnet_cli.ava.prepare import PreparedImages, prepare
from ilgnet_cli.ava.records import read_label_list
from ilgnet_cli.ava.source import AvaImages, resized_image
from ilgnet_cli.data.decode import decode
from ilgnet_cli.model.transform import Transform, parse_mean, resize_bilinear


def test_one_decode_mode_per_run(tmp_path, cli):
    """The authors' convert_imageset decoded every pixel: so do prepare, train and eval by default,
    and a cache prepared otherwise is refused instead of mixed in."""
    folder = tiny_partition(tmp_path, "ilgnet-ava1", "AVA1")
    images = tmp_path / "ava" / "images"
    first = read_label_list(folder / "train.txt")[0][0]
    full = resize_bilinear(decode(images / f"{first}.jpg").rgb)
    assert np.array_equal(resized_image(first, images), full)
    prepared = tmp_path / "prep"
    result = cli("prepare", "--dataset", folder, "--images", images, "--out", prepared, "--draft", "--jobs", "1")
    assert result.code == 0, result.output
    result = cli("train", "--dataset", folder, "--prepared", prepared, "--init", "random", "--iters", "1",
                 "--batch-size", "4", "--workers", "0", "--device", "cpu", "--out", tmp_path / "r")
    assert result.code == 2 and "draft" in result.output
    result = cli("prepare", "--dataset", folder, "--images", images, "--out", prepared, "--jobs", "1")
    assert result.code == 2 and "draft" in result.output  # a resumed prepare keeps its mode


def test_prepared_images_are_the_decoded_ones_and_a_run_resumes(tmp_path):
    folder = tiny_partition(tmp_path, "ilgnet-ava1", "AVA1")
    images = tmp_path / "ava" / "images"
    ids = [i for i, _ in read_label_list(folder / "train.txt")][:5]
    (images / f"{ids[2]}.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    counts = prepare(ids + [999_999_999], images, tmp_path / "prep", jobs=1)
    assert json.loads((tmp_path / "prep" / "prepare.json").read_text()) == {"decode": "exact"}
    cache = PreparedImages(tmp_path / "prep")
    assert cache.decode == "exact" and ids[2] not in cache and 999_999_999 not in cache and ids[0] in cache
    np.testing.assert_array_equal(cache.get(ids[0]), resized_image(ids[0], images))
    assert isinstance(counts, dict)
    again = prepare(ids + [999_999_999], images, tmp_path / "prep", jobs=1)  # only the failed ones are tried again
    assert again == counts


def test_ava_images_as_a_source(tmp_path):
    """What eval and training's validation predict from: the test transform of images/<id>.jpg or
    of a prepared row; an image that cannot be read is an error in its place."""
    folder = tiny_partition(tmp_path, "ilgnet-ava1", "AVA1")
    images = tmp_path / "ava" / "images"
    items = read_label_list(folder / "test.txt")[:3] + [(123456789, 1)]
    source = AvaImages(items, images)
    transform = Transform(parse_mean("ava1"))
    assert len(source) == 4 and source.name(0) == f"{items[0][0]}.jpg" and source.label(3) == 1
    item = source.load(0, transform)
    assert item.error is None and item.meta == {"id": items[0][0], "label": items[0][1]}
    torch.testing.assert_close(item.tensor, transform(decode(images / f"{items[0][0]}.jpg").rgb))
    missing = source.load(3, transform)
    assert missing.tensor is None and "No such file" in missing.error
    prepare([i for i, _ in items[:3]], images, tmp_path / "prep", jobs=1)
    cached = AvaImages(items, images, PreparedImages(tmp_path / "prep"))
    torch.testing.assert_close(cached.load(0, transform).tensor, item.tensor)  # the same pixels either way
