"""Every metric against scikit-learn / scipy on a fixture with known predictions."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import shared_path
from scipy import stats
from sklearn import metrics as skm

from ilgnet_cli.ava.records import read_label_list
from ilgnet_cli.training import metrics


@pytest.fixture
def fixture_preds():
    rng = np.random.default_rng(42)
    y = (rng.random(300) < 0.7).astype(int)
    p = np.clip(0.35 * y + rng.random(300) * 0.65, 0, 1)
    p[:20] = 0.5  # ties, including at the threshold
    votes = 3 + 4 * p + rng.normal(0, 0.5, 300)
    return y, p, votes


def test_metrics_match_sklearn_and_scipy(fixture_preds):
    y, p, votes = fixture_preds
    pred = (p > 0.5).astype(int)
    m = metrics.compute(y, p, votes, rounds=200)
    assert m.accuracy == pytest.approx(skm.accuracy_score(y, pred))
    assert m.balanced_accuracy == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert m.roc_auc == pytest.approx(skm.roc_auc_score(y, p))
    assert m.confusion == skm.confusion_matrix(y, pred).tolist()
    assert m.majority_baseline == pytest.approx(max(y.mean(), 1 - y.mean()))
    assert m.srcc == pytest.approx(stats.spearmanr(p, votes).statistic)
    assert m.plcc == pytest.approx(stats.pearsonr(p, votes).statistic)
    for value, (lo, hi) in ((m.accuracy, m.accuracy_ci), (m.roc_auc, m.roc_auc_ci),
                            (m.balanced_accuracy, m.balanced_accuracy_ci)):
        assert lo <= value <= hi and hi - lo < 0.2


def test_rankdata_matches_scipy():
    x = np.array([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5])
    np.testing.assert_allclose(metrics.rankdata(x), stats.rankdata(x))


def test_bootstrap_ci_matches_scipy_percentile():
    y = np.random.default_rng(1).integers(0, 2, 500)
    ours = metrics.bootstrap_ci(lambda idx: float(y[idx].mean()), len(y), rounds=2000, seed=3)
    theirs = stats.bootstrap((y,), np.mean, n_resamples=2000, method="percentile",
                             random_state=np.random.default_rng(3)).confidence_interval
    assert ours[0] == pytest.approx(theirs.low, abs=0.01) and ours[1] == pytest.approx(theirs.high, abs=0.01)


def test_majority_baseline_of_authors_ava1_test_list_is_80_percent():
    labels = np.array([label for _, label in read_label_list(shared_path("ilgnet", "data", "AVA1", "val.txt"))])
    assert len(labels) == 20_000
    assert metrics.majority_baseline(labels) == pytest.approx(0.8)
    always_high = metrics.compute(labels, np.ones(len(labels)), rounds=10)
    assert always_high.accuracy == pytest.approx(0.8) and always_high.balanced_accuracy == pytest.approx(0.5)
    assert always_high.roc_auc == pytest.approx(0.5)
