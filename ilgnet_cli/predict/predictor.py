"""The one prediction loop: any source (photo files, AVA images), decoded in worker processes,
batched through one :class:`~ilgnet_cli.runtime.forward.Forward`, checked by the fidelity gate,
streamed back in input order.

* **Crash isolation**: a decoder that crashes its worker process (a native bug hit by a fuzzed
  file) or hangs for :data:`DECODE_TIMEOUT_S` takes only that item with it: the items that were
  in flight are re-loaded one at a time, the culprit gets :data:`CRASH_REASON`, the run goes on.
* **Fidelity gate** (:mod:`ilgnet_cli.predict.gate`): bf16 and fast decoding are checked on
  sampled batches; when a check fails the shortcut ends and every item already served with it
  is predicted again, yielded a second time with ``corrected=True`` (the last one counts).
* Scores do not depend on batch size, neighbours or worker count: eval mode, deterministic
  preprocessing, every image an independent row.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info

from ilgnet_cli.data.source import Item, Source
from ilgnet_cli.model.transform import DecodeMode, Transform
from ilgnet_cli.predict.gate import BUDGET, Gate, Shortcut
from ilgnet_cli.runtime.device import exact_fp32, native_bf16
from ilgnet_cli.runtime.distributed import Dist
from ilgnet_cli.runtime.forward import Forward, Output, should_compile
from ilgnet_cli.runtime.precision import Precision
from ilgnet_cli.runtime.system import default_signals

# Seconds one item may take in a worker (read + decode + extras) before the worker is ended.
# Generous: a 100 MB RAW on a slow network share must not hit it; an endless loop must.
DECODE_TIMEOUT_S = 300
CRASH_REASON = "decoder crashed or hung on this file (worker process ended)"
NON_FINITE = "the model gave a non-finite score (broken weights?)"
_PREFETCH = 2  # batches in flight per worker


@dataclass
class Prediction:
    """What the model said of one item (or why it could not)."""

    index: int  # in the source
    name: str
    score: float | None = None  # P(high), averaged over the crops
    log_odds: tuple[float, ...] = ()  # per crop
    crop_scores: tuple[float, ...] = ()  # P(high) per crop
    features: np.ndarray | None = None  # (k, d) with ``features=True``
    meta: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    precision: str | None = None  # fp32 or bf16
    decode: str | None = None  # the transform's key (fast-800, exact, ...)
    shortcuts: frozenset[Shortcut] = frozenset()  # the shortcuts this prediction was served with
    corrected: bool = False  # replaces an earlier prediction of the same index

    @property
    def ok(self) -> bool:
        return self.error is None


class _ShortcutFailed(Exception):
    def __init__(self, shortcut: Shortcut) -> None:
        super().__init__(shortcut.value)
        self.shortcut = shortcut


class _WorkerDied(Exception):
    pass


class _Loaded(Dataset):
    """The one prediction Dataset: item i of a source through the transform, plus (now and then,
    within the budget, in the worker) the item through the faithful transform for the gate."""

    def __init__(self, source: Source, transform: Transform, check_decode: bool) -> None:
        self.source, self.transform, self.check_decode = source, transform, check_decode
        self.load_seconds = self.check_seconds = 0.0
        self.checks = 0

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> tuple[int, Item, torch.Tensor | None]:
        watchdog = get_worker_info() is not None
        if watchdog:
            # A decoder stuck in C never returns to Python, so no exception can stop it; this
            # watchdog thread ends the worker instead, which the crash handling turns into a
            # reason for this item. It writes to fd 2 (/dev/null in workers).
            try:
                faulthandler.dump_traceback_later(DECODE_TIMEOUT_S, exit=True, file=2)
            except (OSError, ValueError, RuntimeError):
                watchdog = False
        try:
            return self._load(i)
        finally:
            if watchdog:
                faulthandler.cancel_dump_traceback_later()

    def _load(self, i: int) -> tuple[int, Item, torch.Tensor | None]:
        t0 = time.monotonic()
        item = self.source.load(i, self.transform)
        self.load_seconds += time.monotonic() - t0
        faithful = None
        if self.check_decode and item.tensor is not None and not item.faithful and self._due():
            t0 = time.monotonic()
            faithful = self.source.load(i, self.transform.faithful, extras=False).tensor
            self.check_seconds += time.monotonic() - t0
            self.checks += 1
        return i, item, faithful

    def _due(self) -> bool:
        # Each worker keeps its own budget: its first eligible item is always checked.
        return self.checks == 0 or self.check_seconds <= BUDGET * self.load_seconds


def _collate(rows: list[tuple[int, Item, torch.Tensor | None]]):
    good = [(i, item.tensor) for i, item, _ in rows if item.tensor is not None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, rows


def _worker_init(_: int) -> None:
    # Decoding is numpy/Pillow work; torch threads in workers would only fight the model.
    torch.set_num_threads(1)
    default_signals()
    # Native decoders (libtiff, libheif) print their own diagnostics straight to fd 2; the
    # report already carries a one-line reason for that file, so keep the terminal clean.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _worker_died(exc: RuntimeError) -> bool:
    text = str(exc)
    return "DataLoader worker" in text and ("exited unexpectedly" in text or "killed by signal" in text)


@contextlib.contextmanager
def _worker_deaths_via_next() -> Iterator[None]:
    """torch reports a dead worker from a SIGCHLD handler, i.e. at any point of the main thread,
    even inside our caller's code while this generator is suspended. With SIGCHLD back at its
    default, the loader notices the death by polling and raises from ``next()``, where it can be
    handled. Signal handlers can only be changed from the main thread; elsewhere nothing changes.
    """
    if not hasattr(signal, "SIGCHLD") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, previous)


class Predictor:
    """``model`` + ``transform`` on ``device``, over any :class:`~ilgnet_cli.data.source.Source`.

    ``precision``: ``fp32``; ``bf16`` (as asked, unchecked); ``auto`` (bf16 where the device
    computes it natively and the gate accepts it, else fp32). ``gate``: checks the shortcuts of an
    ``auto`` run and of a ``fast`` transform (None: no checks). ``features``: also return the
    model's features (``model.forward_features``). ``autocast``: training's bf16 autocast on CUDA.
    """

    def __init__(self, model: torch.nn.Module, transform: Transform, *, device: torch.device | str = "cpu",
                 precision: Precision | str = Precision.FP32, batch_size: int = 32, workers: int = 0,
                 gate: Gate | None = None, features: bool = False, compile: bool | None = None,
                 compile_dir: Any = None, autocast: bool = False) -> None:
        self.device = torch.device(device)
        exact_fp32(self.device)
        self.precision = Precision.parse(precision)
        self.batch_size, self.workers = max(1, batch_size), max(0, workers)
        self.gate = gate
        self.transform = transform
        self.notes: list[str] = []
        bf16 = self.precision is Precision.BF16 or (self.precision is Precision.AUTO and native_bf16(self.device))
        self.check_bf16 = self.precision is Precision.AUTO and gate is not None
        if bf16 and self.check_bf16 and gate is not None and (refusal := gate.refused(Shortcut.BF16)):
            bf16 = False
            self.notes.append(refusal.describe())
        self.check_decode = gate is not None and transform.decode is DecodeMode.FAST
        if self.check_decode and gate is not None and (refusal := gate.refused(Shortcut.DECODE)):
            self.transform, self.check_decode = transform.faithful, False
            self.notes.append(refusal.describe())
        # Not eval(): Forward runs the model in eval mode and gives it back in the mode it was in
        # (training validates mid-run).
        self._model = model.to(self.device).to(memory_format=torch.channels_last)
        self._compile, self._compile_dir, self._features, self._autocast = compile, compile_dir, features, autocast
        self._bf16 = bf16
        self._forward: Forward | None = None

    def forward(self, photos: int = 0) -> Forward:
        if self._forward is None:
            self._forward = Forward(self._model, bf16=self._bf16, autocast=self._autocast,
                                    compile=should_compile(photos, self._bf16, self._compile),
                                    compile_dir=self._compile_dir, batch=self.batch_size, features=self._features)
        return self._forward

    @property
    def served_precision(self) -> str:
        return self.forward().precision

    # ------------------------------------------------------------------ the loop

    def predict(self, source: Source, indices: Sequence[int] | None = None) -> Iterator[Prediction]:
        """One :class:`Prediction` per index (default: every item), in order as batches finish;
        then, if a shortcut failed its check, the items served with it again (``corrected``)."""
        order = list(range(len(source))) if indices is None else list(indices)
        forward = self.forward(len(order))
        work = [(i, False) for i in order]
        latest: dict[int, frozenset[Shortcut]] = {}
        while work:
            done = 0
            try:
                for pred in self._attempt(source, [i for i, _ in work], forward):
                    pred.corrected = work[done][1]
                    latest[pred.index] = pred.shortcuts
                    done += 1
                    yield pred
                work = []
            except _WorkerDied:
                rest = work[done:]
                # The culprit is among the batches that were in flight: load those one at a
                # time in a single worker, so that the next crash names the item exactly.
                suspects = rest[:self.batch_size * max(1, self.workers) * (_PREFETCH + 1)]
                for (i, corrected), pred in zip(suspects, self._isolate(source, [i for i, _ in suspects], forward),
                                                strict=True):
                    pred.corrected = corrected
                    latest[i] = pred.shortcuts
                    yield pred
                work = rest[len(suspects):]
            except _ShortcutFailed as failed:
                rest = work[done:]
                waiting = {i for i, _ in rest}
                tainted = [(i, True) for i in sorted(latest) if failed.shortcut in latest[i] and i not in waiting]
                work = tainted + rest
        if self.gate is not None:
            self.gate.finish()

    def predict_all(self, source: Source, dist: Dist | None = None) -> list[Prediction] | None:
        """Every item's final prediction, in source order; under torchrun each rank predicts its
        share and rank 0 gets them all (the other ranks get None)."""
        dist = dist or Dist(device=self.device)
        mine: dict[int, Prediction] = {}
        for pred in self.predict(source, dist.shard(range(len(source)))):
            mine[pred.index] = pred
        parts = dist.gather(list(mine.values()))
        if parts is None:
            return None
        merged = {p.index: p for part in parts for p in part}
        return [merged[i] for i in sorted(merged)]

    def _loader(self, source: Source, indices: list[int], batch_size: int, workers: int,
                prefetch: int = _PREFETCH) -> DataLoader:
        dataset = _Loaded(source, self.transform, self.check_decode)
        return DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=workers,
                          collate_fn=_collate, pin_memory=self.device.type == "cuda",
                          prefetch_factor=prefetch if workers > 0 else None, persistent_workers=False,
                          worker_init_fn=_worker_init)

    def _attempt(self, source: Source, indices: list[int], forward: Forward, *, batch_size: int | None = None,
                 workers: int | None = None, check: bool = True, prefetch: int = _PREFETCH) -> Iterator[Prediction]:
        """Predictions for ``indices`` in order; raises :class:`_WorkerDied` when a worker dies and
        :class:`_ShortcutFailed` when a check fails (the shortcut is then off)."""
        workers = self.workers if workers is None else workers
        loader = self._loader(source, indices, batch_size or self.batch_size, workers, prefetch)
        try:
            it = iter(loader)  # installs torch's SIGCHLD handler the first time
            with _worker_deaths_via_next():
                for ok, batch, rows in it:
                    yield from self._batch(source, forward, ok, batch, rows, check)
        except RuntimeError as exc:
            if workers and _worker_died(exc):
                raise _WorkerDied from None
            raise
        except (ConnectionError, EOFError) as exc:
            # A worker that dies with results still queued takes their shared memory with it:
            # fetching one then fails this way instead of torch's "exited unexpectedly".
            if workers:
                raise _WorkerDied from exc
            raise

    def _isolate(self, source: Source, indices: list[int], forward: Forward) -> Iterator[Prediction]:
        start = 0
        while start < len(indices):
            try:
                # One item in flight: a worker that dies can only have been decoding that item
                # (with two, the finished one before it died with the worker's queue).
                for pred in self._attempt(source, indices[start:], forward, batch_size=1, workers=1, check=False,
                                          prefetch=1):
                    start += 1
                    yield pred
            except _WorkerDied:
                yield Prediction(index=indices[start], name=source.name(indices[start]), error=CRASH_REASON)
                start += 1

    def _batch(self, source: Source, forward: Forward, ok: list[int], batch: torch.Tensor | None,
               rows: list[tuple[int, Item, torch.Tensor | None]], check: bool) -> Iterator[Prediction]:
        out = None
        if batch is not None:
            x = batch.to(self.device, non_blocking=self.device.type == "cuda")
            out = forward(x)
            if check:
                self._check(forward, x, out, ok, rows)
        bf16 = forward.precision == "bf16"
        pos = {i: n for n, i in enumerate(ok)}
        for i, item, _ in rows:
            pred = Prediction(index=i, name=source.name(i), meta=dict(item.meta), error=item.error,
                              decode=self.transform.key)
            if i in pos and out is not None:
                self._fill(pred, out, pos[i], bf16=bf16, decode_shortcut=not item.faithful)
            yield pred

    def _fill(self, pred: Prediction, out: Output, n: int, *, bf16: bool, decode_shortcut: bool) -> None:
        crop_p = torch.softmax(out.logits[n], dim=-1)[:, 1]
        score = float(crop_p.mean())
        if not math.isfinite(score):
            pred.error = NON_FINITE
            return
        pred.score = score
        pred.crop_scores = tuple(float(v) for v in crop_p)
        pred.log_odds = tuple(float(v) for v in out.log_odds[n])
        pred.precision = "bf16" if bf16 else "fp32"
        if out.features is not None:
            pred.features = out.features[n].numpy()
        used = set()
        if bf16 and self.check_bf16:
            used.add(Shortcut.BF16)
        if decode_shortcut and self.check_decode:
            used.add(Shortcut.DECODE)
        pred.shortcuts = frozenset(used)

    def _check(self, forward: Forward, x: torch.Tensor, out: Output, ok: list[int],
               rows: list[tuple[int, Item, torch.Tensor | None]]) -> None:
        gate = self.gate
        if gate is None:
            return
        bf16 = forward.precision == "bf16" and self.check_bf16
        faithful = [(ok.index(i), t) for i, _, t in rows if t is not None and i in ok]
        if not (bf16 and gate.due()) and not faithful:
            return
        t0 = time.monotonic()
        try:
            ref: Output | None = None  # the batch's fp32 output, when it had to be computed
            if bf16 and gate.due():
                ref = forward(x, fp32=True)
                if not gate.judge(Shortcut.BF16, out.log_odds.flatten().tolist(), ref.log_odds.flatten().tolist()):
                    forward.drop_bf16()
                    raise _ShortcutFailed(Shortcut.BF16)
            if faithful and self.check_decode:
                at = [n for n, _ in faithful]
                if ref is not None or forward.precision == "fp32":
                    served = (ref or out).log_odds[at]
                else:  # served in bf16: its own fp32 value, so that only decoding is judged
                    served = forward(x[at], fp32=True).log_odds
                true = forward(torch.stack([t for _, t in faithful]).to(self.device), fp32=True)
                if not gate.judge(Shortcut.DECODE, served.flatten().tolist(), true.log_odds.flatten().tolist()):
                    self.transform, self.check_decode = self.transform.faithful, False
                    raise _ShortcutFailed(Shortcut.DECODE)
        finally:
            gate.spent(time.monotonic() - t0)


def scored(predictions: Iterable[Prediction]) -> dict[int, Prediction]:
    """The final prediction of each index (a corrected one replaces the first)."""
    final: dict[int, Prediction] = {}
    for pred in predictions:
        final[pred.index] = pred
    return final
