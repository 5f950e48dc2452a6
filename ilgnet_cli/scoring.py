"""Batch scoring: decode in worker processes, infer in batches, stream results in input order.

A file that cannot be decoded yields a result with ``error`` set and never stops the run.
Scores do not depend on batch size, neighbours or worker count: the model is in eval mode,
preprocessing is deterministic and every image is an independent row of the batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ilgnet_cli.decode import DecodeError, decode
from ilgnet_cli.model import score_from_logits
from ilgnet_cli.preprocess import RESIZE, preprocess


@dataclass
class ScoreResult:
    path: str
    score: float | None = None
    error: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA, else MPS, else CPU. Asking for an absent accelerator is an error."""
    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available (try --device auto)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("--device mps requested but MPS is not available (try --device auto)")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)")
    return torch.device(name)


class _Images(Dataset):
    """Decodes and preprocesses one file per item; errors travel as data, not exceptions."""

    def __init__(self, paths: list[str], mean_bgr: tuple[float, float, float], exact: bool,
                 extra: Callable[[str, Any], dict[str, Any]] | None = None) -> None:
        self.paths, self.mean_bgr, self.exact, self.extra = paths, mean_bgr, exact, extra

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, dict[str, Any]]:
        path = self.paths[i]
        meta: dict[str, Any] = {}
        try:
            decoded = decode(path, draft=None if self.exact else RESIZE)
            meta.update(width=decoded.size[0], height=decoded.size[1], format=decoded.format)
            if self.extra is not None:
                meta.update(self.extra(path, decoded))
            return i, preprocess(decoded.rgb, self.mean_bgr), meta
        except DecodeError as exc:
            meta["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must never end a batch run
            meta["error"] = f"cannot decode: {type(exc).__name__}: {str(exc)[:100]}"
        return i, None, meta


def _collate(items: list[tuple[int, torch.Tensor | None, dict[str, Any]]]):
    good = [(i, t) for i, t, _ in items if t is not None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, [(i, m) for i, _, m in items]


def score_paths(
    paths: Iterable[str | os.PathLike[str]],
    model: torch.nn.Module,
    mean_bgr: tuple[float, float, float],
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    workers: int = 0,
    exact: bool = False,
    extra: Callable[[str, Any], dict[str, Any]] | None = None,
) -> Iterator[ScoreResult]:
    """Yield one :class:`ScoreResult` per path, in input order, as batches finish.

    ``extra(path, decoded)`` runs in the worker and adds fields to ``result.info``
    (EXIF, sharpness...). ``exact`` disables JPEG draft decoding.
    """
    device = torch.device(device)
    files = [str(p) for p in paths]
    if not files:
        return
    model.eval()
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    loader = DataLoader(
        _Images(files, mean_bgr, exact, extra),
        batch_size=max(1, batch_size),
        num_workers=max(0, workers),
        collate_fn=_collate,
        pin_memory=cuda,
        # Decoding big JPEGs is the bottleneck on CPU: keep two batches in flight per worker.
        prefetch_factor=2 if workers > 0 else None,
        persistent_workers=False,
    )
    with torch.inference_mode():
        for indices, batch, metas in loader:
            scores: dict[int, float] = {}
            if batch is not None:
                batch = batch.to(device, non_blocking=cuda)
                if cuda:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=cuda):
                    logits = model(batch)
                scores = dict(zip(indices, score_from_logits(logits).cpu().tolist(), strict=True))
            for i, meta in metas:
                meta = dict(meta)
                error = meta.pop("error", None)
                yield ScoreResult(
                    path=files[i], score=scores.get(i), error=error,
                    width=meta.pop("width", None), height=meta.pop("height", None),
                    format=meta.pop("format", None), info=meta,
                )
