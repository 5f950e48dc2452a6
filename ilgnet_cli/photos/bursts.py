"""Best-of-burst: group consecutive shots of one camera body and pick the sharp, best-scored keeper.

Frames belong to one burst when they come from the same body (make, model, serial) and each
was captured within ``seconds`` of the previous one (sub-second EXIF times). Inside a burst a
frame much blurrier than the sharpest one (variance of the Laplacian below half of the
burst's best) never becomes the keeper; among the sharp frames the best score wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ilgnet_cli.photos.exif import ExifInfo
from ilgnet_cli.photos.results import BurstMark, ScoreResult

BLUR_RATIO = 0.5

Body = tuple[str | None, str | None, str | None]


SHARPNESS_SIDE = 512  # the long side, in samples, the sharpness is measured on


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian of the grey image (higher = sharper).

    Computed on every n-th pixel of the scoring decode, n chosen so that about 512 samples span
    its long side (at least every second pixel): frames of one burst come from one camera and are
    compared at the same resolution, which is all best-of-burst needs, at a cost that does not
    grow with the photo."""
    step = max(2, max(rgb.shape[:2]) // SHARPNESS_SIDE)
    gray = rgb[::step, ::step].astype(np.float32).mean(axis=2)
    lap = (4 * gray[1:-1, 1:-1] - gray[:-2, 1:-1] - gray[2:, 1:-1] - gray[1:-1, :-2] - gray[1:-1, 2:])
    return float(lap.var()) if lap.size else 0.0


def body(exif: ExifInfo) -> Body:
    return (exif.make, exif.model, exif.serial)


def burst_groups(bodies: Sequence[Body], times: Sequence[float | None], seconds: float,
                 names: Sequence[str] | None = None) -> list[list[int]]:
    """Indices grouped into bursts: same body, each within ``seconds`` of the previous shot.
    Items without a capture time or a body are bursts of one. Groups come in body/time order."""
    names = names if names is not None else [str(i) for i in range(len(bodies))]
    timed = sorted((i for i in range(len(bodies)) if times[i] is not None and any(bodies[i])),
                   key=lambda i: (tuple(str(x) for x in bodies[i]), times[i], names[i]))
    groups: list[list[int]] = []
    for i in timed:
        prev = groups[-1][-1] if groups else None
        t, tp = times[i], times[prev] if prev is not None else None
        if prev is not None and bodies[prev] == bodies[i] and t is not None and tp is not None and t - tp <= seconds:
            groups[-1].append(i)
        else:
            groups.append([i])
    grouped = {i for g in groups for i in g}
    return groups + [[i] for i in range(len(bodies)) if i not in grouped]


@dataclass
class Burst:
    id: int
    members: list[ScoreResult]  # keeper first

    @property
    def keeper(self) -> ScoreResult:
        return self.members[0]


def rank_members(members: list[ScoreResult]) -> list[ScoreResult]:
    best_sharp = max((m.sharpness or 0.0) for m in members)

    def key(m: ScoreResult) -> tuple[bool, float, str]:
        blurry = (m.sharpness or 0.0) < BLUR_RATIO * best_sharp
        return (blurry, -(m.score or 0.0), m.path)

    return sorted(members, key=key)


def group_bursts(results: list[ScoreResult], seconds: float) -> list[Burst]:
    """Bursts over the scored results, ordered by keeper score (best first); each member's
    ``burst`` says its place."""
    scored = [r for r in results if r.ok]
    groups = burst_groups([body(r.exif) for r in scored], [r.exif.timestamp() for r in scored], seconds,
                          [r.path for r in scored])
    ranked = [rank_members([scored[i] for i in g]) for g in groups]
    ranked.sort(key=lambda g: (-(g[0].score or 0.0), g[0].path))
    out = []
    for n, members in enumerate(ranked, 1):
        for j, m in enumerate(members):
            m.burst = BurstMark(n, len(members), j == 0)
        out.append(Burst(n, members))
    return out
