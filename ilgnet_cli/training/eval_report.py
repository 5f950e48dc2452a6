"""`ilgnet eval -o eval.html`: one self-contained page with the comparison table, ROC curve, per-class score
histograms, reliability diagram and confusion matrix.

Every plot is inline SVG drawn by the small pure functions below (no plotting library, no scripts, no remote
assets; a Content-Security-Policy forbids both). Dataset, weights and notes come from outside and are escaped.
Degenerate test sets (no images, one class, equal scores) still give a valid page: a number that is undefined
is shown as a dash and never reaches an SVG coordinate.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ilgnet_cli.runtime.text import printable
from ilgnet_cli.training import metrics

if TYPE_CHECKING:
    from ilgnet_cli.training.evaluate import EvalResult

LOW, HIGH, INK, GRID = "#4c78a8", "#e45756", "#222", "#e4e6ea"
W, H = 460, 340  # one plot's viewBox; two fit side by side in the 1000 px page
ML, MR, MT, MB = 58, 16, 44, 50  # the top margin leaves room for counts above full bars


# ---- numbers -------------------------------------------------------------------------------------------------

def roc_curve(labels: np.ndarray, scores: np.ndarray, *, drop_intermediate: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    """(fpr, tpr) at every distinct score threshold, from (0, 0) up, like ``sklearn.metrics.roc_curve``.

    A rate whose class is absent is NaN (as in scikit-learn), so callers can tell "undefined" from 0."""
    y = np.asarray(labels).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    order = np.argsort(-s, kind="mergesort")
    y, s = y[order], s[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1] if len(s) else np.array([], dtype=int)
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1) - tps
    if drop_intermediate and len(tps) > 2:
        # Collinear points add nothing to the curve; scikit-learn drops them the same way.
        keep = np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True]
        tps, fps = tps[keep], fps[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    p, n = tps[-1], fps[-1]
    return (fps / n if n else np.full(len(fps), np.nan)), (tps / p if p else np.full(len(tps), np.nan))


def calibration_bins(labels: np.ndarray, scores: np.ndarray, bins: int = 10
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean predicted, observed fraction of "high", count) per equal-width bin of [0, 1]; empty bins are NaN."""
    s = np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    idx = np.minimum((s * bins).astype(int), bins - 1)  # a score of exactly 1.0 belongs to the last bin
    count = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=s, minlength=bins) / count
        frac = np.bincount(idx, weights=np.asarray(labels, dtype=np.float64), minlength=bins) / count
    return mean_p, frac, count


def expected_calibration_error(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """Count-weighted mean |observed − predicted| over the bins; NaN for an empty test set."""
    mean_p, frac, count = calibration_bins(labels, scores, bins)
    full = count > 0
    if not full.any():
        return float("nan")
    return float(np.sum(count[full] * np.abs(frac[full] - mean_p[full])) / count.sum())


def nice_ticks(vmax: float, target: int = 5) -> list[float]:
    """Round tick values 0…≥vmax (steps 1, 2 or 5 × 10^k); [0, 1] when there is nothing to show."""
    if not math.isfinite(vmax) or vmax <= 0:
        return [0.0, 1.0]
    raw = vmax / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [i * step for i in range(math.ceil(vmax / step - 1e-9) + 1)]


# ---- SVG primitives ------------------------------------------------------------------------------------------

def _f(v: float) -> str:
    # Last line of defence: an undefined value must never become "nan" in an SVG attribute.
    return f"{v:.1f}" if math.isfinite(v) else "0"


def esc(text: object) -> str:
    return html.escape(str(text), quote=True)


@dataclass(frozen=True)
class Frame:
    xmax: float = 1.0
    ymax: float = 1.0

    def x(self, v: float) -> float:
        return ML + (W - ML - MR) * v / self.xmax

    def y(self, v: float) -> float:
        return H - MB - (H - MT - MB) * v / self.ymax


def _text(x: float, y: float, s: str, *, size: int = 12, anchor: str = "middle", extra: str = "") -> str:
    return f'<text x="{_f(x)}" y="{_f(y)}" font-size="{size}" text-anchor="{anchor}" {extra}>{esc(s)}</text>'


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str, extra: str = "") -> str:
    return f'<line x1="{_f(x1)}" y1="{_f(y1)}" x2="{_f(x2)}" y2="{_f(y2)}" stroke="{stroke}" {extra}/>'


def _axes(fr: Frame, title: str, xlabel: str, ylabel: str, xticks: list[float], yticks: list[float]) -> str:
    out = [_text(ML, 20, title, size=14, anchor="start", extra='font-weight="600"')]
    for t in xticks:
        out += [_line(fr.x(t), fr.y(0), fr.x(t), fr.y(fr.ymax), GRID),
                _line(fr.x(t), fr.y(0), fr.x(t), fr.y(0) + 5, INK), _text(fr.x(t), fr.y(0) + 18, f"{t:g}")]
    for t in yticks:
        out += [_line(fr.x(0), fr.y(t), fr.x(fr.xmax), fr.y(t), GRID),
                _line(fr.x(0) - 5, fr.y(t), fr.x(0), fr.y(t), INK),
                _text(fr.x(0) - 8, fr.y(t) + 4, f"{t:g}", anchor="end")]
    out += [_line(fr.x(0), fr.y(0), fr.x(fr.xmax), fr.y(0), INK), _line(fr.x(0), fr.y(0), fr.x(0), fr.y(fr.ymax), INK),
            _text((fr.x(0) + fr.x(fr.xmax)) / 2, H - 10, xlabel, size=13),
            _text(16, (fr.y(0) + fr.y(fr.ymax)) / 2, ylabel, size=13,
                  extra=f'transform="rotate(-90 16 {_f((fr.y(0) + fr.y(fr.ymax)) / 2)})"')]
    return "".join(out)


def _legend(items: list[tuple[str, str]], x: float, y: float) -> str:
    return "".join(f'<rect x="{_f(x)}" y="{_f(y + 18 * i - 9)}" width="14" height="10" fill="{c}"/>'
                   + _text(x + 20, y + 18 * i, s, anchor="start") for i, (c, s) in enumerate(items))


def _svg(body: str, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" role="img" aria-label="{esc(label)}" '
            f'font-family="system-ui,sans-serif" fill="{INK}">{body}</svg>')


def _polyline(points: list[tuple[float, float]], stroke: str, extra: str = "") -> str:
    coords: list[str] = []
    for px, py in points:  # neighbours that round to the same pixel are one point: a 20k-image ROC stays small
        c = f"{_f(px)},{_f(py)}"
        if not coords or coords[-1] != c:
            coords.append(c)
    return f'<polyline points="{" ".join(coords)}" fill="none" stroke="{stroke}" stroke-width="2" {extra}/>'


# ---- the plots -----------------------------------------------------------------------------------------------

def _fmt(v: float | None, spec: str) -> str:
    return format(v, spec) if v is not None and math.isfinite(v) else "—"


def roc_svg(labels: np.ndarray, scores: np.ndarray) -> str:
    fr, ticks = Frame(), [0, 0.2, 0.4, 0.6, 0.8, 1]
    body = _axes(fr, "ROC curve", "false positive rate (low called high)", "true positive rate", ticks, ticks)
    body += _line(fr.x(0), fr.y(0), fr.x(1), fr.y(1), "#999", 'stroke-dasharray="5 4"')
    fpr, tpr = roc_curve(labels, scores, drop_intermediate=True)
    auc = metrics.roc_auc(np.asarray(labels), np.asarray(scores)) if len(labels) else float("nan")
    if len(fpr) > 1 and np.isfinite(fpr).all() and np.isfinite(tpr).all():
        body += _polyline([(fr.x(a), fr.y(b)) for a, b in zip(fpr, tpr, strict=True)], HIGH)
    else:
        body += _text(fr.x(0.5), fr.y(0.55), "undefined: the test set needs both classes", size=13)
    body += _legend([(HIGH, f"model (AUC {_fmt(auc, '.3f')})"), ("#999", "chance (AUC 0.5)")], fr.x(0.45), fr.y(0.16))
    return _svg(body, f"ROC curve, AUC {_fmt(auc, '.3f')}")


def histogram_svg(labels: np.ndarray, scores: np.ndarray, bins: int = 20) -> str:
    s = np.clip(scores, 0.0, 1.0)
    counts = [np.histogram(s[labels == c], bins=bins, range=(0.0, 1.0))[0] for c in (0, 1)]
    yt = nice_ticks(1.2 * float(max(c.max() for c in counts)) if len(s) else 0.0)  # headroom for the legend
    fr = Frame(ymax=yt[-1])
    body = _axes(fr, "P(high) by true class", "predicted P(high)", "images", [0, 0.2, 0.4, 0.6, 0.8, 1], yt)
    bw = fr.x(1 / bins) - fr.x(0)
    for colour, cnt in zip((LOW, HIGH), counts, strict=True):
        body += "".join(f'<rect x="{_f(fr.x(i / bins) + 0.5)}" y="{_f(fr.y(v))}" width="{_f(bw - 1)}" '
                        f'height="{_f(fr.y(0) - fr.y(v))}" fill="{colour}" fill-opacity="0.6"/>'
                        for i, v in enumerate(cnt) if v > 0)
    body += _line(fr.x(0.5), fr.y(0), fr.x(0.5), fr.y(fr.ymax), INK, 'stroke-dasharray="3 3"')
    body += _legend([(LOW, f"true low (n={int(np.sum(labels == 0))})"),
                     (HIGH, f"true high (n={int(np.sum(labels == 1))})")], fr.x(0.03), fr.y(fr.ymax) + 14)
    return _svg(body, "histograms of P(high) for true-low and true-high images")


def reliability_svg(labels: np.ndarray, scores: np.ndarray, bins: int = 10) -> str:
    fr, ticks = Frame(), [0, 0.2, 0.4, 0.6, 0.8, 1]
    mean_p, frac, count = calibration_bins(labels, scores, bins)
    ece = expected_calibration_error(labels, scores, bins)
    body = _axes(fr, "Reliability diagram", "mean predicted P(high) · numbers: images per bin",
                 "observed fraction high", ticks, ticks)
    bw = fr.x(1 / bins) - fr.x(0)
    for i in np.flatnonzero(count):
        body += (f'<rect x="{_f(fr.x(i / bins) + 1)}" y="{_f(fr.y(frac[i]))}" width="{_f(bw - 2)}" '
                 f'height="{_f(fr.y(0) - fr.y(frac[i]))}" fill="{LOW}" fill-opacity="0.35"/>'
                 + _text(fr.x((i + 0.5) / bins), fr.y(frac[i]) - 4, str(count[i]), size=10))
    body += _line(fr.x(0), fr.y(0), fr.x(1), fr.y(1), "#999", 'stroke-dasharray="5 4"')
    full = np.flatnonzero(count)
    if len(full):
        body += _polyline([(fr.x(mean_p[i]), fr.y(frac[i])) for i in full], HIGH)
        body += "".join(f'<circle cx="{_f(fr.x(mean_p[i]))}" cy="{_f(fr.y(frac[i]))}" r="3.5" fill="{HIGH}"/>'
                        for i in full)
    body += _legend([(HIGH, f"observed (ECE {_fmt(ece, '.3f')})"), ("#999", "perfect calibration")],
                    fr.x(0.03), fr.y(1) + 14)
    return _svg(body, f"reliability diagram, ECE {_fmt(ece, '.3f')}")


def confusion_svg(labels: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> str:
    cm = metrics.confusion(labels, (scores > threshold).astype(int))
    cell, x0, y0 = 120, 170, 52
    body = _text(ML, 20, f"Confusion matrix (P(high) > {threshold:g} is high)", size=14, anchor="start",
                 extra='font-weight="600"')
    for r, name in enumerate(("low", "high")):
        body += _text(x0 - 10, y0 + cell * r + cell / 2 + 4, f"true {name}", size=13, anchor="end")
        body += _text(x0 + cell * r + cell / 2, y0 + 2 * cell + 22, f"predicted {name}", size=13)
        total = sum(cm[r])
        for c in range(2):
            share = cm[r][c] / total if total else 0.0
            shade = f"rgb({int(255 - 200 * share)},{int(255 - 160 * share)},{int(255 - 95 * share)})"
            ink = "#fff" if share > 0.55 else INK
            x, y = x0 + cell * c, y0 + cell * r
            body += (f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{shade}" stroke="#fff" '
                     f'stroke-width="2"/>' + _text(x + cell / 2, y + cell / 2, str(cm[r][c]), size=22,
                                                  extra=f'fill="{ink}" font-weight="600"')
                     + _text(x + cell / 2, y + cell / 2 + 22, f"{share:.1%} of row" if total else "no images",
                             extra=f'fill="{ink}"'))
    return _svg(body, f"confusion matrix TN {cm[0][0]} FP {cm[0][1]} FN {cm[1][0]} TP {cm[1][1]}")


# ---- the page ------------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#222;
font-size:15px;line-height:1.45}main{max-width:1000px;margin:0 auto;padding:24px}
h1{font-size:1.5rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:1.6rem 0 .5rem}p.meta{color:#555;margin:0 0 1rem}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0002;border-radius:6px}
td,th{padding:7px 12px;border-bottom:1px solid #e4e6ea;text-align:left;vertical-align:top}
th{background:#eef0f3;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.ours td{font-weight:600;background:#fff7e6}.plots{display:grid;grid-template-columns:1fr 1fr;gap:16px}
figure{margin:0;background:#fff;border-radius:6px;box-shadow:0 1px 2px #0002;padding:8px}
svg{display:block;width:100%;height:auto}ul{margin:.3rem 0 0;padding-left:1.2rem}
"""
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _ci(ci: tuple[float, float], spec: str) -> str:
    lo, hi = ci
    return f"95% CI {_fmt(lo, spec)}–{_fmt(hi, spec)}" if math.isfinite(lo) and math.isfinite(hi) else "CI undefined"


def comparison_table(result: EvalResult, ece: float) -> str:
    m = result.metrics
    from ilgnet_cli.training.evaluate import comparison_rows

    rows: list[tuple[str, str, str, str]] = [  # (what, value, note, css class): ours first, as in the terminal
        (w, v, n, "ours" if i == 0 else "") for i, (w, v, n) in enumerate(comparison_rows(result))]
    rows += [("balanced accuracy", _fmt(m.balanced_accuracy, ".2%"), _ci(m.balanced_accuracy_ci, ".2%"), ""),
             ("ROC AUC", _fmt(m.roc_auc, ".3f"), _ci(m.roc_auc_ci, ".3f"), "")]
    if m.srcc is not None:
        rows.append(("SRCC with mean votes", _fmt(m.srcc, ".3f"), "Spearman rank correlation", ""))
    if m.plcc is not None:
        rows.append(("PLCC with mean votes", _fmt(m.plcc, ".3f"), "Pearson linear correlation", ""))
    rows.append(("expected calibration error", _fmt(ece, ".3f"), "10 equal-width bins; 0 is perfectly calibrated", ""))
    body = "".join(f'<tr class="{c}"><td>{esc(w)}</td><td class="num">{esc(v)}</td><td>{esc(n)}</td></tr>'
                   for w, v, n, c in rows)
    return f"<table><tr><th>what</th><th>value</th><th>note</th></tr>{body}</table>"


def run_table(result: EvalResult, n_scored: int) -> str:
    notes = "".join(f"<li>{esc(n)}</li>" for n in result.notes) or "<li>none</li>"
    rows = [("dataset", result.dataset), ("weights", result.weights),
            ("trained on", getattr(result, "trained_on", None) or "unknown"), ("test-time augmentation", result.tta),
            ("precision", getattr(result, "precision", None) or "not recorded"),
            ("decode", getattr(result, "decode", None) or "not recorded"),
            ("images scored", f"{n_scored} of {result.listed} listed"), ("missing images", result.missing)]
    body = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}<tr><th>notes</th><td><ul>{notes}</ul></td></tr></table>"


def to_html(result: EvalResult, labels: np.ndarray, scores: np.ndarray, *, title: str | None = None) -> str:
    """The evaluation report as one HTML page (inline SVG plots, no scripts, no remote loads)."""
    y, s = np.asarray(labels).astype(int).ravel(), np.asarray(scores, dtype=np.float64).ravel()
    if len(y) != len(s):
        raise ValueError(f"labels and scores differ in length ({len(y)} vs {len(s)})")
    ok = np.isfinite(s)  # an unscored image has no place on any plot
    y, s = y[ok], s[ok]
    ece = expected_calibration_error(y, s)
    title = title or f"ILGNet evaluation: {result.dataset}"
    figures = "".join(f"<figure>{svg}</figure>" for svg in (
        roc_svg(y, s), histogram_svg(y, s), reliability_svg(y, s), confusion_svg(y, s)))
    meta = (f"{len(s)} images · weights {esc(result.weights)} · tta {esc(result.tta)} · "
            f"{esc(getattr(result, 'precision', None) or 'precision not recorded')} · "
            f"{esc(getattr(result, 'decode', None) or 'decode not recorded')}")
    return printable(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{CSS}</style></head>
<body><main><h1>{esc(title)}</h1><p class="meta">{meta}</p>
<h2>Accuracy against the paper and the baseline</h2>{comparison_table(result, ece)}
<h2>Plots</h2><div class="plots">{figures}</div>
<h2>Run</h2>{run_table(result, len(s))}</main></body></html>
""")
