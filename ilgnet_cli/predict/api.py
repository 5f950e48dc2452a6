"""``ilgnet_cli.load(...)``: weights, their transform and a predictor, for your own code.

```python
model = ilgnet_cli.load("ilgnet-ava1")
x = model.preprocess("photo.jpg")        # (3, 227, 227) float32, as the authors fed Caffe
p = model.score(["a.jpg", "b.jpg"])      # P(high quality) each, the authors' pipeline (fp32)
```
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ilgnet_cli.data.decode import decode
from ilgnet_cli.data.source import Item, PhotoFiles
from ilgnet_cli.errors import DataError
from ilgnet_cli.model.store import LoadedWeights, ensure_default, load_model
from ilgnet_cli.model.transform import DecodeMode, Transform
from ilgnet_cli.predict.predictor import Predictor
from ilgnet_cli.runtime.device import pick_device

Image = str | os.PathLike[str] | np.ndarray


class _Arrays:
    """RGB arrays as a source (in this process only: arrays are not sent to workers)."""

    def __init__(self, images: Sequence[np.ndarray]) -> None:
        self.images = list(images)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, i: int) -> str:
        return f"array {i}"

    def load(self, i: int, transform: Transform, *, extras: bool = True) -> Item:
        return Item(transform(self.images[i]))


@dataclass
class Model:
    """Weights with the transform that belongs to them (the authors' pipeline unless asked)."""

    weights: LoadedWeights
    transform: Transform

    @property
    def name(self) -> str:
        return self.weights.name

    @property
    def sha256(self) -> str:
        return self.weights.sha256

    @property
    def model(self) -> torch.nn.Module:
        return self.weights.model

    @property
    def mean(self):  # noqa: ANN201 - the weights' Mean
        return self.weights.mean

    @property
    def path(self) -> Path:
        return self.weights.path

    def preprocess(self, image: Image) -> torch.Tensor:
        """A photo (file path, or an HxWx3 RGB uint8 array) -> the model input (3, 227, 227)."""
        if isinstance(image, np.ndarray):
            return self.transform(image)
        return self.transform(decode(image, **self.transform.decode_request()).rgb)

    def score(self, images: Sequence[Image] | torch.Tensor, *, precision: str = "fp32") -> list[float]:
        """P(high quality) for photos (paths or RGB arrays) or a batch of model inputs (N, 3, 227, 227).
        A photo that cannot be decoded raises :class:`~ilgnet_cli.errors.DataError`."""
        device = next(self.model.parameters()).device
        predictor = Predictor(self.model, self.transform, device=device, precision=precision, workers=0)
        if isinstance(images, torch.Tensor):
            out = predictor.forward()(images.to(device))
            return out.p_high.tolist()
        arrays = [im for im in images if isinstance(im, np.ndarray)]
        source = _Arrays(arrays) if len(arrays) == len(images) else PhotoFiles(
            [im for im in images if not isinstance(im, np.ndarray)])
        if arrays and len(arrays) != len(images):
            raise DataError("give either file paths or arrays, not both")
        results = list(predictor.predict(source))
        bad = next((r for r in results if r.error), None)
        if bad is not None:
            raise DataError(f"{bad.name}: {bad.error}")
        return [float(r.score) for r in sorted(results, key=lambda r: r.index) if r.score is not None]


def load(weights: str | None = None, device: str = "auto", *, allow_download: bool = True,
         decode: DecodeMode | str = DecodeMode.EXACT) -> Model:
    """Weights by name or ``.safetensors`` path (None: the default weights, fetched on first use
    unless ``allow_download`` is False) on ``device`` (auto: CUDA, MPS, else CPU), with their
    transform (``decode``: the authors' pipeline by default; ``fast`` as ``ilgnet score``)."""
    loaded = load_model(weights or ensure_default(allow_download=allow_download), pick_device(device))
    return Model(loaded, loaded.transforms(decode))
