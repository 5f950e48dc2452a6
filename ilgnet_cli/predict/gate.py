"""The fidelity gate: one rule for every speed shortcut a run takes by default.

Two shortcuts exist: running the model in **bf16** (against fp32) and decoding JPEGs **fast**
(DCT-scaled, against the full-decode reference; :mod:`ilgnet_cli.model.transform`). A shortcut
is served only while checks show it faithful for these weights:

* The bound is on the model's log-odds (``logit[high] - logit[low]``), not on P(high): since
  ``dP <= dlogodds / 4`` for every P, a log-odds error of :data:`BOUND` (0.02) keeps every
  score within 0.005 whatever the photo's confidence. A batch of confident photos (P near 0 or
  1) hides a large error in P, never in the log-odds.
* Each shortcut is accepted only while every checked crop stays within :data:`ACCEPT` (0.008,
  40% of the bound): both together then stay under the bound, with room for the crops that are
  not checked.
* Checks run on sampled batches through the whole run, at most :data:`BUDGET` (5%) of its time:
  the first batch always, then whenever the time spent checking is under 5% of the time elapsed.
* A failed check ends the shortcut for the rest of the run; the predictor re-scores every item
  it already served with it (``Prediction.corrected``), so no score beyond the bound remains.
* Verdicts are stored in ``precision.json`` under a key of everything that can change them: the
  weights' sha256, the device model, torch and its numeric libraries (oneDNN, CUDA, cuDNN),
  ``torch.compile`` on or off, the decode library, and the rule itself. A stored refusal
  turns the shortcut off at once (no checking cost); a stored acceptance still gets checked.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path

from ilgnet_cli.runtime.fsutil import OutputRefused, UnreadableFile, atomic_write_text, read_json_object

BOUND = 0.02  # log-odds: |dP| <= BOUND / 4 = 0.005 for every P
ACCEPT = 0.008  # per shortcut and checked crop
BUDGET = 0.05  # share of a run's time spent checking
MIN_STORED = 8  # checked crops needed before an acceptance is remembered
RULE = f"log-odds accept={ACCEPT} bound={BOUND}"
MAX_STORE_BYTES = 1 << 20
MAX_VERDICTS = 2000


class Shortcut(str, Enum):
    BF16 = "bf16"
    DECODE = "decode"


@dataclass(frozen=True)
class Verdict:
    shortcut: Shortcut
    ok: bool
    max_error: float  # largest |d log-odds| seen on a checked crop
    checked: int  # crops checked
    rule: str = RULE
    decided_at: str = ""

    def describe(self) -> str:
        what = {Shortcut.BF16: "bf16", Shortcut.DECODE: "fast JPEG decoding"}[self.shortcut]
        how = f"max |d log-odds| {self.max_error:.4f} on {self.checked} checked crops, accepted up to {ACCEPT}"
        if self.ok:
            return f"{what} checked against the faithful path: {how}"
        fallback = "fp32" if self.shortcut is Shortcut.BF16 else "full decoding"
        return f"{what} moved these weights' scores too much ({how}); using {fallback}"


def verdict_key(shortcut: Shortcut, *, weights_sha256: str, device: str, versions: str, compile: bool = False,
                decoder: str = "") -> str:
    parts = [shortcut.value, weights_sha256, RULE]
    if shortcut is Shortcut.BF16:
        parts += [device, versions, f"compile={'on' if compile else 'off'}"]
    else:
        parts += [decoder]
    return "|".join(parts)


def _verdict(entry: object) -> Verdict | None:
    """A stored verdict, checked field by field (the store is a file anyone may have edited)."""
    if not isinstance(entry, dict):
        return None
    try:
        shortcut = Shortcut(entry.get("shortcut"))
    except ValueError:
        return None
    ok, err, n, rule = entry.get("ok"), entry.get("max_error"), entry.get("checked"), entry.get("rule")
    if not isinstance(ok, bool) or not isinstance(n, int) or isinstance(n, bool) or rule != RULE:
        return None
    if not isinstance(err, (int, float)) or isinstance(err, bool) or not math.isfinite(err) or err < 0:
        return None
    when = entry.get("decided_at", "")
    return Verdict(shortcut, ok, float(err), n, rule, when if isinstance(when, str) else "")


class VerdictStore:
    """``precision.json``: verdicts by key. Unreadable, oversized or malformed = empty (the
    checks simply run again); a FIFO or device at the name is never opened for reading."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict[str, object]:
        try:
            data = read_json_object(self.path, MAX_STORE_BYTES)
        except (OSError, UnreadableFile):
            return {}
        return {k: v for k, v in data.items() if isinstance(k, str)}

    def get(self, key: str) -> Verdict | None:
        return _verdict(self._read().get(key))

    def put(self, key: str, verdict: Verdict) -> None:
        data = self._read()
        data.pop(key, None)
        data[key] = {**asdict(verdict), "shortcut": verdict.shortcut.value}
        while len(data) > MAX_VERDICTS:  # oldest first: dicts keep insertion order
            data.pop(next(iter(data)))
        try:
            atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")
        except (OSError, OutputRefused):  # a full disk; a link, FIFO or folder planted at the name
            pass  # only a memo of checks: they simply run again next time


@dataclass
class _Tally:
    max_error: float = 0.0
    checked: int = 0
    failed: bool = False


@dataclass
class Gate:
    """One run's checks. ``keys`` maps each shortcut to its verdict key; ``store`` remembers."""

    keys: dict[Shortcut, str]
    store: VerdictStore | None = None
    started: float = field(default_factory=time.monotonic)
    check_seconds: float = 0.0
    tallies: dict[Shortcut, _Tally] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)  # decided in this run (for notes)

    def refused(self, shortcut: Shortcut) -> Verdict | None:
        """A stored refusal of ``shortcut`` (the run then never takes it), else None."""
        if self.store is None or shortcut not in self.keys:
            return None
        known = self.store.get(self.keys[shortcut])
        return known if known is not None and not known.ok else None

    def due(self) -> bool:
        """Whether the next check fits the budget (the first one always does)."""
        if not any(t.checked for t in self.tallies.values()):
            return True
        return self.check_seconds <= BUDGET * (time.monotonic() - self.started)

    def spent(self, seconds: float) -> None:
        self.check_seconds += seconds

    def judge(self, shortcut: Shortcut, served: list[float], faithful: list[float]) -> bool:
        """Record checked crops (log-odds served vs faithful); False when the shortcut fails."""
        tally = self.tallies.setdefault(shortcut, _Tally())
        for a, b in zip(served, faithful, strict=True):
            err = abs(a - b) if math.isfinite(a) and math.isfinite(b) else math.inf
            tally.max_error = max(tally.max_error, err)
            tally.checked += 1
        if tally.max_error > ACCEPT and not tally.failed:
            tally.failed = True
            self._decide(shortcut, tally, ok=False)
        return not tally.failed

    def finish(self) -> None:
        """At the end of a run: remember acceptances backed by enough checks."""
        for shortcut, tally in self.tallies.items():
            if not tally.failed and tally.checked >= MIN_STORED:
                self._decide(shortcut, tally, ok=True)

    def _decide(self, shortcut: Shortcut, tally: _Tally, *, ok: bool) -> None:
        now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
        verdict = Verdict(shortcut, ok, tally.max_error if math.isfinite(tally.max_error) else 1e9, tally.checked,
                          RULE, now)
        self.verdicts.append(verdict)
        if self.store is not None and shortcut in self.keys:
            self.store.put(self.keys[shortcut], verdict)
