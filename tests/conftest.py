from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))

from localserver import LocalServer  # noqa: E402

SHARED = TESTS.parent.parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared reference data not available: {path}")
    return path


@pytest.fixture
def shared():
    return shared_path


# The user's own store, read before the autouse fixture below points ILGNET_HOME at an empty one:
# ILGNET_TEST_WEIGHTS=ilgnet-ava1 names weights installed there.
_USER_HOME = os.environ.get("ILGNET_HOME")


def real_weights(monkeypatch):
    """The real weights ILGNET_TEST_WEIGHTS names (a store name or a .safetensors path), or None."""
    from ilgnet_cli.model import store

    name = os.environ.get("ILGNET_TEST_WEIGHTS")
    if not name:
        return None
    if _USER_HOME is None:
        monkeypatch.delenv("ILGNET_HOME")
    else:
        monkeypatch.setenv("ILGNET_HOME", _USER_HOME)
    return store.load_model(name)


@pytest.fixture(autouse=True)
def ilgnet_home(tmp_path, monkeypatch):
    """Every test gets an empty weights store and no network access to real hosts."""
    home = tmp_path / "ilgnet-home"
    monkeypatch.setenv("ILGNET_HOME", str(home))
    monkeypatch.setenv("ILGNET_DATA", str(tmp_path / "ilgnet-data"))
    # Scores in tests compare across runs and code paths: fp32 everywhere unless a test asks for
    # bf16 (tests/test_precision.py sets ILGNET_NATIVE_BF16=1 to exercise the guard).
    monkeypatch.setenv("ILGNET_NATIVE_BF16", "0")
    monkeypatch.delenv("ILGNET_OFFLINE", raising=False)
    monkeypatch.delenv("ILGNET_REGISTRY", raising=False)
    return home


@pytest.fixture
def server():
    srv = LocalServer()
    try:
        yield srv
    finally:
        srv.close()


def camera_photos(n: int = 8) -> list[Path]:
    folder = shared_path("photos", "camera")
    photos = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".jpg")
    if len(photos) < n:
        pytest.skip(f"need {n} camera photos in {folder}")
    return photos[:n]


def random_ilgnet_layers(seed: int = 0) -> list[tuple[str, str, list[np.ndarray]]]:
    """Random ILGNet weights as (caffe layer, type, [weight, bias]), logits kept unsaturated.

    Weights are Xavier-like; the classifier is scaled down (x0.05) so that softmax probabilities
    on real photos stay far from 0 and 1, where a probability comparison is meaningful.
    """
    from ilgnet_cli.model.ilgnet import ILGNet

    torch.manual_seed(seed)
    model = ILGNet()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, m in model.parameterised_layers():
            m.bias.uniform_(-0.1, 0.3, generator=gen)
        cls = model.loss1["classifier_cjy"]
        cls.weight.mul_(0.05)
    layers = []
    for name, m in model.parameterised_layers():
        kind = "Convolution" if m.weight.ndim == 4 else "InnerProduct"
        layers.append((name, kind, [m.weight.detach().numpy().copy(), m.bias.detach().numpy().copy()]))
    return layers


@pytest.fixture(scope="session")
def caffemodels(tmp_path_factory):
    """Random-weight ILGNet caffemodels for deploy.prototxt: V2 (`layer`) and V1 (`layers`)."""
    from caffe_schema import write_caffemodel

    folder = tmp_path_factory.mktemp("caffemodels")
    layers = random_ilgnet_layers()
    v2, v1 = folder / "random_v2.caffemodel", folder / "random_v1.caffemodel"
    write_caffemodel(v2, layers)
    write_caffemodel(v1, layers, v1=True)
    return {"v2": v2, "v1": v1, "layers": layers}


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory):
    """Random (calibrated) ILGNet weights as .safetensors, for scoring tests."""
    from ilgnet_cli.model.store import save_weights

    layers = random_ilgnet_layers(seed=1)
    state = {}
    for name, _, (w, b) in layers:
        key = name.replace("/", ".")
        state[f"{key}.weight"], state[f"{key}.bias"] = w, b
    return save_weights(tmp_path_factory.mktemp("weights") / "random.safetensors", state, "ava1")
