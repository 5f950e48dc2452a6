"""AVA images as a prediction source (``ilgnet eval``, training's validation) and as the
256x256 images training crops from."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ilgnet_cli.data.decode import DecodeError, decode
from ilgnet_cli.data.source import Item
from ilgnet_cli.model.transform import RESIZE, DecodeMode, Transform

if TYPE_CHECKING:
    from ilgnet_cli.ava.prepare import PreparedImages


class AvaImages:
    """``(id, label)`` items whose pictures are ``images/<id>.jpg`` or rows of an ``ilgnet
    prepare`` cache (already 256x256, made with the decode mode the cache records)."""

    def __init__(self, items: list[tuple[int, int]], images: str | Path, cache: PreparedImages | None = None) -> None:
        self.items, self.images, self.cache = list(items), Path(images), cache

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        return f"{self.items[i][0]}.jpg"

    def label(self, i: int) -> int:
        return self.items[i][1]

    def resized(self, i: int, transform: Transform) -> np.ndarray:
        """Item ``i`` as the 256x256 RGB image the crops come from. Raises DecodeError/OSError."""
        image_id = self.items[i][0]
        if self.cache is not None:
            return self.cache.get(image_id)
        decoded = decode(self.images / f"{image_id}.jpg", **transform.decode_request())
        return transform.resize(decoded.rgb)

    def load(self, i: int, transform: Transform, *, extras: bool = True) -> Item:
        meta = {"id": self.items[i][0], "label": self.items[i][1]}
        try:
            rgb = self.resized(i, transform)
        except (DecodeError, OSError, ValueError) as exc:
            return Item(None, meta, str(exc) if isinstance(exc, DecodeError) else f"cannot read: {exc}")
        import torch

        faithful = self.cache is not None or transform.decode is not DecodeMode.DRAFT
        return Item(torch.from_numpy(transform.blobs(rgb)), meta, faithful=faithful)


def resized_image(image_id: int, images: str | Path, cache: PreparedImages | None = None, *,
                  draft: bool = False) -> np.ndarray:
    """The 256x256 RGB uint8 image of an AVA id, as ``eval`` and ``train`` see it: from the
    ``ilgnet prepare`` cache when given, else decoded from ``images/<id>.jpg`` and resized as the
    authors did (``draft``: libjpeg's DCT downscale first, a few grey levels off)."""
    from ilgnet_cli.model.transform import Mean

    transform = Transform(Mean("none", (0.0, 0.0, 0.0)), decode=DecodeMode.DRAFT if draft else DecodeMode.EXACT)
    image = AvaImages([(image_id, 0)], images, cache).resized(0, transform)
    assert image.shape[:2] == (RESIZE, RESIZE)
    return image
