"""Classification and correlation metrics that cannot mislead: every accuracy comes with the
majority-class baseline of the same test set, balanced accuracy, ROC AUC and bootstrap CIs.

Pure numpy (no scikit-learn at run time); tests check each against scikit-learn / scipy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# The paper's reported accuracies (Jin et al. 2016, Table 2), measured on the authors' own test
# lists: comparable only to a partition of those exact lists.
PAPER_ACCURACY = {"ilgnet-ava1": 0.8168, "ilgnet-ava2": 0.8550}


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
