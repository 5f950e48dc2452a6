"""Sources of model inputs: anything with a length, a name per item and a ``load`` that turns an
item into a tensor through a :class:`~ilgnet_cli.model.transform.Transform`.

``load`` runs in decoding worker processes. It never raises for bad input: a photo that cannot be
decoded comes back as an :class:`Item` with ``error`` set, so one bad file never ends a run.
Photo files live here; AVA images (:class:`ilgnet_cli.ava.source.AvaImages`) beside the AVA code.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ilgnet_cli.data.decode import Decoded, DecodeError, decode
from ilgnet_cli.model.transform import DecodeMode, Transform


@dataclass
class Item:
    """One loaded item: the model input (None when it could not be loaded), what the source knows
    of it (picklable: it crosses from the worker), and why it failed."""

    tensor: torch.Tensor | None
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    # The input is exactly what ``transform.faithful`` would give (no shortcut changed it): a
    # fidelity check of this item would compare a thing with itself.
    faithful: bool = True


class Source(Protocol):
    def __len__(self) -> int: ...

    def name(self, i: int) -> str:
        """The item for messages and reports (a path, an image id)."""
        ...

    def load(self, i: int, transform: Transform, *, extras: bool = True) -> Item:
        """Item ``i`` through ``transform``; ``extras``: also what the source adds to ``meta``."""
        ...


Extra = Callable[[str, Decoded], dict[str, Any]]


class PhotoFiles:
    """Photo files. ``extra(path, decoded)`` adds to ``meta`` (EXIF, sharpness...), in the worker;
    it must be a module-level function (it is pickled to the workers)."""

    def __init__(self, paths: Sequence[str | os.PathLike[str]], *, extra: Extra | None = None,
                 max_pixels: int | None = None) -> None:
        self.paths = [os.fspath(p) for p in paths]
        self.extra, self.max_pixels = extra, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return self.paths[i]

    def load(self, i: int, transform: Transform, *, extras: bool = True) -> Item:
        path = self.paths[i]
        meta: dict[str, Any] = {}
        try:
            decoded = decode(path, max_pixels=self.max_pixels, **transform.decode_request())
            meta.update(width=decoded.size[0], height=decoded.size[1], format=decoded.format)
            if extras and self.extra is not None:
                meta.update(self.extra(path, decoded))
            faithful = transform.decode in (DecodeMode.REFERENCE, DecodeMode.EXACT) or (
                transform.decode is DecodeMode.FAST and decoded.scale == 1)
            return Item(transform(decoded.rgb), meta, faithful=faithful)
        except DecodeError as exc:
            return Item(None, meta, str(exc))
        except Exception as exc:  # noqa: BLE001 - one bad file must never end a batch run
            return Item(None, meta, f"cannot decode: {type(exc).__name__}: {str(exc)[:100]}")
