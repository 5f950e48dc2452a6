"""``ilgnet eval`` (training/evaluate.py) and its HTML report (training/eval_report.py): accuracy
beside the test set's majority baseline and, only for the authors' own test lists and weights
that never saw them, the paper's figure; weights that trained on the test list (or whose
training data is unknown) refused unless --allow-overlap; the report's numbers against
scikit-learn, escaping, degenerate test sets, and a real render in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from helpers import camera_photos, make_tiny_ava, needs_chromium, one_line, render_in_chromium, tiny_partition
from sklearn import metrics as skm
from trained import make_blur_task

from ilgnet_cli.ava.partition import shipped_list
from ilgnet_cli.ava.records import write_label_list
from ilgnet_cli.model.registry import load_registry
from ilgnet_cli.training import eval_report, metrics
from ilgnet_cli.training.evaluate import EvalResult

ENV = {"OMP_NUM_THREADS": "1"}


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "data"
    monkeypatch.setenv("ILGNET_DATA", str(home))
    return home


@pytest.fixture
def authors_tiny(tiny_cli):
    """``--weights tiny`` trained as the authors' AVA1 weights say they were (their registry
    provenance: the AVA1 training list)."""
    tiny_cli.provenance = load_registry().weights["ilgnet-ava1"].provenance
    return tiny_cli


# --------------------------------------------------------------------------- what is compared with what


def test_the_paper_figure_comes_only_with_the_authors_list_and_weights_that_never_saw_it(data_home, authors_tiny,
                                                                                          tmp_path, cli):
    lists = make_tiny_ava(data_home / "ava")
    result = cli("eval", "--dataset", "ava1", "--weights", "tiny", "--device", "cpu", "--workers", "0", "--json")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    assert data["partition_kind"] == "ilgnet-ava1" and data["listed"] == 20_000 and data["overlap"] == 0
    assert data["metrics"]["n"] == len(lists["test"]) and data["missing_images"] == 20_000 - len(lists["test"])
    assert data["paper_accuracy"] == 0.8168 and data["paper"]["n"] == 2500  # their figure, with its sample size
    assert data["precision"] == "fp32" and data["decode"] == "exact" and "AVA1 training list" in data["trained_on"]
    report = tmp_path / "eval.html"
    table = cli("eval", "--weights", "tiny", "--device", "cpu", "--workers", "0", "-o", report)
    assert table.code == 0, table.output
    page = report.read_text()
    assert "81.68%" in page and "<svg" in page and "<script" not in page.lower()
    assert "paper (Jin et al. 2016)" in table.output and "fp32" in table.output
    assert "always the majority class" in table.output and "balanced accuracy" in table.output


def test_a_list_that_merely_claims_the_authors_kind_gets_no_paper_figure(tmp_path, authors_tiny, cli):
    """A folder named ava1 or a partition that claims the kind: the figure is for the authors'
    lists by content."""
    for name, kind in (("ava1", "ava1"), ("fake", "ilgnet-ava1"), ("none", None)):
        folder = tiny_partition(tmp_path / name, kind, "AVA1")
        renamed = folder.rename(folder.parent / "ava1")  # the folder name must not matter
        result = cli("eval", "--dataset", renamed, "--weights", "tiny", "--images", tmp_path / name / "ava" / "images",
                     "--device", "cpu", "--workers", "0", "--json")
        assert result.code == 0, result.output
        data = json.loads(result.stdout)
        assert data["paper_accuracy"] is None and data["paper_withheld"].startswith("another test list"), name


def _eval_tiny(folder: Path, images: Path) -> list:
    return ["eval", "--dataset", folder, "--weights", "tiny", "--images", images, "--device", "cpu", "--workers", "0"]


def test_weights_of_unknown_training_data_are_refused_unless_allowed(tmp_path, tiny_cli, cli):
    folder = tiny_partition(tmp_path, "ilgnet-ava1", "AVA1")
    args = _eval_tiny(folder, tmp_path / "ava" / "images")
    refused = cli(*args)
    assert refused.code == 2
    one_line(refused.stderr, "unknown", "--allow-overlap")
    data = json.loads(cli(*args, "--allow-overlap", "--json").stdout)
    assert data["overlap"] is None and data["paper_accuracy"] is None and "overlap NOT checked" in data["headline"]


def test_weights_that_trained_on_the_test_list_are_refused_unless_allowed(tmp_path, authors_tiny, cli):
    """A test list made of the authors' AVA1 training images: the weights saw every one."""
    make_tiny_ava(tmp_path / "ava")
    folder = tmp_path / "part"
    folder.mkdir()
    train = shipped_list("AVA1", "train")[:16]
    write_label_list(folder / "train.txt", train[8:])
    write_label_list(folder / "test.txt", train[:8])
    args = _eval_tiny(folder, tmp_path / "ava" / "images")
    refused = cli(*args)
    assert refused.code == 2
    one_line(refused.stderr, "8 of the 8 test images", "--allow-overlap")
    data = json.loads(cli(*args, "--allow-overlap", "--json").stdout)
    assert data["overlap"] == 8 and "OVERLAP: 8 test images" in data["headline"]


@pytest.fixture(scope="module")
def blur_task(tmp_path_factory):
    return make_blur_task(camera_photos(16), tmp_path_factory.mktemp("blur"), crops_per_photo=4, test_photos=4)


def test_eval_reports_metrics_baseline_and_missing(blur_task, tiny_cli, tmp_path, cli):
    (blur_task / "images" / "1.jpg").rename(tmp_path / "hidden.jpg")  # one missing test image at most
    try:
        result = cli("eval", "--dataset", blur_task, "--weights", "tiny", "--images", blur_task / "images", "--device",
                     "cpu", "--workers", "0", "--tta", "mirror", "--allow-overlap", "--json")
    finally:
        (tmp_path / "hidden.jpg").rename(blur_task / "images" / "1.jpg")
    assert result.code == 0, result.output
    data = json.loads(result.stdout)
    m = data["metrics"]
    assert data["listed"] == 32 and data["missing_images"] in (0, 1) and m["n"] == 32 - data["missing_images"]
    assert data["tta"] == "mirror" and m["majority_baseline"] == pytest.approx(0.5, abs=0.04)
    assert 0 <= m["roc_auc"] <= 1 and sum(map(sum, m["confusion"])) == m["n"]


@pytest.mark.slow  # subprocesses and torchrun, real-size weights
def test_torchrun_eval_matches_single_process(blur_task, weights_file, cli):
    args = ["eval", "--dataset", blur_task, "--weights", weights_file, "--images", blur_task / "images", "--device",
            "cpu", "--workers", "0", "--allow-overlap", "--json"]
    single = cli(*args, env=ENV, subprocess=True)
    assert single.code == 0, single.stderr
    ddp = cli(*args, env=ENV, torchrun=2)
    assert ddp.code == 0, ddp.stderr[-2000:]
    a, b = json.loads(single.stdout)["metrics"], json.loads(ddp.stdout)["metrics"]
    assert a["n"] == b["n"] == 32 and a["confusion"] == b["confusion"]
    assert a["roc_auc"] == pytest.approx(b["roc_auc"], abs=1e-9)


# --------------------------------------------------------------------------- the HTML report


EVIL = "<img src=x onerror=alert(1)>"


def synthetic(n: int = 300, seed: int = 42) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(int)
    p = np.clip(0.35 * y + rng.random(n) * 0.65, 0, 1)
    p[:20] = 0.5  # ties, including at the threshold
    return y, p, 3 + 4 * p + rng.normal(0, 0.5, n)


def fake_result(y, p, votes=None, *, weights="ilgnet-ava1", dataset="ava1", paper=True, notes=None) -> EvalResult:
    with warnings.catch_warnings():  # an empty test set makes numpy warn about empty means; that is the point
        warnings.simplefilter("ignore", RuntimeWarning)
        m = metrics.compute(y, p, votes, rounds=50)
    return EvalResult(dataset=dataset, weights=weights, tta="mirror", metrics=m, missing=2, listed=len(y) + 2,
                      paper=metrics.PAPER["ilgnet-ava1"] if paper else None,
                      paper_withheld=None if paper else "another test list: the paper reports accuracy only on the "
                      "authors' AVA1/AVA2 test lists", notes=notes or ["2 of 302 test images are missing"])


def svgs(page: str) -> list[ET.Element]:
    """Every inline SVG parsed as XML: a malformed plot fails here."""
    return [ET.fromstring(s) for s in re.findall(r"<svg .*?</svg>", page, flags=re.S)]


def plotted_numbers(page: str) -> list[float]:
    out = []
    for root in svgs(page):
        for el in root.iter():
            for k, v in el.attrib.items():
                if k in ("x", "y", "x1", "y1", "x2", "y2", "width", "height", "cx", "cy", "r"):
                    out.append(float(v))
                elif k == "points":
                    out += [float(c) for c in re.split(r"[ ,]", v)]
    return out


@pytest.mark.parametrize("drop", [False, True])
def test_roc_curve_matches_sklearn(drop):
    y, p, _ = synthetic()
    fpr, tpr = eval_report.roc_curve(y, p, drop_intermediate=drop)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, p, drop_intermediate=drop)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(metrics.roc_auc(y, p))


def test_roc_curve_with_one_class_is_undefined_like_sklearn():
    y, p = np.ones(5, dtype=int), np.linspace(0.1, 0.9, 5)
    fpr, tpr = eval_report.roc_curve(y, p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk_fpr, sk_tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    assert np.isnan(fpr).all()


def test_calibration_bins_and_ece_by_hand():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.05, 0.15, 0.95, 1.0])  # 1.0 belongs to the last bin, not an eleventh
    mean_p, frac, count = eval_report.calibration_bins(y, p)
    assert count.tolist() == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert mean_p[[0, 1, 9]] == pytest.approx([0.05, 0.15, 0.975]) and frac[[0, 1, 9]].tolist() == [0, 1, 0.5]
    # (1·|0 − 0.05| + 1·|1 − 0.15| + 2·|0.5 − 0.975|) / 4
    assert eval_report.expected_calibration_error(y, p) == pytest.approx(1.85 / 4)
    assert eval_report.expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0
    assert np.isnan(eval_report.expected_calibration_error(np.array([]), np.array([])))


def test_nice_ticks():
    assert eval_report.nice_ticks(0) == [0.0, 1.0] and eval_report.nice_ticks(float("nan")) == [0.0, 1.0]
    assert eval_report.nice_ticks(17) == [0, 5, 10, 15, 20]
    assert eval_report.nice_ticks(200) == [0, 50, 100, 150, 200]
    assert eval_report.nice_ticks(1) == pytest.approx([0, 0.2, 0.4, 0.6, 0.8, 1.0])


def test_page_holds_the_table_values_csp_and_no_script():
    y, p, votes = synthetic()
    r = fake_result(y, p, votes)
    r.precision, r.decode = "bf16", "draft"
    page = eval_report.to_html(r, y, p)
    m = r.metrics
    assert "Content-Security-Policy" in page and "default-src 'none'" in page and "<script" not in page.lower()
    lo, hi = m.accuracy_ci
    for value in ("81.68%", f"{m.majority_baseline:.2%}", f"{m.accuracy:.2%}", f"95% CI {lo:.2%}–{hi:.2%}",
                  f"{m.balanced_accuracy:.2%}", f"{m.roc_auc:.3f}", f"{m.srcc:.3f}", f"{m.plcc:.3f}",
                  f"{eval_report.expected_calibration_error(y, p):.3f}", "bf16", "draft", "2 of 302 test images",
                  f"AUC {m.roc_auc:.3f}", "300 of 302 listed"):
        assert value in page, value
    tn, fp, fn, tp = (m.confusion[0][0], m.confusion[0][1], m.confusion[1][0], m.confusion[1][1])
    assert f"confusion matrix TN {tn} FP {fp} FN {fn} TP {tp}" in page
    assert f"{100 * tn / (tn + fp):.1f}% of row" in page
    assert len(svgs(page)) == 4 and "http://" not in page.replace("http://www.w3.org/2000/svg", "")


def test_page_without_paper_number_says_so_and_without_precision_says_not_recorded():
    y, p, _ = synthetic()
    r = fake_result(y, p, paper=False)
    # An EvalResult from before the precision/decode fields existed: same attributes, minus those two.
    old = SimpleNamespace(**{k: v for k, v in vars(r).items() if k not in ("precision", "decode")},
                          headline=r.headline, paper_difference=r.paper_difference)
    page = eval_report.to_html(old, y, p)
    assert "not comparable: another test list" in page and "81.68%" not in page
    assert "precision not recorded" in page and "decode not recorded" in page and "SRCC" not in page


def test_an_undefined_number_never_reaches_an_svg_coordinate():
    assert [eval_report._f(v) for v in (float("nan"), float("inf"), -float("inf"), 1.25)] == ["0", "0", "0", "1.2"]


def test_hostile_names_are_escaped():
    y, p, _ = synthetic(50)
    r = fake_result(y, p, weights=EVIL, dataset=f"</title>{EVIL}", notes=[f"note {EVIL}"])
    r.precision = EVIL
    page = eval_report.to_html(r, y, p, title=f"t {EVIL}")
    assert EVIL not in page and "</title><img" not in page
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 5


def test_roc_points_drawn_are_sklearns():
    y, p, _ = synthetic()
    page = eval_report.to_html(fake_result(y, p), y, p)
    roc = next(s for s in svgs(page) if s.get("aria-label", "").startswith("ROC"))
    pts = np.array([[float(c) for c in xy.split(",")] for xy in roc.find("{*}polyline").get("points").split()])
    fr = eval_report.Frame()
    span_x, span_y = fr.x(1) - fr.x(0), fr.y(0) - fr.y(1)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, p)
    assert len(pts) == len(sk_fpr)
    np.testing.assert_allclose((pts[:, 0] - fr.x(0)) / span_x, sk_fpr, atol=0.06 / span_x)
    np.testing.assert_allclose((fr.y(0) - pts[:, 1]) / span_y, sk_tpr, atol=0.06 / span_y)


@pytest.mark.parametrize("case", ["no images", "one class", "all scores equal", "unscored image", "single image"])
def test_degenerate_test_sets_give_valid_pages(case):
    y, p, _ = synthetic(40)
    y, p = {"no images": (y[:0], p[:0]), "one class": (np.ones(40, dtype=int), p),
            "all scores equal": (y, np.full(40, 0.5)), "unscored image": (y, np.r_[np.nan, p[1:]]),
            "single image": (y[:1], p[:1])}[case]
    r = fake_result(y, np.nan_to_num(p, nan=0.5))
    page = eval_report.to_html(r, y, p)
    assert len(svgs(page)) == 4 and "<script" not in page
    assert not re.search(r"\b(nan|inf)\b", page, flags=re.I), case
    assert all(np.isfinite(plotted_numbers(page)))
    if case in ("no images", "one class"):
        assert "undefined: the test set needs both classes" in page
        assert "no images</text>" in page and "—%" not in page  # the empty confusion row says so


def test_labels_and_scores_of_different_length_is_a_one_line_error():
    y, p, _ = synthetic(10)
    with pytest.raises(ValueError, match=r"^labels and scores differ in length \(10 vs 9\)$"):
        eval_report.to_html(fake_result(y, p), y, p[:9])


@needs_chromium
def test_eval_report_renders_in_headless_chromium(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.7).astype(int)
    p = rng.beta(2 + 3 * y, 6 - 3 * y)
    r = fake_result(y, p, 3 + 4 * p + rng.normal(0, 0.5, 2000), weights=EVIL,
                    notes=["2 of 2002 test images are missing and were not scored; accuracy is over the rest"])
    r.precision, r.decode = "bf16", "exact"
    report = tmp_path / "eval.html"
    report.write_text(eval_report.to_html(r, y, p), encoding="utf-8")
    shot, dom = render_in_chromium(report, tmp_path, 1000, 1700)
    assert "&lt;img src=x onerror=alert(1)&gt;" in dom and "<script" not in dom and dom.count("<svg") == 4
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    # Text and tables are grey on white; only the plots are strongly red or blue. A page whose SVGs did not draw
    # has next to none of either.
    red = np.mean(img[..., 0] - img[..., 2] > 60)
    blue = np.mean(img[..., 2] - img[..., 0] > 60)
    assert red > 0.005 and blue > 0.01, (red, blue)
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200
    if os.environ.get("ILGNET_KEEP_SCREENSHOT"):
        shutil.copy2(shot, os.environ["ILGNET_KEEP_SCREENSHOT"])


def test_undecodable_name_bytes_do_not_break_the_page():
    y, p, _ = synthetic(20)
    page = eval_report.to_html(fake_result(y, p, dataset="caf\udce9", notes=["n\udcff"]), y, p)
    assert page.encode("utf-8") and "caf\ufffd" in page
