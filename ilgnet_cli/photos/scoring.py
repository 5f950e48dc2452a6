"""Batch scoring: decode in worker processes, infer in batches, stream results in input order.

A file that cannot be decoded yields a result with ``error`` set and never stops the run.
Scores do not depend on batch size, neighbours or worker count: the model is in eval mode,
preprocessing is deterministic and every image is an independent row of the batch.
"""

from __future__ import annotations

import contextlib
import faulthandler
import math
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info

from ilgnet_cli.errors import UsageError
from ilgnet_cli.model.inference import Forward, infer, should_compile
from ilgnet_cli.model.preprocess import RESIZE, Mean, parse_mean, preprocess
from ilgnet_cli.photos.decode import DecodeError, decode
from ilgnet_cli.training.distributed import Dist, init_distributed


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

    @property
    def exif(self) -> Any:
        """The photo's EXIF (:class:`ilgnet_cli.photos.exif.ExifInfo`; empty fields when it has none)."""
        from ilgnet_cli.photos.exif import ExifInfo

        return ExifInfo.from_json(self.info.get("exif"))


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
        raise UsageError("device cuda requested but no CUDA device is available (auto picks what there is)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("device mps requested but MPS is not available (auto picks what there is)")
    if name not in ("cpu", "mps") and not name.startswith("cuda"):
        raise UsageError(f"unknown device {name[:40]!r} (auto, cpu, cuda, cuda:N, mps)")
    return torch.device(name)


# Seconds one file may take in a worker (read + decode + extras) before the worker is ended.
# Generous: a 100 MB RAW on a slow network share must not hit it; an endless loop must.
DECODE_TIMEOUT_S = 300


class _Images(Dataset):
    """Decodes and preprocesses one file per item; errors travel as data, not exceptions."""

    def __init__(self, paths: list[str], mean: Mean, exact: bool,
                 extra: Callable[[str, Any], dict[str, Any]] | None = None, max_pixels: int | None = None) -> None:
        self.paths, self.mean, self.exact, self.extra = paths, parse_mean(mean), exact, extra
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, dict[str, Any]]:
        watchdog = get_worker_info() is not None
        if watchdog:
            # A decoder stuck in C never returns to Python, so no exception can stop it; this
            # watchdog thread ends the worker instead, which the crash handling turns into a
            # reason for this file. It writes to fd 2 (/dev/null in workers): sys.stderr may be
            # a stream without a file descriptor when ilgnet runs embedded.
            try:
                faulthandler.dump_traceback_later(DECODE_TIMEOUT_S, exit=True, file=2)
            except (OSError, ValueError, RuntimeError):
                watchdog = False
        try:
            return self._load(i)
        finally:
            if watchdog:
                faulthandler.cancel_dump_traceback_later()

    def _load(self, i: int) -> tuple[int, torch.Tensor | None, dict[str, Any]]:
        path = self.paths[i]
        meta: dict[str, Any] = {}
        try:
            decoded = decode(path, draft=None if self.exact else RESIZE, max_pixels=self.max_pixels)
            meta.update(width=decoded.size[0], height=decoded.size[1], format=decoded.format)
            if self.extra is not None:
                meta.update(self.extra(path, decoded))
            return i, preprocess(decoded.rgb, self.mean), meta
        except DecodeError as exc:
            meta["error"] = str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must never end a batch run
            meta["error"] = f"cannot decode: {type(exc).__name__}: {str(exc)[:100]}"
        return i, None, meta


def _worker_init(_: int) -> None:
    # Decoding is numpy/Pillow work; torch threads in workers would only fight the model.
    torch.set_num_threads(1)
    # Native decoders (libtiff, libheif) print their own diagnostics straight to fd 2; the
    # report already carries a one-line reason for that file, so keep the terminal clean.
    # Workers report exceptions through the DataLoader queue, never through stderr.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


def _collate(items: list[tuple[int, torch.Tensor | None, dict[str, Any]]]):
    good = [(i, t) for i, t, _ in items if t is not None]
    batch = torch.stack([t for _, t in good]) if good else None
    return [i for i, _ in good], batch, [(i, m) for i, _, m in items]


# A decoder that crashes its process (a native bug hit by a fuzzed file) or hangs takes only
# that file with it: the run goes on and the report says why.
CRASH_REASON = "decoder crashed or hung on this file (worker process ended)"
_PREFETCH = 2  # batches in flight per worker


class _WorkerDied(Exception):
    pass


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


def score_paths(
    paths: Iterable[str | os.PathLike[str]],
    model: torch.nn.Module,
    mean: Mean,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    workers: int = 0,
    exact: bool = False,
    extra: Callable[[str, Any], dict[str, Any]] | None = None,
    max_pixels: int | None = None,
    precision: str = "fp32",
    on_verdict: Callable[[Any], None] | None = None,
    compile: bool = False,
) -> Iterator[ScoreResult]:
    """Yield one :class:`ScoreResult` per path, in input order, as batches finish.

    ``extra(path, decoded)`` runs in the worker and adds fields to ``result.info``
    (EXIF, sharpness...). ``exact`` disables JPEG draft decoding. With ``workers > 0`` a file
    whose decoder kills its worker process, or takes longer than :data:`DECODE_TIMEOUT_S`, gets
    :data:`CRASH_REASON` and the run continues. ``precision``: ``fp32``, ``bf16``, or ``guard``
    (the first batch in both; ``on_verdict`` gets the :class:`ilgnet_cli.model.precision.Verdict` and
    the run goes on in the precision it chose). ``result.info["precision"]`` says which.
    ``compile``: bf16 under ``torch.compile`` (see :class:`ilgnet_cli.model.inference.Forward`).
    """
    device = torch.device(device)
    files = [str(p) for p in paths]
    if not files:
        return
    model.eval()
    # channels_last is faster for these convolutions on CPU (oneDNN) and on CUDA (cuDNN).
    if precision not in ("fp32", "bf16", "guard"):  # what results and the cache can record
        raise ValueError(f"unknown precision {precision!r} (fp32, bf16, guard)")
    forward = Forward(model.to(memory_format=torch.channels_last), precision, on_verdict=on_verdict,
                      compile=compile, batch=max(1, batch_size))
    dataset = _Images(files, mean, exact, extra, max_pixels)
    batch_size = max(1, batch_size)
    workers = max(0, workers)
    done = 0  # files[:done] have been yielded
    while done < len(files):
        try:
            for result in _infer(forward, dataset, range(done, len(files)), device, batch_size, workers):
                done += 1
                yield result
        except _WorkerDied:
            # The culprit is among the batches that were in flight. Re-decode those files one
            # at a time in a single worker: the next crash then names the file exactly.
            suspects = range(done, min(len(files), done + batch_size * workers * (_PREFETCH + 1)))
            for result in _isolate(forward, dataset, suspects, device):
                done += 1
                yield result


def _isolate(forward: Forward, dataset: _Images, indices: range, device: torch.device) -> Iterator[ScoreResult]:
    start = indices.start
    while start < indices.stop:
        try:
            for result in _infer(forward, dataset, range(start, indices.stop), device, 1, 1):
                start += 1
                yield result
        except _WorkerDied:
            yield ScoreResult(path=dataset.paths[start], error=CRASH_REASON)
            start += 1


def _infer(forward: Forward, dataset: _Images, indices: range, device: torch.device, batch_size: int,
           workers: int) -> Iterator[ScoreResult]:
    """Results for ``dataset[indices]`` in order; raises :class:`_WorkerDied` if a worker dies."""
    cuda = device.type == "cuda"
    loader = DataLoader(
        Subset(dataset, indices),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=cuda,
        # Decoding big JPEGs is the bottleneck on CPU: keep batches in flight per worker.
        prefetch_factor=_PREFETCH if workers > 0 else None,
        persistent_workers=False,
        worker_init_fn=_worker_init,
    )
    try:
        it = iter(loader)  # installs torch's SIGCHLD handler the first time
        with _worker_deaths_via_next():
            yield from _infer_batches(forward, dataset, it, device)
    except RuntimeError as exc:
        if workers and _worker_died(exc):
            raise _WorkerDied from None
        raise


def _infer_batches(forward: Forward, dataset: _Images, batches: Iterator, device: torch.device,
                   ) -> Iterator[ScoreResult]:
    keyed = (((indices_ok, metas), batch) for indices_ok, batch, metas in batches)
    for (indices_ok, metas), p in infer(forward, keyed, device):
        scores = {} if p is None else dict(zip(indices_ok, p.tolist(), strict=True))
        for i, meta in metas:
            meta = dict(meta)
            error = meta.pop("error", None)
            if i in scores:
                meta["precision"] = forward.precision  # fp32 or bf16: a guard decides before results exist
            yield ScoreResult(
                path=dataset.paths[i], score=scores.get(i), error=error,
                width=meta.pop("width", None), height=meta.pop("height", None),
                format=meta.pop("format", None), info=meta,
            )


# --------------------------------------------------------------------------- whole runs


def exif_extra(path: str, decoded: Any) -> dict[str, Any]:
    """Worker-side extras for reports: EXIF (never fails; errors land in the EXIF record) and
    the sharpness of the scoring decode (for best-of-burst)."""
    from ilgnet_cli.photos.bursts import sharpness
    from ilgnet_cli.photos.exif import read_exif

    return {"exif": read_exif(path).to_json(), "sharpness": sharpness(decoded.rgb)}


@dataclass
class RunStats:
    files: int = 0
    cache_hits: int = 0
    decoded: int = 0  # files that went through decoding in this run
    scored: int = 0
    errors: int = 0
    interrupted: bool = False


@dataclass
class ScoreRun:
    results: list[ScoreResult]  # every file that finished (scored or failed), input order
    stats: RunStats
    weights_name: str
    weights_sha256: str
    bursts: list | None = None  # set by group_bursts(): report rows are bursts, keeper first

    @property
    def scored(self) -> list[ScoreResult]:
        """Scored results, best first; ties broken by path so reports are stable."""
        return sorted((r for r in self.results if r.ok), key=lambda r: (-(r.score or 0.0), r.path))

    @property
    def errors(self) -> list[ScoreResult]:
        return sorted((r for r in self.results if not r.ok), key=lambda r: r.path)


ProgressCallback = Callable[[RunStats], None]


def run_score(
    files: list[str],
    loaded: Any,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    workers: int = 0,
    exact: bool = False,
    cache: Any = None,
    max_pixels: int | None = None,
    extra: Callable[[str, Any], dict[str, Any]] | None = exif_extra,
    progress: ProgressCallback | None = None,
    missing: list[str] | None = None,
    precision: str = "fp32",
    verdicts: Any = None,
    on_verdict: Callable[[Any], None] | None = None,
    compile: bool | None = None,
) -> ScoreRun:
    """Score ``files`` with cache lookups first; finished work is cached batch by batch.

    ``loaded`` is a :class:`ilgnet_cli.model.store.LoadedWeights`. Ctrl-C stops the run and returns
    what finished (``stats.interrupted``); nothing already scored is lost. ``precision`` is
    ``fp32``, ``bf16`` or ``guard`` (see :mod:`ilgnet_cli.model.precision`): a guard verdict already
    in ``verdicts`` (a :class:`~ilgnet_cli.model.precision.VerdictStore`) is reused, a new one stored
    there and passed to ``on_verdict``. A cache's mode gets ``+bf16`` for bf16 scores; fp32
    scores in the cache are always reused (they are the exact ones). ``compile``: bf16 under
    ``torch.compile``; ``None`` = only for runs that decode
    :data:`~ilgnet_cli.model.inference.COMPILE_MIN_PHOTOS` photos or more, where it pays.
    """
    from ilgnet_cli.model.precision import MIN_GUARD, device_kind
    from ilgnet_cli.photos.cache import FileKey
    from ilgnet_cli.photos.discover import unusable_reason

    device = torch.device(device)
    fp32_mode: str = cache.mode if cache is not None else ""
    kind = device_kind(device)
    if precision == "guard" and verdicts is not None:
        known = verdicts.get(loaded.sha256, kind)
        if known is not None:
            precision = "bf16" if known.bf16 else "fp32"

    def use(chosen: str) -> None:
        if cache is not None:
            cache.mode = fp32_mode + ("+bf16" if chosen == "bf16" else "")

    def verdict_reached(verdict: Any) -> None:
        use("bf16" if verdict.bf16 else "fp32")
        if verdicts is not None and verdict.n >= MIN_GUARD:
            verdicts.put(loaded.sha256, kind, verdict)
        if on_verdict:
            on_verdict(verdict)

    use(precision)
    # fp32 scores are always good enough; bf16 ones unless fp32 was asked for. Under a guard that
    # has no stored verdict yet (too few photos last time), the bf16 scores an earlier guard
    # accepted are reused too, or a small collection would be rescored on every run.
    lookups = [] if cache is None else [fp32_mode] if precision == "fp32" else [fp32_mode, fp32_mode + "+bf16"]

    stats = RunStats(files=len(files) + len(missing or []))
    done: dict[int, ScoreResult] = {}
    todo: list[tuple[int, FileKey]] = []
    for i, path in enumerate(files):
        try:
            key = FileKey.of(path)
        except OSError as exc:
            done[i] = ScoreResult(path=path, error=f"cannot read file: {exc.strerror or exc}")
            continue
        hit = None
        for mode in lookups:
            hit = cache.get(key, mode)
            if hit is not None:
                break
        if hit is None:
            todo.append((i, key))
            continue
        stats.cache_hits += 1
        meta = dict(hit.meta)
        done[i] = ScoreResult(path=path, score=hit.score, error=hit.error, width=meta.pop("width", None),
                              height=meta.pop("height", None), format=meta.pop("format", None), info=meta)
    pending: list[tuple[Any, float | None, str | None, dict[str, Any]]] = []

    def flush() -> None:
        if cache is not None and pending:
            cache.put_many(pending)
        pending.clear()

    if progress:
        progress(_count(stats, done))
    try:
        stream = score_paths([files[i] for i, _ in todo], loaded.model, loaded.mean, device=device,
                             batch_size=batch_size, workers=workers, exact=exact, extra=extra,
                             max_pixels=max_pixels, precision=precision, on_verdict=verdict_reached,
                             compile=should_compile(len(todo), precision, compile))
        for (i, key), result in zip(todo, stream, strict=False):
            stats.decoded += 1
            if result.ok and not (isinstance(result.score, (int, float)) and math.isfinite(result.score)):
                # NaN is no score: it would sort anywhere, print as bare NaN and be cached as NULL.
                result = ScoreResult(path=result.path, error="the model gave a non-finite score (broken weights?)",
                                     width=result.width, height=result.height, format=result.format, info=result.info)
            done[i] = result
            meta = {"width": result.width, "height": result.height, "format": result.format, **result.info}
            pending.append((key, result.score, result.error, meta))
            if len(pending) >= batch_size:
                flush()
                if progress:
                    progress(_count(stats, done))
    except KeyboardInterrupt:
        stats.interrupted = True
    finally:
        flush()
    for j, path in enumerate(missing or []):
        done[len(files) + j] = ScoreResult(path=path, error=unusable_reason(path))
    results = [done[i] for i in sorted(done)]
    _count(stats, done)
    if progress:
        progress(stats)
    return ScoreRun(results=results, stats=stats, weights_name=loaded.name, weights_sha256=loaded.sha256)


def _count(stats: RunStats, done: dict[int, ScoreResult]) -> RunStats:
    stats.scored = sum(1 for r in done.values() if r.ok)
    stats.errors = len(done) - stats.scored
    return stats


@dataclass
class Shard(Dist):
    """Under torchrun, each rank scores every world-th file; rank 0 gathers one report."""

    @classmethod
    def from_env(cls, device: torch.device) -> Shard:
        return cls(**vars(init_distributed(device)))

    def merge(self, run: ScoreRun) -> ScoreRun | None:
        if self.world == 1:
            return run
        import torch.distributed as dist

        gathered: list[ScoreRun | None] = [None] * self.world
        dist.all_gather_object(gathered, run)
        dist.destroy_process_group()
        if not self.main:
            return None
        merged = ScoreRun(results=[], stats=RunStats(), weights_name=run.weights_name,
                          weights_sha256=run.weights_sha256)
        for part in gathered:
            assert part is not None  # all_gather_object filled every slot
            merged.results.extend(part.results)
            for key in ("files", "cache_hits", "decoded", "scored", "errors"):
                setattr(merged.stats, key, getattr(merged.stats, key) + getattr(part.stats, key))
            merged.stats.interrupted |= part.stats.interrupted
        return merged
