"""The one way batches go through the model: photo scoring, training's validation and `ilgnet
eval` all call :func:`infer` with a :class:`Forward`.

A batch is a float32 tensor of preprocessed crops, ``(n, 3, H, W)``, or ``(n, k, 3, H, W)`` for
k test-time-augmentation crops per image (their P(high) is averaged). Every image is an
independent row, so P(high) does not depend on the batch, its size or its neighbours.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch

from ilgnet_cli.model.ilgnet import score_from_logits

K = TypeVar("K")

MODES = ("fp32", "bf16", "guard", "autocast")

# torch.compile costs tens of seconds per process on a 2-core CPU and saves about 5 ms per photo
# there (bf16: 55 -> 75 img/s, benchmarks/bench_precision.py), so it pays only for big runs.
COMPILE_MIN_PHOTOS = 20_000


class Forward:
    """The model as a run uses it.

    ``fp32``: as trained. ``bf16``: a bf16 copy fed bf16 inputs (not autocast, which re-casts every
    operand and is slower than fp32 on CPUs). ``guard``: the first batch both ways, then the
    precision :func:`ilgnet_cli.model.precision.judge` chose (``on_verdict`` is told).
    ``autocast``: bf16 autocast on CUDA, the mixed precision training runs in (fp32 elsewhere).
    ``compile``: run the bf16 copy under ``torch.compile`` (artefacts cached under
    ``$ILGNET_HOME/compile-cache``); any compile failure falls back to eager silently. The
    graph is built for ``batch`` rows (default: the first batch's size); shorter batches are
    padded to it, longer ones run eager.
    """

    def __init__(self, model: torch.nn.Module, precision: str = "fp32", *,
                 on_verdict: Callable[[Any], None] | None = None, compile: bool = False,
                 batch: int | None = None) -> None:
        from ilgnet_cli.model.precision import bf16_model

        if precision not in MODES:
            raise ValueError(f"unknown precision {precision!r}")
        self.fp32 = model
        self.bf16: Callable[[torch.Tensor], torch.Tensor] | None = (
            bf16_model(model) if precision in ("bf16", "guard") else None)
        self.eager_bf16 = self.bf16
        self.precision, self.on_verdict = precision, on_verdict
        self.compiled = False
        self.compiled_batch: int | None = batch
        if compile and self.bf16 is not None:
            self.bf16, self.compiled = _compiled(self.bf16)

    def _logits(self, x: torch.Tensor, bf16: bool) -> torch.Tensor:
        if bf16 and self.compiled:
            try:
                return self._compiled_logits(x.to(torch.bfloat16))
            except Exception:  # noqa: BLE001 - a graph that fails to build or run: eager is the same model
                self.bf16, self.compiled = self.eager_bf16, False
        if bf16:
            assert self.bf16 is not None
            return self.bf16(x.to(torch.bfloat16))
        if self.precision == "autocast" and x.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.fp32(x)
        return self.fp32(x)

    def _compiled_logits(self, x: torch.Tensor) -> torch.Tensor:
        # A compiled graph is specialised to its batch size: a short batch (the last one, or one
        # with undecodable files left out) is padded to it (rows are independent) rather than
        # paying for a second compilation.
        assert self.bf16 is not None
        n = x.shape[0]
        if self.compiled_batch is None:
            self.compiled_batch = n
        if n > self.compiled_batch:
            assert self.eager_bf16 is not None
            return self.eager_bf16(x)
        if n < self.compiled_batch:
            pad = x.new_zeros((self.compiled_batch - n, *x.shape[1:]))
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        return self.bf16(x)[:n]

    def _p_high(self, x: torch.Tensor, bf16: bool) -> torch.Tensor:
        k = 1
        if x.dim() == 5:  # (n, k, 3, H, W): k crops per image, averaged
            k = x.shape[1]
            x = x.reshape(-1, *x.shape[2:])
        p = score_from_logits(self._logits(x.contiguous(memory_format=torch.channels_last), bf16))
        return p.view(-1, k).mean(1).float().cpu()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """P(high) per image of the batch, float32 on the CPU (the model in eval mode whatever
        mode it is in: training validates mid-run)."""
        with torch.inference_mode(), eval_mode(self.fp32):
            p = self._call(x)
        return p.clone()  # a normal tensor: callers may change it in place outside inference mode

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if self.precision == "guard":
            from ilgnet_cli.model.precision import judge

            p32, p16 = self._p_high(x, False), self._p_high(x, True)
            verdict = judge(p32.tolist(), p16.tolist())
            self.precision = "bf16" if verdict.bf16 else "fp32"
            if not verdict.bf16:
                self.bf16 = self.eager_bf16 = None
            if self.on_verdict:
                self.on_verdict(verdict)
            return p16 if verdict.bf16 else p32
        return self._p_high(x, self.precision == "bf16")


def infer(forward: Forward, batches: Iterable[tuple[K, torch.Tensor | None]], device: torch.device,
          ) -> Iterator[tuple[K, torch.Tensor | None]]:
    """``(key, P(high) per row)`` for each ``(key, batch)``; a ``None`` batch (nothing decoded)
    passes through as ``None``. The model must already be on ``device``."""
    cuda = device.type == "cuda"
    for key, batch in batches:
        if batch is None:
            yield key, None
            continue
        yield key, forward(batch.to(device, non_blocking=cuda))


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block, then back to the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def should_compile(photos: int, precision: str, requested: bool | None) -> bool:
    """``requested`` (True/False) wins; ``None`` compiles bf16 runs of :data:`COMPILE_MIN_PHOTOS`+."""
    if requested is not None:
        return requested and precision in ("bf16", "guard")
    return precision in ("bf16", "guard") and photos >= COMPILE_MIN_PHOTOS


def _compiled(model: Callable[[torch.Tensor], torch.Tensor]) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """``torch.compile(model)`` with its artefacts kept across runs, or ``model`` where compiling
    cannot even start (no compiler, unsupported platform)."""
    try:
        from ilgnet_cli.model.store import home

        cache = home() / "compile-cache"
        cache.mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache))
        return torch.compile(model, dynamic=False), True
    except Exception:  # noqa: BLE001 - compiling is only an optimisation
        return model, False
