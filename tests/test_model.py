from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_path
from prototxt import analyse

from ilgnet_cli.model.ilgnet import ILGNet, caffe_layer_name, parameter_count, score_from_logits, torch_module_name


@pytest.fixture(scope="module")
def deploy():
    return analyse(shared_path("ilgnet", "deploy.prototxt").read_text())


def test_parameter_count_matches_prototxt(deploy):
    _, counts, _ = deploy
    derived = sum(counts.values())
    assert parameter_count(ILGNet()) == derived
    # Our own derivation, written down once so that a change to either side is noticed.
    assert derived == 150_938_082


def test_every_prototxt_layer_exists_with_its_shape(deploy):
    _, _, param_shapes = deploy
    ours = {name: (tuple(m.weight.shape), tuple(m.bias.shape)) for name, m in ILGNet().parameterised_layers()}
    assert ours == param_shapes


def test_intermediate_blob_shapes_match_prototxt(deploy):
    shapes, _, _ = deploy
    model = ILGNet().eval()
    with torch.no_grad():
        blobs = model.blobs(torch.zeros(1, 3, 227, 227))
    for name, blob in blobs.items():
        assert tuple(blob.shape[1:]) == shapes[name], name


def test_name_mapping_round_trips():
    for name, _ in ILGNet().parameterised_layers():
        assert caffe_layer_name(torch_module_name(name)) == name
    assert torch_module_name("conv1/7x7_s2") == "conv1.7x7_s2"
    assert "loss1.classifier_cjy.weight" in ILGNet().state_dict()


def test_output_is_two_logits_and_eval_is_deterministic():
    torch.manual_seed(0)
    model = ILGNet().eval()
    x = torch.randn(3, 3, 227, 227) * 50
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (3, 2)
    assert torch.equal(a, b)
    s = score_from_logits(a)
    assert s.shape == (3,) and bool(((s >= 0) & (s <= 1)).all())
    assert torch.allclose(s, torch.softmax(a, 1)[:, 1])


def _caffe_ave_pool(x: np.ndarray, k: int, s: int, pad: int) -> np.ndarray:
    """Caffe's PoolingLayer AVE forward, transcribed loop for loop (pooling_layer.cpp)."""
    c, h, w = x.shape
    ph = int(np.ceil((h + 2 * pad - k) / s)) + 1
    pw = int(np.ceil((w + 2 * pad - k) / s)) + 1
    if pad:
        if (ph - 1) * s >= h + pad:
            ph -= 1
        if (pw - 1) * s >= w + pad:
            pw -= 1
    out = np.zeros((c, ph, pw))
    for i, j in itertools.product(range(ph), range(pw)):
        hs, ws = i * s - pad, j * s - pad
        he, we = min(hs + k, h + pad), min(ws + k, w + pad)
        size = (he - hs) * (we - ws)  # the window clipped to the padded input
        hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
        out[:, i, j] = x[:, hs:he, ws:we].sum(axis=(1, 2)) / size
    return out


@pytest.mark.parametrize("size,k,s,pad", [(28, 3, 1, 1), (14, 5, 3, 0), (15, 3, 2, 1), (16, 5, 3, 1), (7, 3, 2, 1)])
def test_pytorch_ave_pool_has_caffe_semantics(size, k, s, pad):
    """Includes ceil-mode windows that overhang the padded input, where ports usually differ."""
    x = np.random.default_rng(size).normal(size=(4, size, size))
    ours = F.avg_pool2d(torch.from_numpy(x)[None], k, stride=s, padding=pad, ceil_mode=True,
                        count_include_pad=True)[0].numpy()
    np.testing.assert_allclose(ours, _caffe_ave_pool(x, k, s, pad), rtol=1e-12, atol=1e-12)
