"""Classification and correlation metrics that cannot mislead: every accuracy comes with the
majority-class baseline of the same test set, balanced accuracy, ROC AUC and bootstrap CIs.

Pure numpy (no scikit-learn at run time); tests check each against scikit-learn / scipy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PaperFigure:
    """An accuracy the paper reports (Jin et al. 2016, Table 2), with the sample it was measured on.

    The authors' own Caffe test logs (shared/ilgnet/results/AVA{1,2}_result.txt) say "Running for 50
    iterations" of their val.prototxt batches (50 for AVA1, 48 for AVA2): 2,500 and 2,400 images,
    not the 20,000 / 25,553 of the test lists. Which ones depends on their LMDB's order (the AVA1
    list is sorted, low first), so the figure carries its sampling noise: about +-1.5 points."""

    accuracy: float
    n: int
    listed: int
    how: str

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_ci(self.accuracy, self.n)


PAPER = {
    "ilgnet-ava1": PaperFigure(0.8168, 2500, 20_000, "50 batches of 50 (their AVA1 test log)"),
    "ilgnet-ava2": PaperFigure(0.8550, 2400, 25_553, "50 batches of 48 (their AVA2 test log)"),
}
PAPER_ACCURACY = {k: v.accuracy for k, v in PAPER.items()}


def wilson_ci(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``p`` observed on ``n`` items (95% by default)."""
    if n <= 0:
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def two_proportions(p1: float, n1: int, p2: float, n2: int) -> tuple[float, float]:
    """(difference p1 - p2, two-sided p-value) of the pooled two-sample z-test on proportions."""
    if n1 <= 0 or n2 <= 0:
        return p1 - p2, float("nan")
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return p1 - p2, 1.0 if p1 == p2 else 0.0
    z = abs(p1 - p2) / se
    return p1 - p2, float(math.erfc(z / math.sqrt(2)))


def accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    return float(np.mean(y == pred))


def majority_baseline(y: np.ndarray) -> float:
    """Accuracy of always answering the most frequent class of this test set."""
    if y.size == 0:
        return 0.0
    return float(max(np.mean(y == 1), np.mean(y == 0)))


def confusion(y: np.ndarray, pred: np.ndarray) -> list[list[int]]:
    """[[TN, FP], [FN, TP]] (rows: true class 0/1, columns: predicted 0/1)."""
    return [[int(np.sum((y == t) & (pred == p))) for p in (0, 1)] for t in (0, 1)]


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    recalls = [np.mean(pred[y == c] == c) for c in (0, 1) if np.any(y == c)]
    return float(np.mean(recalls)) if recalls else 0.0


def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their positions."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends, strict=True):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return ranks


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney U / (n0 n1), ties counted half; NaN when one class is absent."""
    n1 = int(np.sum(y == 1))
    n0 = len(y) - n1
    if n0 == 0 or n1 == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[y == 1].sum() - n1 * (n1 + 1) / 2) / (n0 * n1))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    a, b = a - a.mean(), b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom else float("nan")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return pearson(rankdata(a), rankdata(b))


def bootstrap_ci(fn: Callable[[np.ndarray], float], n: int, *, rounds: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of ``fn(indices)`` over ``n`` resampled items."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(rounds):
        v = fn(rng.integers(0, n, size=n))
        if not np.isnan(v):
            values.append(v)
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [(1 - level) / 2 * 100, (1 + level) / 2 * 100])
    return float(lo), float(hi)


@dataclass
class EvalMetrics:
    n: int
    accuracy: float
    accuracy_ci: tuple[float, float]
    majority_baseline: float
    balanced_accuracy: float
    balanced_accuracy_ci: tuple[float, float]
    roc_auc: float
    roc_auc_ci: tuple[float, float]
    confusion: list[list[int]]
    srcc: float | None = None
    plcc: float | None = None

    def to_json(self) -> dict:
        return dict(self.__dict__)


def compute(y: np.ndarray, p_high: np.ndarray, mean_votes: np.ndarray | None = None, *, threshold: float = 0.5,
            rounds: int = 1000, seed: int = 0) -> EvalMetrics:
    y = np.asarray(y).astype(int)
    p_high = np.asarray(p_high, dtype=np.float64)
    pred = (p_high > threshold).astype(int)
    n = len(y)

    def ci(metric: Callable[[np.ndarray, np.ndarray], float], use_scores: bool = False) -> tuple[float, float]:
        second = p_high if use_scores else pred
        return bootstrap_ci(lambda idx: metric(y[idx], second[idx]), n, rounds=rounds, seed=seed)

    out = EvalMetrics(
        n=n,
        accuracy=accuracy(y, pred), accuracy_ci=ci(accuracy),
        majority_baseline=majority_baseline(y),
        balanced_accuracy=balanced_accuracy(y, pred), balanced_accuracy_ci=ci(balanced_accuracy),
        roc_auc=roc_auc(y, p_high), roc_auc_ci=ci(roc_auc, use_scores=True),
        confusion=confusion(y, pred),
    )
    if mean_votes is not None and len(mean_votes) == n and n > 1:
        out.srcc = spearman(p_high, mean_votes)
        out.plcc = pearson(p_high, mean_votes)
    return out
