"""Score a photo collection from Python, with the same defaults as ``ilgnet score``.

```python
from ilgnet_cli import score_collection
run = score_collection(["~/Photos"], weights="ilgnet-ava1")
for r in run.results:          # best first, then the files that could not be scored
    print(r.path, r.score, r.error, r.exif.camera)
```

The CLI is a thin layer over :func:`score_collection`: it parses options, shows progress and
renders the reports (:mod:`ilgnet_cli.photos.reports`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ilgnet_cli.data.decode import Decoded
from ilgnet_cli.data.source import PhotoFiles
from ilgnet_cli.errors import DataError
from ilgnet_cli.model import store
from ilgnet_cli.model.store import LoadedWeights
from ilgnet_cli.model.transform import PREPROCESS_VERSION, DecodeMode, Transform
from ilgnet_cli.photos.bursts import group_bursts as make_bursts
from ilgnet_cli.photos.bursts import sharpness
from ilgnet_cli.photos.cache import FileKey, ScoreCache, open_cache
from ilgnet_cli.photos.discover import Selection, find_images, unusable_reason
from ilgnet_cli.photos.exif import ExifInfo, read_exif
from ilgnet_cli.photos.results import RunStats, ScoreResult, ScoreRun
from ilgnet_cli.predict.gate import Gate, Shortcut, VerdictStore, verdict_key
from ilgnet_cli.predict.predictor import CRASH_REASON, Prediction, Predictor
from ilgnet_cli.runtime.device import backend_versions, device_kind, native_bf16, pick_device
from ilgnet_cli.runtime.distributed import init_distributed
from ilgnet_cli.runtime.forward import should_compile
from ilgnet_cli.runtime.paths import cache_home
from ilgnet_cli.runtime.precision import Precision
from ilgnet_cli.runtime.system import default_workers
from ilgnet_cli.runtime.text import display

ProgressCallback = Callable[[RunStats], None]


@dataclass
class CollectionNotes:
    """What a caller may want to tell the user; all optional."""

    cache: list[str] = field(default_factory=list)  # the cache was set aside or stopped working
    precision: list[str] = field(default_factory=list)  # the fidelity gate's verdicts
    missing: list[str] = field(default_factory=list)  # named paths that are no usable file


def photo_extra(path: str, decoded: Decoded) -> dict[str, Any]:
    """Worker-side extras for reports: EXIF (never fails; errors land in the EXIF record) and
    the sharpness of the scoring decode (for best-of-burst)."""
    return {"exif": read_exif(path).to_json(), "sharpness": sharpness(decoded.rgb)}


def decoder_version() -> str:
    """What decodes JPEGs (a new libjpeg can round DCT scaling differently)."""
    import PIL
    from PIL import features

    return f"pillow {PIL.__version__}, libjpeg {features.version('jpg') or '?'}"


def result_of(pred: Prediction) -> ScoreResult:
    meta = pred.meta
    exif = meta.get("exif")
    return ScoreResult(path=pred.name, score=pred.score, error=pred.error, width=meta.get("width"),
                       height=meta.get("height"), format=meta.get("format"),
                       exif=ExifInfo.from_json(exif if isinstance(exif, dict) else None),
                       sharpness=meta.get("sharpness"), precision=pred.precision,
                       decode=pred.decode if pred.ok else None)


def score_files(
    files: list[str],
    weights: LoadedWeights,
    *,
    transform: Transform | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 32,
    workers: int = 0,
    precision: Precision | str = Precision.FP32,
    gate: bool = False,
    cache: ScoreCache | None = None,
    max_pixels: int | None = None,
    extra: Callable[[str, Decoded], dict[str, Any]] | None = photo_extra,
    progress: ProgressCallback | None = None,
    missing: list[str] | None = None,
    compile: bool | None = None,
) -> ScoreRun:
    """Score ``files`` with cache lookups first; finished work is cached batch by batch.

    ``transform``: default the weights' exact one. ``precision``: fp32, bf16 or auto; ``gate``:
    check the run's shortcuts (auto's bf16, fast decoding) with :mod:`ilgnet_cli.predict.gate`,
    verdicts remembered in ``precision.json`` in the cache folder. Ctrl-C (and SIGTERM/SIGHUP, which
    the CLI turns into the same) stops the run and returns what finished (``stats.interrupted``);
    nothing already scored is lost.
    """
    device = torch.device(device)
    precision = Precision.parse(precision)
    transform = transform or weights.transforms()
    fidelity = None
    if gate and len(files) <= batch_size:
        # A run that fits in one batch gains nothing from a shortcut: checking it would cost as much
        # as the faithful path itself (an fp32 pass of the batch, a full decode per worker). Only the
        # gated shortcuts are dropped: what the user asked for by name (draft, bf16) is served.
        if transform.decode is DecodeMode.FAST:
            transform = transform.faithful
        precision = Precision.FP32 if precision is Precision.AUTO else precision
    if gate:
        bf16 = precision is Precision.AUTO and native_bf16(device)
        keys = {Shortcut.DECODE: verdict_key(Shortcut.DECODE, weights_sha256=weights.sha256, device="", versions="",
                                             decoder=f"{transform.key}, {decoder_version()}")}
        if bf16:
            compiled = should_compile(len(files), True, compile)
            keys[Shortcut.BF16] = verdict_key(Shortcut.BF16, weights_sha256=weights.sha256, device=device_kind(device),
                                              versions=backend_versions(), compile=compiled)
        fidelity = Gate(keys, VerdictStore(cache_home() / "precision.json"))
    predictor = Predictor(weights.model, transform, device=device, precision=precision, batch_size=batch_size,
                          workers=workers, gate=fidelity, compile=compile, compile_dir=cache_home() / "compile-cache")
    bf16_allowed = predictor.served_precision == "bf16"
    mode = predictor.transform.key
    # fp32 scores are always good enough, the faithful decode's first; bf16 ones while bf16 is what
    # this run serves.
    modes = list(dict.fromkeys([predictor.transform.faithful.key, mode]))
    lookups = modes + [m + "+bf16" for m in modes] if bf16_allowed else modes

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
        if cache is not None:
            for m in lookups:
                if (hit := cache.get(key, m, max_pixels)) is not None:
                    break
        if hit is None:
            todo.append((i, key))
            continue
        stats.cache_hits += 1
        done[i] = ScoreResult.from_cache(path, hit.score, hit.error, hit.meta)
    pending: list[tuple[FileKey, ScoreResult]] = []

    def flush() -> None:
        if cache is not None and pending:
            modes: dict[str, list[tuple[FileKey, float | None, str | None, dict[str, Any]]]] = {}
            for k, r in pending:
                if r.error == CRASH_REASON:  # a crash or hang may not happen again: never remembered
                    continue
                row_mode = (r.decode or mode) + ("+bf16" if r.precision == "bf16" else "")
                modes.setdefault(row_mode, []).append((k, r.score, r.error, r.to_cache()))
            for row_mode, rows in modes.items():
                cache.put_many(rows, max_pixels, mode=row_mode)
        pending.clear()

    if progress:
        progress(_count(stats, done))
    source = PhotoFiles([files[i] for i, _ in todo], extra=extra, max_pixels=max_pixels)
    try:
        for pred in predictor.predict(source):
            i, key = todo[pred.index]
            if pred.corrected:
                stats.corrected += 1
            else:
                stats.decoded += 1
            result = result_of(pred)
            done[i] = result
            pending.append((key, result))
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
    notes = list(predictor.notes) + ([v.describe() for v in fidelity.verdicts] if fidelity else [])
    return ScoreRun(results=results, stats=stats, weights_name=weights.name, weights_sha256=weights.sha256,
                    transform=predictor.transform.describe(), notes=notes)


def _count(stats: RunStats, done: dict[int, ScoreResult]) -> RunStats:
    stats.scored = sum(1 for r in done.values() if r.ok)
    stats.errors = len(done) - stats.scored
    return stats


def _merge(parts: list[ScoreRun]) -> ScoreRun:
    first = parts[0]
    merged = ScoreRun(results=[], stats=RunStats(), weights_name=first.weights_name,
                      weights_sha256=first.weights_sha256, transform=first.transform)
    for part in parts:
        merged.results.extend(part.results)
        merged.notes.extend(n for n in part.notes if n not in merged.notes)
        for key in ("files", "cache_hits", "decoded", "scored", "errors", "corrected"):
            setattr(merged.stats, key, getattr(merged.stats, key) + getattr(part.stats, key))
        merged.stats.interrupted |= part.stats.interrupted
    return merged


def score_collection(
    paths: Iterable[str | os.PathLike[str]],
    *,
    weights: str | LoadedWeights | None = None,
    device: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    exact: bool = False,
    decode: DecodeMode | str | None = None,
    precision: Precision | str = Precision.AUTO,
    compile: bool | None = None,
    cache: bool = True,
    recursive: bool = True,
    hidden: bool = False,
    include: Iterable[str] = (),
    exclude: Iterable[str] = (),
    skip: Iterable[str | os.PathLike[str]] = (),
    max_pixels: int | None = None,
    group_bursts: float | None = None,
    allow_download: bool = True,
    download_progress: Callable[[int, int | None], None] | None = None,
    progress: Callable[[int], ProgressCallback] | None = None,
    notes: CollectionNotes | None = None,
    on_note: Callable[[str, str], None] | None = None,
) -> ScoreRun | None:
    """Find the images under ``paths``, score them (cached), and return the run, best first.

    ``weights``: an installed name, a ``.safetensors`` file or loaded weights; None = the default
    weights, downloaded on first use unless ``allow_download`` is False (a registry name that is
    not installed is fetched the same way). ``decode``: ``fast`` (the default: DCT-scaled JPEG
    decoding, checked against the full-decode reference), ``reference``, ``exact`` (the
    authors' pipeline; ``exact=True`` is the same, and implies fp32) or ``draft``.
    ``precision``: ``auto`` (bf16 where native and checked, see :mod:`ilgnet_cli.predict.gate`),
    ``fp32`` or ``bf16``. ``compile``: bf16 under ``torch.compile`` (None: only for runs big
    enough to repay the compile time). ``skip``: paths never scored (e.g. this run's own outputs).
    ``group_bursts``: seconds between frames of one burst (None: no grouping).
    ``progress(total)`` may return a callback that gets :class:`~ilgnet_cli.photos.results.RunStats`
    as the run goes. ``notes`` collects what the user may want to know; ``on_note(kind, text)``
    hears each as it happens. Under torchrun each rank scores a shard and only rank 0 gets the
    run (the others get None). Raises :class:`~ilgnet_cli.errors.DataError` when nothing can be
    scored at all (no images found).
    """
    from ilgnet_cli.errors import UsageError

    notes = notes if notes is not None else CollectionNotes()

    def note(kind: str, text: str) -> None:
        (notes.precision if kind == "precision" else notes.cache).append(text)
        if on_note:
            on_note(kind, text)

    precision = Precision.parse(precision)
    mode = DecodeMode(decode) if decode is not None else DecodeMode.EXACT if exact else DecodeMode.FAST
    if mode is DecodeMode.EXACT and exact:
        if precision is Precision.BF16:
            raise UsageError("exact scoring is the authors' fp32 pipeline: it cannot run in bf16")
        precision = Precision.FP32
    dev = pick_device(device)
    selection = Selection(recursive=recursive, hidden=hidden, include=list(include), exclude=list(exclude),
                          skip=[Path(p).expanduser() for p in skip])
    missing: list[str] = []
    files = list(find_images([Path(p).expanduser() for p in paths], selection, missing))
    notes.missing = missing
    if not files:
        reason = "; ".join(f"{unusable_reason(m)}: {display(m)}" for m in missing) if missing else "no images found"
        raise DataError(reason)
    if isinstance(weights, LoadedWeights):
        loaded = weights.to(dev)
    else:
        name = store.resolve_weights(weights, allow_download=allow_download, progress=download_progress)
        loaded = store.load_model(name, dev)
    transform = loaded.transforms(mode)
    score_cache = None
    if cache:
        score_cache, problem = open_cache(cache_home() / "scores.sqlite", loaded.sha256, PREPROCESS_VERSION,
                                          transform.key)
        if problem:
            note("cache", problem)
    dd = init_distributed(dev)
    try:
        run = score_files(list(dd.shard(files)), loaded, transform=transform, device=dd.device, batch_size=batch_size,
                          workers=default_workers() if workers is None else workers, precision=precision, gate=True,
                          cache=score_cache, max_pixels=max_pixels, missing=missing if dd.main else [],
                          progress=progress(len(files)) if progress else None, compile=compile)
    finally:
        if score_cache is not None:
            score_cache.close()
            if score_cache.problem:
                note("cache", score_cache.problem)
    parts = dd.gather(run)
    dd.end()
    if parts is None:
        return None
    run = _merge(parts) if len(parts) > 1 else run
    for text in run.notes:
        note("precision", text)
    run.results = run.scored + run.errors  # best first (ties by path), then what failed
    if group_bursts is not None:
        run.bursts = make_bursts(run.results, group_bursts)
    return run
