"""One forward pass, the same for every caller: the model as a run uses it (fp32, a bf16 copy,
training's autocast, compiled or not), in eval and inference mode, on batches of crops.

A batch is a float32 tensor of preprocessed crops, ``(n, 3, H, W)``, or ``(n, k, 3, H, W)`` for k
crops per image (test-time augmentation). Every image is an independent row, so what comes out for
an image does not depend on the batch, its size or its neighbours.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ilgnet_cli.runtime.precision import bf16_model

# torch.compile costs tens of seconds per process on a 2-core CPU and saves about 6 ms per photo
# there (bf16: 56 -> 85 img/s, benchmarks/bench_precision.py), so it pays only for big runs.
COMPILE_MIN_PHOTOS = 20_000


@dataclass
class Output:
    """What one batch gave, on the CPU in float32: logits ``(n, k, 2)`` and, when asked for,
    the model's features ``(n, k, d)``."""

    logits: torch.Tensor
    features: torch.Tensor | None = None

    @property
    def log_odds(self) -> torch.Tensor:
        """``logit[high] - logit[low]`` per crop, ``(n, k)``: what P(high) is the sigmoid of."""
        return self.logits[..., 1] - self.logits[..., 0]

    @property
    def p_high(self) -> torch.Tensor:
        """P(high) per image, ``(n,)``: softmax index 1, averaged over the k crops."""
        return torch.softmax(self.logits, dim=-1)[..., 1].mean(dim=1)


def p_high(logits: torch.Tensor) -> torch.Tensor:
    """P(high quality) from ``(n, 2)`` logits: softmax index 1, in float32 whatever the dtype."""
    return torch.softmax(logits.float(), dim=1)[:, 1]


class Forward:
    """``model`` as a run uses it.

    ``bf16``: a bf16 copy fed bf16 inputs. ``autocast``: bf16 autocast on CUDA (training's mixed
    precision; fp32 elsewhere). ``compile``: the bf16 copy under ``torch.compile``, artefacts kept
    in ``compile_dir``; the graph is built for ``batch`` rows (default: the first batch's), shorter
    batches are padded to it, longer ones run eager, and any failure to build or run it falls back
    to eager for good. ``features``: also return ``model.forward_features(x)[1]``.
    """

    def __init__(self, model: torch.nn.Module, *, bf16: bool = False, autocast: bool = False,
                 compile: bool = False, compile_dir: Path | None = None, batch: int | None = None,
                 features: bool = False) -> None:
        self.fp32 = model
        self.features = features
        self.autocast = autocast
        self.bf16: Callable[..., object] | None = bf16_model(model) if bf16 else None
        self.eager_bf16 = self.bf16
        self.compiled = False
        self.compiled_batch = batch
        if compile and self.bf16 is not None and not features:
            self.bf16, self.compiled = _compiled(self.bf16, compile_dir)

    @property
    def precision(self) -> str:
        return "bf16" if self.bf16 is not None else "fp32"

    def drop_bf16(self) -> None:
        """Run in fp32 from now on (a check found bf16 unfaithful for these weights)."""
        self.bf16 = self.eager_bf16 = None
        self.compiled = False

    def __call__(self, x: torch.Tensor, *, fp32: bool = False) -> Output:
        """The batch's output; ``fp32`` forces the fp32 model (a fidelity check)."""
        k = 1
        if x.dim() == 5:
            k = x.shape[1]
            x = x.reshape(-1, *x.shape[2:])
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), eval_mode(self.fp32):
            logits, feats = self._run(x, bf16=self.bf16 is not None and not fp32)
        n = logits.shape[0] // k
        out = Output(logits.float().cpu().reshape(n, k, -1).clone(),
                     None if feats is None else feats.float().cpu().reshape(n, k, -1).clone())
        return out  # ordinary tensors: callers may change them outside inference mode

    def _run(self, x: torch.Tensor, *, bf16: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if bf16 and self.compiled:
            try:
                return self._compiled_logits(x.to(torch.bfloat16)), None
            except Exception:  # noqa: BLE001 - a graph that fails to build or run: eager is the same model
                self.bf16, self.compiled = self.eager_bf16, False
        model: Any = self.bf16 if bf16 else self.fp32
        assert model is not None
        if bf16:
            x = x.to(torch.bfloat16)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.autocast and x.device.type == "cuda"):
            if self.features:
                logits, feats = model.forward_features(x)
                return logits, feats
            return model(x), None

    def _compiled_logits(self, x: torch.Tensor) -> torch.Tensor:
        # A compiled graph is specialised to its batch size: a short batch (the last one, or one
        # with undecodable files left out) is padded to it (rows are independent) rather than
        # paying for a second compilation.
        assert self.bf16 is not None and self.eager_bf16 is not None
        n = x.shape[0]
        if self.compiled_batch is None:
            self.compiled_batch = n
        eager: Any = self.eager_bf16
        compiled: Any = self.bf16
        if n > self.compiled_batch:
            return eager(x)
        if n < self.compiled_batch:
            pad = x.new_zeros((self.compiled_batch - n, *x.shape[1:]))
            x = torch.cat([x, pad]).contiguous(memory_format=torch.channels_last)
        return compiled(x)[:n]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode for the block, then back to the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def should_compile(photos: int, bf16: bool, requested: bool | None) -> bool:
    """``requested`` (True/False) wins; ``None`` compiles bf16 runs of :data:`COMPILE_MIN_PHOTOS`+."""
    if requested is not None:
        return requested and bf16
    return bf16 and photos >= COMPILE_MIN_PHOTOS


def private_folder(folder: Path) -> bool:
    """Create ``folder`` 0700 if needed; True only if it is a real folder owned by this user that
    no one else can write (compiled graphs are code that runs: a shared one could be planted)."""
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or (hasattr(os, "getuid") and st.st_uid != os.getuid()):
        return False
    if st.st_mode & 0o077:
        try:
            os.chmod(folder, 0o700)
        except OSError:
            return False
    return True


def _compiled(model: Callable[..., object], compile_dir: Path | None) -> tuple[Callable[..., object], bool]:
    """``torch.compile(model)`` with its artefacts kept across runs in a private folder (or not
    kept, when no private folder can be had), or ``model`` where compiling cannot even start."""
    try:
        if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:  # a user's own choice stands
            if compile_dir is None or not private_folder(compile_dir):
                # torch's default (/tmp/torchinductor_USER) is a guessable name others could
                # create first: a fresh private folder instead, used for this process only.
                import tempfile

                compile_dir = Path(tempfile.mkdtemp(prefix="ilgnet-compile-"))
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_dir)
        return torch.compile(model, dynamic=False), True
    except Exception:  # noqa: BLE001 - compiling is only an optimisation
        return model, False
