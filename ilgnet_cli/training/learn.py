"""``ilgnet learn``: the photographer's taste, learned from their ratings on top of ILGNet.

What is trained, chosen by measurement (grouped 5-fold CV on the 51 real camera photos, each
scene sharp vs blurred, warm vs cool grade, high vs low contrast; random base weights):

* the trunk (conv1 ... inception_4a, loss1/conv) is frozen; each photo is read once, exactly
  as ``ilgnet score`` reads it, and its 1024-d pooled trunk feature is kept (per-channel means
  of inception_3a and of 256 of inception_3b's channels, and loss1/conv per 2x2 quadrant), with
  the same for its mirror image (augmentation: AUC 0.70 -> 0.79 on the blur taste with the
  base's own temp_cjy features);
* a logistic regression on the standardised feature, L2 penalty chosen by grouped inner CV
  (log-loss), fitted by L-BFGS in float64.

The pooled feature beat the base's own ``temp_cjy`` output and its input (held-out AUC blur
0.93 vs 0.87 / 0.89, grade 0.93 vs 0.90 / 0.91, contrast 0.91 vs 0.91 / 0.89); fine-tuning
more than a linear head on a few hundred photos is what overfits. Installed, the taste is only
that head (a few KB) and the sha256 of its base (:mod:`ilgnet_cli.model.taste`); loading it
composes the two, so ``ilgnet score --weights NAME`` needs nothing new and the store does not
hold another 604 MB copy of the network per taste.

Evaluation is grouped k-fold cross-validation: photos of one scene (same file stem, one burst
of one camera body, perceptual hashes close) are always on the same side of a fold. Base and
learned scores are compared on the held-out folds (AUC, accuracy next to the majority
baseline, Spearman with the stars; 95% CIs by a bootstrap over groups); the learned weights
must beat the base by more than noise (the paired bootstrap CI of the AUC gain above 0), with
at least 40 labelled photos and 10 on each side, to be installed without ``--force``.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from ilgnet_cli.data.decode import Decoded
from ilgnet_cli.data.source import PhotoFiles
from ilgnet_cli.errors import DataError, UsageError
from ilgnet_cli.model.ilgnet import FEATURE_DIM
from ilgnet_cli.model.provenance import Provenance
from ilgnet_cli.model.transform import Crops, DecodeMode
from ilgnet_cli.photos.bursts import body, burst_groups
from ilgnet_cli.photos.collection import photo_extra
from ilgnet_cli.photos.exif import ExifInfo
from ilgnet_cli.predict.predictor import Predictor
from ilgnet_cli.runtime.text import clip
from ilgnet_cli.training import metrics

if TYPE_CHECKING:
    from ilgnet_cli.model.store import LoadedWeights
MIN_RATINGS = 40
MIN_PER_SIDE = 10
DEFAULT_FOLDS = 5
DEFAULT_GROUP_SECONDS = 5.0
# Hamming distance (of 64 bits) under which two photos are one scene: blurred, regraded, cropped
# or recompressed copies of one frame measured 0-12 on ../shared/photos/camera (see
# PHASH_SCALES), distinct photos 18 and more.
PHASH_DISTANCE = 12
# Penalties tried by the inner cross-validation, as multiples of the number of training rows.
ALPHAS = (0.003, 0.03, 0.3, 3.0)
BOOTSTRAP_ROUNDS = 1000


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class Thresholds:
    """liked: rating >= ``liked``; disliked: rejected (-1) or 1 <= rating <= ``disliked``; between: left out."""

    liked: float = 4.0
    disliked: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.liked <= 5 and 0 <= self.disliked < 5):
            raise UsageError("--liked must be in 1..5 and --disliked in 0..4 (0: only rejects are disliked)")
        if self.disliked >= self.liked:
            raise UsageError(f"--disliked ({self.disliked:g}) must be below --liked ({self.liked:g})")

    def label(self, rating: float) -> int | None:
        if rating == -1 or 0 < rating <= self.disliked:
            return 0
        if rating >= self.liked:
            return 1
        return None

    def describe(self) -> str:
        dis = "rejects" if self.disliked < 1 else f"rejects and 1-{self.disliked:g} stars"
        return f"liked: {self.liked:g}-5 stars; disliked: {dis}"


# --------------------------------------------------------------------------- features


def phash(rgb: np.ndarray) -> int:
    """64-bit DCT perceptual hash: the signs of the 8x8 lowest frequencies of a 32x32 grey image
    against their median. Blur, colour grades and small crops barely move it."""
    from PIL import Image

    gray = Image.fromarray(np.ascontiguousarray(rgb)).convert("L").resize((32, 32), Image.Resampling.BOX)
    g = np.asarray(gray, dtype=np.float64)
    n = np.arange(32)
    dct = np.cos(np.pi * (2 * n[None, :] + 1) * n[:, None] / 64)
    low = (dct @ g @ dct.T)[:8, :8].reshape(-1)
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


# Hashes of the whole picture and of its centre at these scales: a centred crop down to 60% of
# the side still matches one of them (measured on ../shared/photos/camera: 5-40% crops within
# 10 bits, distinct photos 18+ apart). An off-centre crop is joined through its EXIF time.
PHASH_SCALES = (1.0, 0.9, 0.8, 0.7, 0.6)


def phashes(rgb: np.ndarray) -> list[int]:
    h, w = rgb.shape[:2]
    out = []
    for s in PHASH_SCALES:
        dy, dx = int(h * (1 - s) / 2), int(w * (1 - s) / 2)
        out.append(phash(rgb[dy:h - dy, dx:w - dx]))
    return out


def hash_distance(a: int | list[int], b: int | list[int]) -> int:
    """Bits between two photos' hashes: the whole of each against every scale of the other."""
    a, b = ([a] if isinstance(a, int) else list(a)), ([b] if isinstance(b, int) else list(b))
    return min(min(bin(a[0] ^ x).count("1") for x in b), min(bin(b[0] ^ x).count("1") for x in a))


def learn_extra(path: str, decoded: Decoded) -> dict[str, Any]:
    """Worker-side extras: EXIF and sharpness (as scoring's), and the perceptual hashes."""
    out = photo_extra(path, decoded)
    out["phash"] = phashes(decoded.rgb)
    return out


@dataclass
class Features:
    paths: list[str]  # photos that decoded, in input order
    h: np.ndarray  # (n, 1024) float32 temp_cjy output
    h_mirror: np.ndarray | None  # the mirror images'
    base_scores: np.ndarray  # (n,) the base model's P(high)
    info: list[dict[str, Any]]  # per photo: exif, sharpness, phash
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): not decoded


def extract(files: list[str], loaded: LoadedWeights, *, device: torch.device | str = "cpu", batch_size: int = 16,
            workers: int = 0, mirror: bool = True, max_pixels: int | None = None,
            progress: Callable[[int], None] | None = None) -> Features:
    """Base-model features of ``files`` (and of their mirror images), decoded and batched as
    ``ilgnet score`` does (the same predictor and fast decode, checked by the fidelity gate)."""
    from ilgnet_cli.photos.collection import decoder_version
    from ilgnet_cli.predict.gate import Gate, Shortcut, VerdictStore, verdict_key
    from ilgnet_cli.runtime.paths import cache_home

    transform = loaded.transforms(DecodeMode.FAST, Crops.MIRROR if mirror else Crops.CENTRE)
    key = verdict_key(Shortcut.DECODE, weights_sha256=loaded.sha256, device="", versions="",
                      decoder=f"{transform.key}, {decoder_version()}")
    gate = Gate({Shortcut.DECODE: key}, VerdictStore(cache_home() / "precision.json"))
    predictor = Predictor(loaded.model, transform, device=device, batch_size=batch_size, workers=workers,
                          gate=gate, features=True)
    final: dict[int, Any] = {}
    for pred in predictor.predict(PhotoFiles(files, extra=learn_extra, max_pixels=max_pixels)):
        final[pred.index] = pred
        if progress and not pred.corrected:
            progress(len(final))
    paths, scores, info, errors, rows, mirrored = [], [], [], [], [], []
    for i in sorted(final):
        pred = final[i]
        if not pred.ok or pred.features is None:
            errors.append((pred.name, pred.error or "not decoded"))
            continue
        feats = pred.features
        if not (np.isfinite(feats).all() and math.isfinite(pred.crop_scores[0])):
            errors.append((pred.name, "the base model gave non-finite values (broken weights?)"))
            continue
        paths.append(pred.name)
        scores.append(pred.crop_scores[0])  # the centre crop: what `ilgnet score` gives
        info.append(pred.meta)
        rows.append(feats[0])
        if mirror:
            mirrored.append(feats[1])
    empty = np.zeros((0, FEATURE_DIM), np.float32)
    return Features(paths=paths, h=np.stack(rows) if rows else empty,
                    h_mirror=(np.stack(mirrored) if mirrored else empty) if mirror else None,
                    base_scores=np.asarray(scores, np.float64), info=info, errors=errors)


# --------------------------------------------------------------------------- groups


class _UnionFind:
    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        a, b = self.find(i), self.find(j)
        if a != b:
            self.parent[max(a, b)] = min(a, b)


def scene_groups(paths: list[str], info: list[dict[str, Any]], *, seconds: float = DEFAULT_GROUP_SECONDS,
                 phash_distance: int = PHASH_DISTANCE,
                 progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Group id per photo: near-identical shots share one, so that no fold has them on both sides.

    Joined: the same file stem in one folder (RAW + JPEG, edits saved beside); one burst (same
    camera body, each shot within ``seconds`` of the previous, as bursts.py); perceptual hashes
    within ``phash_distance`` bits (copies, centred crops, grades, shots without EXIF times).
    """
    import os

    n = len(paths)
    uf = _UnionFind(n)
    stems: dict[tuple[str, str], int] = {}
    for i, p in enumerate(paths):
        folder, name = os.path.split(os.path.normpath(p))
        key = (folder, name.split(".", 1)[0].casefold())
        if key in stems:
            uf.union(stems[key], i)
        else:
            stems[key] = i
    exifs = [ExifInfo.from_json(d.get("exif") if isinstance(d.get("exif"), dict) else None) for d in info]
    for group in burst_groups([body(e) for e in exifs], [e.timestamp() for e in exifs], seconds, paths):
        for j in group[1:]:
            uf.union(group[0], j)
    for i, j in near_pairs([d.get("phash") for d in info], phash_distance, progress):
        uf.union(i, j)
    roots = [uf.find(i) for i in range(n)]
    ids = {r: k for k, r in enumerate(dict.fromkeys(roots))}
    return np.asarray([ids[r] for r in roots], dtype=np.int64)


NEAR_CHUNK = 512  # rows of the all-pairs comparison at a time (bounded memory)


def near_pairs(hashes: list[Any], distance: int, progress: Callable[[int, int], None] | None = None
               ) -> list[tuple[int, int]]:
    """Pairs (i < j) whose :func:`hash_distance` is at most ``distance``.

    Every pair is compared, but as vectorised popcounts over chunks of rows (numpy), not in
    Python: 20,000 photos take seconds, with ``progress(done, total)`` after every chunk. An exact
    index that skips pairs cannot beat this at a radius of 12 bits in 64: a block index needs
    13 blocks of 5 bits, each matching 1/32 of all photos."""
    valid = [i for i, h in enumerate(hashes) if isinstance(h, list) and h and all(isinstance(x, int) for x in h)]
    if len(valid) < 2:
        return []
    scales = max(len(hashes[i]) for i in valid)
    table = np.zeros((len(valid), scales), dtype=np.uint64)
    for row, i in enumerate(valid):
        hs = [x & 0xFFFFFFFFFFFFFFFF for x in hashes[i]]
        table[row, :] = hs + [hs[0]] * (scales - len(hs))
    whole = table[:, 0]
    out: list[tuple[int, int]] = []
    for start in range(0, len(valid), NEAR_CHUNK):
        rows = whole[start:start + NEAR_CHUNK]
        # the whole of each row's photo against every scale of every photo, and the reverse
        best = np.full((len(rows), len(valid)), 64, dtype=np.uint8)
        for s in range(scales):
            best = np.minimum(best, np.bitwise_count(rows[:, None] ^ table[None, :, s]))
            best = np.minimum(best, np.bitwise_count(table[start:start + NEAR_CHUNK, s][:, None] ^ whole[None, :]))
        a, b = np.nonzero(best <= distance)
        out.extend((valid[start + x], valid[y]) for x, y in zip(a.tolist(), b.tolist(), strict=True)
                   if start + x < y)
        if progress:
            progress(min(start + NEAR_CHUNK, len(valid)), len(valid))
    return out


def group_folds(groups: np.ndarray, y: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Fold (0..k-1) per row: whole groups per fold, class counts balanced across folds."""
    rng = np.random.default_rng(seed)
    uniq = rng.permutation(np.unique(groups))
    counts = {g: np.bincount(y[groups == g], minlength=2) for g in uniq}
    order = sorted(uniq, key=lambda g: -counts[g].sum())  # big groups first, ties in random order
    totals = np.maximum(np.bincount(y, minlength=2), 1)
    load = np.zeros((k, 2))
    fold_of = {}
    for g in order:
        c = counts[g]
        cost = [np.abs((load[f] + c) / totals).sum() + 1e-9 * load[f].sum() for f in range(k)]
        f = int(np.argmin(cost))
        load[f] += c
        fold_of[g] = f
    return np.asarray([fold_of[g] for g in groups], dtype=np.int64)


# --------------------------------------------------------------------------- the head


@dataclass
class Head:
    """P(liked) = sigmoid(w.h + b) on raw temp_cjy features (the standardisation folded in)."""

    w: np.ndarray  # (1024,) float64
    b: float
    alpha: float

    def logit(self, h: np.ndarray) -> np.ndarray:
        return np.asarray(h, np.float64) @ self.w + self.b

    def predict(self, h: np.ndarray) -> np.ndarray:
        return _sigmoid(self.logit(h))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


def _fit(z: torch.Tensor, y: torch.Tensor, lam: float, init: torch.Tensor | None = None) -> torch.Tensor:
    """L2 logistic regression (the intercept, last entry, not penalised) by L-BFGS in float64.

    Strongly convex, so any start converges to the one optimum; a warm start from the previous
    penalty makes the path over penalties cheap. Each step costs two products with z.
    """
    n, d = z.shape
    theta = (init.clone() if init is not None else torch.zeros(d + 1, dtype=torch.float64)).requires_grad_(True)
    opt = torch.optim.LBFGS([theta], lr=1.0, max_iter=500, tolerance_grad=1e-7, tolerance_change=1e-10,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = z @ theta[:-1] + theta[-1]
        loss = (F.binary_cross_entropy_with_logits(logits, y, reduction="sum")
                + 0.5 * lam * theta[:-1].square().sum()) / n
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return theta.detach()


@dataclass
class _Standardised:
    mu: np.ndarray
    sd: np.ndarray
    z: torch.Tensor

    @classmethod
    def of(cls, h: np.ndarray) -> _Standardised:
        h = np.asarray(h, np.float64)
        mu, sd = h.mean(axis=0), h.std(axis=0)
        sd = np.where(sd > 1e-6 * max(1e-12, float(sd.max(initial=0.0))), sd, np.inf)  # dead units: weight 0
        return cls(mu, sd, torch.from_numpy((h - mu) / sd))

    def head(self, theta: torch.Tensor, alpha: float) -> Head:
        w = theta[:-1].numpy() / self.sd
        return Head(w=w, b=float(theta[-1]) - float(w @ self.mu), alpha=alpha)


def fit_heads(h: np.ndarray, y: np.ndarray, alphas: tuple[float, ...] = ALPHAS) -> list[Head]:
    """One head per penalty (standardised features, scaling folded back into w and b)."""
    std = _Standardised.of(h)
    target = torch.from_numpy(np.asarray(y, np.float64))
    heads: dict[float, Head] = {}
    theta = None
    for alpha in sorted(alphas, reverse=True):  # strong to weak: each warm-starts the next
        theta = _fit(std.z, target, alpha * len(y), theta)
        heads[alpha] = std.head(theta, alpha)
    return [heads[a] for a in alphas]


def fit_head(h: np.ndarray, y: np.ndarray, alpha: float) -> Head:
    return fit_heads(h, y, (alpha,))[0]


def _training_rows(feats: Features, idx: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows of ``idx`` and their mirror images, with their labels."""
    h = feats.h[idx]
    if feats.h_mirror is not None and len(feats.h_mirror):
        return np.vstack([h, feats.h_mirror[idx]]), np.concatenate([y[idx], y[idx]])
    return h, y[idx]


def choose_alpha(feats: Features, idx: np.ndarray, y: np.ndarray, groups: np.ndarray, *, folds: int = 3,
                 seed: int = 0) -> float:
    """The penalty with the lowest grouped inner-CV log-loss on the rows ``idx``."""
    inner = group_folds(groups[idx], y[idx], min(folds, len(np.unique(groups[idx]))), seed + 1)
    losses = np.zeros(len(ALPHAS))
    if len(np.unique(inner)) < 2:
        return ALPHAS[len(ALPHAS) // 2]
    for f in np.unique(inner):
        tr, te = idx[inner != f], idx[inner == f]
        if len(np.unique(y[tr])) < 2:
            continue
        for k, head in enumerate(fit_heads(*_training_rows(feats, tr, y))):
            p = np.clip(head.predict(feats.h[te]), 1e-6, 1 - 1e-6)
            losses[k] -= float(np.sum(y[te] * np.log(p) + (1 - y[te]) * np.log(1 - p)))
    return ALPHAS[int(np.argmin(losses))]


def train_head(feats: Features, idx: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> Head:
    alpha = choose_alpha(feats, idx, y, groups, seed=seed)
    return fit_head(*_training_rows(feats, idx, y), alpha)


# --------------------------------------------------------------------------- evaluation


@dataclass
class Metric:
    value: float
    ci: tuple[float, float]


@dataclass
class SideMetrics:
    auc: Metric
    accuracy: Metric
    spearman: Metric


@dataclass
class CVResult:
    folds: int
    n: int
    liked: int
    disliked: int
    groups: int
    majority_baseline: float
    base: SideMetrics
    learned: SideMetrics
    auc_gain: Metric  # learned - base, paired bootstrap over groups
    oof: np.ndarray  # learned P(liked) of each row from the fold that held it out

    @property
    def better(self) -> bool:
        return bool(self.auc_gain.ci[0] > 0)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("oof")
        d["better_than_base"] = self.better
        return d


def _cluster_ci(fn: Callable[[np.ndarray], float], groups: np.ndarray, seed: int) -> tuple[float, float]:
    """Bootstrap CI resampling whole groups (rows of one scene are not independent)."""
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]

    def resampled(picks: np.ndarray) -> float:
        return fn(np.concatenate([members[i] for i in picks]))

    lo, hi = metrics.bootstrap_ci(resampled, len(members), rounds=BOOTSTRAP_ROUNDS, seed=seed)
    return (round(lo, 6), round(hi, 6))


def _side(y: np.ndarray, p: np.ndarray, stars: np.ndarray, groups: np.ndarray, seed: int) -> SideMetrics:
    def auc(i): return metrics.roc_auc(y[i], p[i])
    def acc(i): return metrics.accuracy(y[i], (p[i] > 0.5).astype(int))
    def rho(i): return metrics.spearman(p[i], stars[i]) if np.ptp(stars[i]) > 0 and np.ptp(p[i]) > 0 else math.nan
    all_ = np.arange(len(y))
    return SideMetrics(*(Metric(round(float(f(all_)), 6), _cluster_ci(f, groups, seed)) for f in (auc, acc, rho)))


def cross_validate(feats: Features, y: np.ndarray, stars: np.ndarray, groups: np.ndarray, *,
                   folds: int = DEFAULT_FOLDS, seed: int = 0) -> CVResult:
    """Grouped k-fold: learned vs base on held-out folds."""
    k = min(folds, len(np.unique(groups)))
    if k < 2:
        raise DataError("cross-validation needs at least 2 separate scenes")
    fold = group_folds(groups, y, k, seed)
    oof = np.full(len(y), np.nan)
    for f in range(k):
        tr, te = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        if len(te) == 0:
            continue
        if len(np.unique(y[tr])) < 2:
            oof[te] = y[tr].mean()
            continue
        oof[te] = train_head(feats, tr, y, groups, seed).predict(feats.h[te])
    base = feats.base_scores
    stars = np.where(stars < 0, 0.0, stars)  # a reject ranks below one star

    def gain(i):
        return metrics.roc_auc(y[i], oof[i]) - metrics.roc_auc(y[i], base[i])

    return CVResult(
        folds=k, n=len(y), liked=int(y.sum()), disliked=int(len(y) - y.sum()), groups=len(np.unique(groups)),
        majority_baseline=round(metrics.majority_baseline(y), 6),
        base=_side(y, base, stars, groups, seed), learned=_side(y, oof, stars, groups, seed),
        auc_gain=Metric(round(float(gain(np.arange(len(y)))), 6), _cluster_ci(gain, groups, seed)), oof=oof)


# --------------------------------------------------------------------------- installing


def check_enough(y: np.ndarray) -> str | None:
    """Why these labels are too few to learn from and evaluate, or None."""
    liked, disliked = int(y.sum()), int(len(y) - y.sum())
    if len(y) < MIN_RATINGS or liked < MIN_PER_SIDE or disliked < MIN_PER_SIDE:
        return (f"too few ratings to learn and evaluate a taste: {liked} liked and {disliked} disliked photos "
                f"(at least {MIN_RATINGS} in all and {MIN_PER_SIDE} on each side)")
    return None


@dataclass
class Dataset:
    """The labelled photos that decoded: features, labels, stars and scene groups."""

    feats: Features
    y: np.ndarray
    stars: np.ndarray
    groups: np.ndarray
    left_out: int = 0  # rated photos between the thresholds


def labelled(feats: Features, ratings: dict[str, float], thresholds: Thresholds, *,
             seconds: float = DEFAULT_GROUP_SECONDS, progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Keep the photos with a label; groups are computed over them."""
    keep, y, stars, left_out = [], [], [], 0
    for i, p in enumerate(feats.paths):
        label = thresholds.label(ratings[p])
        if label is None:
            left_out += 1
            continue
        keep.append(i)
        y.append(label)
        stars.append(ratings[p])
    idx = np.asarray(keep, dtype=np.int64)
    sub = Features(paths=[feats.paths[i] for i in idx], h=feats.h[idx],
                   h_mirror=feats.h_mirror[idx] if feats.h_mirror is not None else None,
                   base_scores=feats.base_scores[idx], info=[feats.info[i] for i in idx], errors=feats.errors)
    groups = scene_groups(sub.paths, sub.info, seconds=seconds, progress=progress)
    return Dataset(sub, np.asarray(y, np.int64), np.asarray(stars, np.float64), groups, left_out)


def metadata(*, base_name: str, base_sha256: str, ratings: int, data: Dataset, thresholds: Thresholds,
             cv: CVResult | None, head: Head, mirror: bool, forced: bool) -> dict[str, str]:
    """Safetensors metadata of learned weights (strings only)."""
    learn = {
        "base": base_name, "base_sha256": base_sha256, "ratings": ratings, "labelled": len(data.y),
        "liked": int(data.y.sum()), "disliked": int(len(data.y) - data.y.sum()),
        "thresholds": {"liked": thresholds.liked, "disliked": thresholds.disliked},
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "head": f"logistic on pooled trunk features (L2, alpha {head.alpha:g}{', mirrored copies' if mirror else ''})",
        "cross_validation": cv.to_json() if cv is not None else None, "forced": forced,
    }
    return {"learned": json.dumps(learn, sort_keys=True), "learned_base": base_name, "base_sha256": base_sha256,
            "ratings": str(ratings), "thresholds": f"liked>={thresholds.liked:g},disliked<={thresholds.disliked:g}"}


# --------------------------------------------------------------------------- the whole run


@dataclass
class Outcome:
    data: Dataset | None
    cv: CVResult | None
    head: Head | None
    refusal: str | None  # why the weights were not installed (or would not be, without --force)
    installed: Any = None  # store.Installed
    decode_errors: list[tuple[str, str]] = field(default_factory=list)
    labelled_before_decoding: int = 0


def check_name(name: str, *, base: str | None = None, replace: bool = False) -> None:
    """A store name for a taste: never one of the registry's (it would hide them), never the base,
    and an installed set only with ``replace``."""
    from ilgnet_cli.model import store

    store._check_name(name)
    try:
        known = store.load_registry().weights
    except store.WeightsError:
        known = {}
    if name in known:
        raise UsageError(f"--name {name} is a registry weights name; choose another (e.g. {name}-mine)")
    if base is not None and name == base:
        raise UsageError(f"--name {name} is the base weights themselves; choose another name")
    if not replace and store.installed(name) is not None:
        raise UsageError(f"weights {name!r} are installed already: choose another --name, or --replace them")


def learn_taste(ratings: Any, loaded: Any, *, name: str | None, replace: bool = False,
                thresholds: Thresholds = Thresholds(),
        folds: int = DEFAULT_FOLDS, seconds: float = DEFAULT_GROUP_SECONDS, seed: int = 0, force: bool = False,
        mirror: bool = True, device: torch.device | str = "cpu", workers: int = 0, batch_size: int = 16,
        max_pixels: int | None = None, progress: Callable[[int], None] | None = None,
        grouping: Callable[[int, int], None] | None = None) -> Outcome:
    """Ratings -> features -> grouped CV -> head -> installed as ``name`` (None: evaluate only).

    Installs only when the learned weights beat the base beyond noise on held-out folds and
    there are enough ratings, unless ``force``. ``ratings`` is a :class:`ratings.RatingsReport`.
    """
    from ilgnet_cli.model import store

    if name is not None:
        check_name(name, base=loaded.name, replace=replace)
        # A taste is a head on stored weights (found again by their sha256): a file given as the
        # base must be in the store; stored by 'weights add', it is the stored copy that counts.
        stored = next((i for i in store.installed_all() if loaded.sha256 in (i.sha256, i.source_sha256)), None)
        if stored is None:
            raise UsageError(f"--base {clip(str(loaded.path))} is not in the weights store, and a taste is "
                             f"installed as a head on stored weights: run 'ilgnet weights add FILE --name NAME', "
                             f"then learn with --base NAME (or leave out --name to only evaluate)")
        if stored.sha256 != loaded.sha256:
            loaded = store.load_model(stored.name, device)
    rating_of = {p.path: p.rating for p in ratings.photos}
    files = [p.path for p in ratings.photos if thresholds.label(p.rating) is not None]
    if not files:
        raise DataError(f"no photo is rated liked or disliked ({thresholds.describe()}); "
                        "nothing to learn from")
    feats = extract(files, loaded, device=device, batch_size=batch_size, workers=workers, mirror=mirror,
                    max_pixels=max_pixels, progress=progress)
    data = labelled(feats, rating_of, thresholds, seconds=seconds, progress=grouping)
    data.left_out = sum(thresholds.label(p.rating) is None for p in ratings.photos)  # never extracted
    out = Outcome(data=data, cv=None, head=None, refusal=check_enough(data.y), decode_errors=feats.errors,
                  labelled_before_decoding=len(files))
    if len(np.unique(data.y)) < 2:
        out.refusal = out.refusal or "only one side (liked or disliked) among the photos that decoded"
        return out  # nothing can be fitted, even with --force
    if out.refusal is None:
        out.cv = cross_validate(data.feats, data.y, data.stars, data.groups, folds=folds, seed=seed)
        if not out.cv.better:
            out.refusal = (f"the learned weights are not better than the base beyond noise on held-out photos "
                           f"(AUC {out.cv.learned.auc.value:.3f} vs {out.cv.base.auc.value:.3f}; gain 95% CI "
                           f"{out.cv.auc_gain.ci[0]:+.3f} to {out.cv.auc_gain.ci[1]:+.3f})")
    out.head = train_head(data.feats, np.arange(len(data.y)), data.y, data.groups, seed)
    if name is not None and (out.refusal is None or force):
        meta = metadata(base_name=loaded.name, base_sha256=loaded.sha256, ratings=len(ratings.photos),
                        data=data, thresholds=thresholds, cv=out.cv, head=out.head, mirror=mirror,
                        forced=out.refusal is not None)
        provenance = Provenance(dataset="photos", summary=f"{len(data.y)} photos you rated (no AVA images)",
                                bases=(loaded.provenance,))
        out.installed = store.install_taste(name, loaded, out.head.w, out.head.b, metadata=meta,
                                            provenance=provenance, replace=replace)
    return out
