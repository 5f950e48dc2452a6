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

from ilgnet_cli.errors import DataError
from ilgnet_cli.photos.scoring import ProgressCallback, ScoreRun


@dataclass
class CollectionNotes:
    """What a caller may want to tell the user; all optional."""

    cache: list[str] = field(default_factory=list)  # the cache was set aside or stopped working
    precision: str | None = None  # the bf16 guard's verdict, the first time it runs
    missing: list[str] = field(default_factory=list)  # named paths that are no usable file


def default_workers() -> int:
    # One decoder per core: measured on 2 cores, 2 workers beat 1 (20.0 vs 17.2 images/s) even
    # though the model's threads use the same cores.
    return max(1, min(8, os.cpu_count() or 1))


def score_collection(
    paths: Iterable[str | os.PathLike[str]],
    *,
    weights: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
    workers: int | None = None,
    exact: bool = False,
    precision: str = "auto",
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

    ``weights``: an installed name or a ``.safetensors`` file; None = the default weights,
    downloaded on first use unless ``allow_download`` is False. ``precision``: ``auto`` (bf16
    where native and checked, see :mod:`ilgnet_cli.model.precision`), ``fp32`` or ``bf16``; ``exact``
    is the authors' pipeline (full decode, fp32). ``compile``: bf16 under ``torch.compile`` (None:
    only for runs big enough to repay the compile time). ``skip``: paths never scored (e.g. this
    run's own outputs). ``group_bursts``: seconds between frames of one burst (None: no grouping).
    ``progress(total)`` may return a callback that gets :class:`~ilgnet_cli.photos.scoring.RunStats`
    as the run goes. ``notes`` collects what the user may want to know (cache trouble, the bf16
    guard's verdict); ``on_note(kind, text)`` hears each as it happens. Under torchrun each rank
    scores a shard and only rank 0 gets the run (the others get None). Raises
    :class:`~ilgnet_cli.errors.DataError` when nothing can be scored at all (no images found).
    """
    from ilgnet_cli.fsutil import display
    from ilgnet_cli.model import store
    from ilgnet_cli.model.precision import VerdictStore, plan
    from ilgnet_cli.model.preprocess import PREPROCESS_VERSION
    from ilgnet_cli.photos.cache import open_cache
    from ilgnet_cli.photos.discover import Selection, find_images, unusable_reason
    from ilgnet_cli.photos.scoring import Shard, pick_device, run_score

    notes = notes if notes is not None else CollectionNotes()

    def note(kind: str, text: str) -> None:
        if kind == "precision":
            notes.precision = text
        else:
            notes.cache.append(text)
        if on_note:
            on_note(kind, text)
    dev = pick_device(device)
    mode = plan(precision, dev, exact=exact)
    selection = Selection(recursive=recursive, hidden=hidden, include=list(include), exclude=list(exclude),
                          skip=[Path(p).expanduser() for p in skip])
    missing: list[str] = []
    files = list(find_images([Path(p).expanduser() for p in paths], selection, missing))
    notes.missing = missing
    if not files:
        reason = "; ".join(f"{unusable_reason(m)}: {display(m)}" for m in missing) if missing else "no images found"
        raise DataError(reason)
    if weights is None:
        weights = store.ensure_default(allow_download=allow_download, progress=download_progress)
    loaded = store.load_model(weights, dev)
    score_cache = None
    if cache:
        score_cache, problem = open_cache(store.home() / "scores.sqlite", loaded.sha256, PREPROCESS_VERSION,
                                       "exact" if exact else "draft")
        if problem:
            note("cache", problem)
    shard = Shard.from_env(dev)

    def verdict(v: Any) -> None:
        note("precision", v.describe())

    try:
        run = run_score(list(shard.shard(files)), loaded, device=shard.device, batch_size=batch_size,
                        workers=default_workers() if workers is None else workers, exact=exact, cache=score_cache,
                        max_pixels=max_pixels, progress=progress(len(files)) if progress else None,
                        missing=missing if shard.main else [], precision=mode,
                        verdicts=VerdictStore(store.home() / "precision.json"), on_verdict=verdict,
                        compile=compile)
    finally:
        if score_cache is not None:
            score_cache.close()
            if score_cache.problem:
                note("cache", score_cache.problem)
    merged = shard.merge(run)
    if merged is None:
        return None
    run = merged
    run.results = run.scored + run.errors  # best first (ties by path), then what failed
    if group_bursts is not None:
        from ilgnet_cli.photos.bursts import group_bursts as make_bursts

        run.bursts = make_bursts(run.results, group_bursts)
    return run
