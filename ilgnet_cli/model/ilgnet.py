"""ILGNet (Jin et al., WCSP 2016) in PyTorch, layer for layer after the authors' deploy.prototxt.

Every parameterised Caffe layer becomes a module whose state-dict key is the Caffe layer
name with ``/`` replaced by ``.``: ``inception_3a/3x3_reduce`` -> ``inception_3a.3x3_reduce``,
``loss1/classifier_cjy`` -> ``loss1.classifier_cjy``. :func:`caffe_layer_name` and
:func:`torch_module_name` convert between the two, so the Caffe importer needs no table.

Caffe semantics that differ from common PyTorch ports and are reproduced here:

* all pooling is ceil-mode (Caffe rounds the output size up);
* the inception pool branches use AVE pooling (GoogLeNet uses MAX) with pad 1; PyTorch's
  ``avg_pool2d(count_include_pad=True, ceil_mode=True)`` divides by the window clipped to the
  padded input, which is what Caffe does (verified against OpenCV's Caffe runtime in tests);
* LRN across channels with ``k=1``, ``alpha/size`` scaling, as ``nn.LocalResponseNorm``;
* InnerProduct layers flatten C,H,W in row-major order, as ``torch.flatten`` on NCHW.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

INPUT_SIZE = 227
NUM_CLASSES = 2
# Softmax index 1 of loss1/loss is "high quality" (the label of mean score > 5 in AVA1).
LABELS = ("low", "high")
DROPOUT = 0.7

# (name, in_channels, 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj), from deploy.prototxt.
INCEPTION_CFG = (
    ("inception_3a", 192, 64, 96, 128, 16, 32, 32),
    ("inception_3b", 256, 128, 128, 192, 32, 96, 64),
    ("inception_4a", 480, 192, 96, 208, 16, 48, 64),
)

# The prototxt gives every head layer lr_mult 10/20 and every trunk layer 1/2; biases never decay.
HEAD_LAYERS = ("temp1", "temp2", "temp3", "temp_cjy", "loss1/classifier_cjy")
# Layers that ImageNet GoogLeNet (bvlc_googlenet) shares with ILGNet by name and shape.
TRUNK_LAYERS = (
    "conv1/7x7_s2",
    "conv2/3x3_reduce",
    "conv2/3x3",
    *(f"{cfg[0]}/{b}" for cfg in INCEPTION_CFG
      for b in ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool_proj")),
    "loss1/conv",
)


def caffe_layer_name(module_name: str) -> str:
    """``inception_3a.3x3`` -> ``inception_3a/3x3``."""
    return module_name.replace(".", "/")


def torch_module_name(layer_name: str) -> str:
    """``inception_3a/3x3`` -> ``inception_3a.3x3``."""
    return layer_name.replace("/", ".")


class CaffeLRN(nn.Module):
    """Caffe's ACROSS_CHANNELS LRN: ``x / (k + alpha/size * sum of x^2 over size channels)^beta``.

    Same maths as ``nn.LocalResponseNorm``; the channel-window sum is a banded 1x1 convolution
    (one GEMM) instead of a 3-D average pool, which is 2-4x faster on CPU for these shapes.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self._bands: dict[tuple, torch.Tensor] = {}

    def _band(self, channels: int, like: torch.Tensor) -> torch.Tensor:
        key = (channels, like.device, like.dtype)
        band = self._bands.get(key)
        if band is None:
            idx = torch.arange(channels)
            lo, hi = self.size // 2, (self.size - 1) // 2
            offset = idx[None, :] - idx[:, None]  # input channel - output channel
            mask = (offset >= -lo) & (offset <= hi)
            band = (mask.to(like.dtype) * (self.alpha / self.size)).view(channels, channels, 1, 1).to(like.device)
            self._bands[key] = band
        return band

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In fp32 whatever the input: squares of activations near 100 and a power of a sum
        # close to 1 lose most of their digits in bf16 (3 significant digits).
        xf = x.float()
        scale = F.conv2d(xf.square(), self._band(x.shape[1], xf))
        return (xf * scale.add_(self.k).pow_(-self.beta)).to(x.dtype)


class _Scope(nn.Module):
    """A named container so that ``conv1/7x7_s2`` can live at ``conv1.7x7_s2``."""

    def __init__(self, **children: nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)

    def __getitem__(self, name: str) -> nn.Module:
        module = self._modules[name]
        assert module is not None, name  # add_module was given a module for every name
        return module


class Inception(nn.Module):
    """One GoogLeNet inception block with ILGNet's AVE-pooled pool branch."""

    def __init__(self, in_ch: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, cp: int) -> None:
        super().__init__()
        layers = {
            "1x1": nn.Conv2d(in_ch, c1, 1),
            "3x3_reduce": nn.Conv2d(in_ch, c3r, 1),
            "3x3": nn.Conv2d(c3r, c3, 3, padding=1),
            "5x5_reduce": nn.Conv2d(in_ch, c5r, 1),
            "5x5": nn.Conv2d(c5r, c5, 5, padding=2),
            "pool_proj": nn.Conv2d(in_ch, cp, 1),
        }
        for name, layer in layers.items():
            self.add_module(name, layer)
        self.out_channels = c1 + c3 + c5 + cp

    def __getitem__(self, name: str) -> nn.Conv2d:
        return self._modules[name]  # type: ignore[return-value]  # _modules says Module | None; all are Conv2d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = F.relu(self["1x1"](x), inplace=True)
        b3 = F.relu(self["3x3"](F.relu(self["3x3_reduce"](x), inplace=True)), inplace=True)
        b5 = F.relu(self["5x5"](F.relu(self["5x5_reduce"](x), inplace=True)), inplace=True)
        pooled = F.avg_pool2d(x, 3, stride=1, padding=1, ceil_mode=True, count_include_pad=True)
        bp = F.relu(self["pool_proj"](pooled), inplace=True)
        return torch.cat((b1, b3, b5, bp), dim=1)


class ILGNet(nn.Module):
    """Inception modules with connected Local and Global features (ILGNet).

    ``forward`` returns logits of shape (N, 2); ``softmax(logits)[:, 1]`` is the aesthetic score.
    Input: (N, 3, 227, 227) BGR, 0-255, mean-subtracted (see :mod:`ilgnet_cli.model.transform`).
    """

    # Registered by name from INCEPTION_CFG in __init__ (Caffe's names), so declared for the type checker.
    inception_3a: Inception
    inception_3b: Inception
    inception_4a: Inception

    def __init__(self, dropout: float = DROPOUT, *, init: bool = True) -> None:
        super().__init__()
        self.conv1 = _Scope(**{"7x7_s2": nn.Conv2d(3, 64, 7, stride=2, padding=3)})
        self.conv2 = _Scope(**{
            "3x3_reduce": nn.Conv2d(64, 64, 1),
            "3x3": nn.Conv2d(64, 192, 3, padding=1),
        })
        self.lrn = CaffeLRN(5, alpha=1e-4, beta=0.75, k=1.0)
        for name, *cfg in INCEPTION_CFG:
            self.add_module(name, Inception(*cfg))
        # Local features: FC-256 on each 28x28 inception output (Caffe flattens C,H,W).
        self.temp1 = nn.Linear(256 * 28 * 28, 256)
        self.temp2 = nn.Linear(480 * 28 * 28, 256)
        # Global feature: AVE 5/3 on inception_4a (14x14 -> 4x4), 1x1 conv 128, FC-512.
        self.loss1 = _Scope(conv=nn.Conv2d(512, 128, 1), classifier_cjy=nn.Linear(1024, NUM_CLASSES))
        self.temp3 = nn.Linear(128 * 4 * 4, 512)
        self.temp_cjy = nn.Linear(256 + 256 + 512, 1024)
        self.dropout = nn.Dropout(dropout)
        if init:
            self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Caffe's fillers from the prototxt: Xavier (fan-in, uniform) weights, constant biases."""
        for name, module in self.parameterised_layers():
            fan_in = module.weight[0].numel()
            bound = math.sqrt(3.0 / fan_in)
            with torch.no_grad():
                module.weight.uniform_(-bound, bound, generator=generator)
                assert module.bias is not None, name  # every ILGNet layer has a bias (Caffe's bias_term)
                module.bias.fill_(0.0 if name == "loss1/classifier_cjy" else 0.2)

    def parameterised_layers(self) -> Iterator[tuple[str, nn.Conv2d | nn.Linear]]:
        """(Caffe layer name, module) for every layer that owns weights."""
        for name, module in self.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                yield caffe_layer_name(name), module

    def blobs(self, data: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named intermediate blobs (Caffe top names), for locating a mismatch layer by layer."""
        out: dict[str, torch.Tensor] = {}
        x = F.relu(self.conv1["7x7_s2"](data), inplace=True)
        x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        out["pool1/norm1"] = x = self.lrn(x)
        x = F.relu(self.conv2["3x3_reduce"](x), inplace=True)
        x = F.relu(self.conv2["3x3"](x), inplace=True)
        x = self.lrn(x)
        out["pool2/3x3_s2"] = x = F.max_pool2d(x, 3, stride=2, ceil_mode=True)
        out["inception_3a/output"] = i3a = self.inception_3a(x)
        temp1 = self.dropout(F.relu(self.temp1(torch.flatten(i3a, 1)), inplace=True))
        out["inception_3b/output"] = i3b = self.inception_3b(i3a)
        temp2 = self.dropout(F.relu(self.temp2(torch.flatten(i3b, 1)), inplace=True))
        x = F.max_pool2d(i3b, 3, stride=2, ceil_mode=True)
        out["inception_4a/output"] = i4a = self.inception_4a(x)
        x = F.avg_pool2d(i4a, 5, stride=3, ceil_mode=True, count_include_pad=True)
        out["loss1/conv"] = x = F.relu(self.loss1["conv"](x), inplace=True)
        temp3 = self.dropout(F.relu(self.temp3(torch.flatten(x, 1)), inplace=True))
        out["temp"] = x = torch.cat((temp1, temp2, temp3), dim=1)
        out["temp_cjy"] = x = self.dropout(F.relu(self.temp_cjy(x), inplace=True))
        out["loss1/classifier_cjy"] = self.loss1["classifier_cjy"](x)
        return out

    def forward(self, data: torch.Tensor) -> torch.Tensor:
        return self.blobs(data)["loss1/classifier_cjy"]

    def forward_features(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, :func:`pooled_features`): what ``ilgnet learn`` fits a taste on."""
        blobs = self.blobs(data)
        return blobs["loss1/classifier_cjy"], pooled_features(blobs)


# temp2 has 256 units for inception_3b's 480 channels: the pooled feature keeps every ~1.9th
# channel, so that all four branches (1x1, 3x3, 5x5, pool) are represented.
I3B_CHANNELS = tuple(int(round(v)) for v in torch.linspace(0, 479, 256).tolist())
FEATURE_DIM = 1024


def pooled_features(blobs: dict[str, torch.Tensor]) -> torch.Tensor:
    """The 1024-d trunk feature a taste reads: per-channel means of inception_3a (256) and of 256
    of inception_3b's channels, and loss1/conv's 128 channels averaged over each 2x2 quadrant of
    its 4x4 map (512, index c*4 + quadrant)."""
    i3a = blobs["inception_3a/output"].mean(dim=(2, 3))
    i3b = blobs["inception_3b/output"][:, list(I3B_CHANNELS)].mean(dim=(2, 3))
    quads = F.avg_pool2d(blobs["loss1/conv"], 2).flatten(1)
    return torch.cat((i3a, i3b, quads), dim=1)


@contextlib.contextmanager
def _no_default_init() -> Iterator[None]:
    """Conv2d and Linear skip their random initialisation while the block runs (their weights
    stay uninitialised memory, never touched)."""
    saved = {cls: cls.reset_parameters for cls in (nn.Conv2d, nn.Linear)}
    for cls in saved:
        setattr(cls, "reset_parameters", lambda self: None)  # noqa: B010 - a class attribute, swapped back below
    try:
        yield
    finally:
        for cls, method in saved.items():
            setattr(cls, "reset_parameters", method)  # noqa: B010


def empty_ilgnet(dropout: float = DROPOUT) -> ILGNet:
    """ILGNet whose parameters are uninitialised (never written, so never resident), for
    ``load_state_dict(state, assign=True)``: loading weights never pays for 150.9 M random ones
    (1.8 s and 600 MB on 2 cores). Not the meta device: its first use imports 0.5 s of torch."""
    with _no_default_init():
        return ILGNet(dropout, init=False)


@functools.cache
def state_shapes() -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape."""
    return {k: tuple(v.shape) for k, v in empty_ilgnet().state_dict().items()}


def score_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """P(high quality): softmax index 1, computed in float32 whatever the autocast dtype."""
    return torch.softmax(logits.float(), dim=1)[:, 1]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
