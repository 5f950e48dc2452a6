"""ILGNet after the authors' deploy.prototxt: layers, shapes, parameter count, Caffe's pooling
semantics, LRN, and the features ``ilgnet learn`` reads."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import shared_path
from prototxt import analyse

from ilgnet_cli.model.ilgnet import (
    FEATURE_DIM,
    I3B_CHANNELS,
    CaffeLRN,
    ILGNet,
    caffe_layer_name,
    empty_ilgnet,
    parameter_count,
    state_shapes,
    torch_module_name,
)
from ilgnet_cli.runtime.forward import p_high


@pytest.fixture(scope="module")
def model():
    """One ILGNet with random weights for the forward tests (building one takes seconds)."""
    torch.manual_seed(0)
    return ILGNet().eval()


@pytest.fixture(scope="module")
def deploy():
    return analyse(shared_path("ilgnet", "deploy.prototxt").read_text())


def test_parameter_count_matches_prototxt(deploy):
    _, counts, _ = deploy
    derived = sum(counts.values())
    assert parameter_count(empty_ilgnet()) == derived
    # Our own derivation, written down once so that a change to either side is noticed.
    assert derived == 150_938_082


def test_every_prototxt_layer_exists_with_its_shape(deploy):
    _, _, param_shapes = deploy
    ours = {name: (tuple(m.weight.shape), tuple(m.bias.shape)) for name, m in empty_ilgnet().parameterised_layers()}
    assert ours == param_shapes


def test_intermediate_blob_shapes_match_prototxt(deploy, model):
    shapes, _, _ = deploy
    with torch.no_grad():
        blobs = model.blobs(torch.zeros(1, 3, 227, 227))
    for name, blob in blobs.items():
        assert tuple(blob.shape[1:]) == shapes[name], name


def test_name_mapping_round_trips():
    model = empty_ilgnet()
    for name, _ in model.parameterised_layers():
        assert caffe_layer_name(torch_module_name(name)) == name
    assert torch_module_name("conv1/7x7_s2") == "conv1.7x7_s2"
    assert "loss1.classifier_cjy.weight" in model.state_dict()


def test_output_is_two_logits_and_eval_is_deterministic(model):
    x = torch.randn(3, 3, 227, 227) * 50
    with torch.no_grad():
        a, b = model(x), model(x)
    assert a.shape == (3, 2)
    assert torch.equal(a, b)
    s = p_high(a)
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


def test_lrn_is_computed_in_fp32_for_bf16_inputs():
    x = torch.rand(2, 64, 28, 28) * 150  # activations reach ~100 after conv1
    lrn = CaffeLRN(5, alpha=1e-4, beta=0.75, k=1.0)
    ref = lrn(x)
    out = lrn(x.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    assert float(((out.float() - ref).abs() / ref.abs().clamp(min=1)).max()) < 8e-3  # bf16 rounding of the output only


def test_lrn_is_torchs_local_response_norm():
    x = torch.rand(2, 64, 9, 9) * 150
    torch.testing.assert_close(CaffeLRN(5, 1e-4, 0.75, 1.0)(x), torch.nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)(x))


def test_an_empty_model_is_not_initialised_and_the_expected_shapes_are_the_prototxts(deploy):
    """Loading weights builds ILGNet without its random initialisation (1.8 s and 600 MB written
    for nothing) and assigns the loaded tensors; the shapes a weights file is checked against are
    the prototxt's."""
    _, _, param_shapes = deploy
    model = empty_ilgnet()
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    torch.manual_seed(0)
    assert torch.nn.Linear(8, 8).weight.std() > 0.1  # torch's own initialisation is back afterwards
    expected = {f"{torch_module_name(name)}.{part}": shape for name, shapes in param_shapes.items()
                for part, shape in zip(("weight", "bias"), shapes, strict=True)}
    assert state_shapes() == expected


def test_forward_features_are_the_logits_and_the_pooled_trunk(model):
    x = torch.randn(2, 3, 227, 227) * 50
    with torch.no_grad():
        logits, feats = model.forward_features(x)
        blobs = model.blobs(x)
        torch.testing.assert_close(logits, model(x))
    assert feats.shape == (2, FEATURE_DIM) and len(I3B_CHANNELS) == 256 and I3B_CHANNELS[-1] == 479
    # 256 channel means of inception_3a, then 256 of inception_3b, then loss1/conv by quadrant
    torch.testing.assert_close(feats[:, :256], blobs["inception_3a/output"].mean(dim=(2, 3)))
    torch.testing.assert_close(feats[:, 256:512], blobs["inception_3b/output"][:, list(I3B_CHANNELS)].mean(dim=(2, 3)))
    conv = blobs["loss1/conv"]  # (n, 128, 4, 4): index c*4 + quadrant
    torch.testing.assert_close(feats[:, 512 + 4 * 5 + 3], conv[:, 5, 2:, 2:].mean(dim=(1, 2)))
