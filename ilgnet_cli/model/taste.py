"""A taste (``ilgnet learn``): a logistic head on the pooled trunk features of a base model.

Stored as a few KB (the head and a reference to the base's sha256), composed with the base when
loaded: ``P(liked) = sigmoid(w . f + b)`` with ``f`` = :func:`~ilgnet_cli.model.ilgnet.pooled_features`,
given as logits ``(0, w . f + b)`` so that softmax index 1 is P(liked), like any ILGNet.
"""

from __future__ import annotations

import torch
from torch import nn

from ilgnet_cli.model.ilgnet import FEATURE_DIM

HEAD_WEIGHT = "taste.weight"
HEAD_BIAS = "taste.bias"


class TasteModel(nn.Module):
    """``base`` (an ILGNet, frozen) with a taste head in place of its classifier."""

    def __init__(self, base: nn.Module, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        if tuple(weight.shape) != (FEATURE_DIM,) or bias.numel() != 1:
            raise ValueError(f"a taste head is ({FEATURE_DIM},) weights and one bias")
        self.base = base
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().reshape(1).clone())

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, feats = self.base.forward_features(x)  # type: ignore[operator]
        z = feats @ self.weight.to(feats.dtype) + self.bias.to(feats.dtype)
        return torch.stack([torch.zeros_like(z), z], dim=1), feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[0]
