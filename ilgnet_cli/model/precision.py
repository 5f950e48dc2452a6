"""Which number format the model runs in: fp32 (Caffe's), or bf16 where it is both fast and faithful.

bf16 is run the fast way: a bf16 copy of the weights fed bf16 inputs (channels_last,
inference mode), not autocast, which on CPUs re-casts every operand and was measured slower
than fp32. LRN and softmax are computed in fp32 inside the model whatever the input dtype.

``auto`` uses bf16 only where the device has native bf16 arithmetic *and* the weights pass a
fidelity guard: the first batch of a run is scored in both formats, and bf16 is kept only if no
probability moves by more than :data:`MAX_DELTA` and the order of the batch is unchanged (pairs
closer than :data:`TIE` in fp32 may swap). The verdict is stored per weights sha256 and device
kind in ``$ILGNET_HOME/precision.json``, so the guard runs once.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
import platform
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16")
MAX_DELTA = 0.005  # largest |P_bf16 - P_fp32| accepted on the guard batch
# fp32 scores closer than this may change order in bf16: the score noise bf16 is allowed. With a
# tighter tie (0.001) faithful bf16 (|dP| ~0.0014) was refused on any densely scored batch.
TIE = MAX_DELTA
RULE = f"max_delta={MAX_DELTA},tie={TIE}"
MIN_GUARD = 8  # a verdict from fewer scored photos is used for this run but not stored


@dataclass(frozen=True)
class Verdict:
    bf16: bool
    max_delta: float
    ranking_kept: bool
    n: int
    checked_at: str = ""
    rule: str = ""  # the bounds it was judged by: a verdict under other bounds is judged again

    def describe(self) -> str:
        how = f"max |dP| {self.max_delta:.4f} on {self.n} photos"
        if self.bf16:
            return f"bf16 (checked against fp32: {how}, order kept)"
        why = "order changed" if not self.ranking_kept else f"over {MAX_DELTA}"
        return f"fp32: bf16 moved scores too much for these weights ({how}; {why})"


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matrix arithmetic is native (fast), not emulated.

    ``ILGNET_NATIVE_BF16=0|1`` overrides the detection (for testing, or a device it misjudges).
    """
    forced = os.environ.get("ILGNET_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "mps":
        return True  # Apple GPUs from M2 on; torch refuses bf16 on MPS where it cannot
    flags = _cpu_flags()
    # x86: AVX512-BF16 or AMX; Arm: the BF16 extension (e.g. Graviton 3, Apple M2+).
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def device_kind(device: torch.device) -> str:
    """What a stored verdict is valid for: the device type and model."""
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(device)}"
    if device.type == "cpu":
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
                name = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), name)
        except OSError:
            pass
        return f"cpu:{name}"
    return device.type


def bf16_model(model: torch.nn.Module) -> torch.nn.Module:
    """A bf16, channels_last, eval-mode copy of ``model`` (the fp32 one is kept for the guard).

    Each parameter is cast straight into the copy: copying 600 MB of fp32 first and casting it
    after took three times as long, paid at the start of every bf16 run."""
    memo: dict[int, object] = {id(p): torch.nn.Parameter(p.detach().to(torch.bfloat16, copy=True),
                                                         requires_grad=False)
                               for p in model.parameters()}
    clone = copy.deepcopy(model, memo)
    return clone.to(dtype=torch.bfloat16).to(memory_format=torch.channels_last).eval()


def ranking_kept(p32: list[float], p16: list[float], tie: float = TIE) -> bool:
    """Every pair that fp32 orders by more than ``tie`` is ordered the same way in bf16."""
    pairs = sorted(zip(p32, p16, strict=True))
    for i, (a32, a16) in enumerate(pairs):
        for b32, b16 in pairs[i + 1:]:
            if b32 - a32 > tie and not b16 > a16:
                return False
    return True


def judge(p32: list[float], p16: list[float]) -> Verdict:
    """bf16 is kept only if every score is finite in both, moves by at most MAX_DELTA and pairs
    further apart than TIE keep their order."""
    finite = all(math.isfinite(v) for v in (*p32, *p16))
    delta = max((abs(a - b) for a, b in zip(p32, p16, strict=True)), default=0.0) if finite else math.inf
    kept = finite and ranking_kept(p32, p16)
    return Verdict(bf16=delta <= MAX_DELTA and kept, max_delta=delta, ranking_kept=kept, n=len(p32),
                   checked_at=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(), rule=RULE)


class VerdictStore:
    """``precision.json``: verdicts by weights sha256 and device kind. Unreadable = empty."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, sha256: str, kind: str) -> Verdict | None:
        entry = self._read().get(f"{sha256}|{kind}")
        try:
            verdict = Verdict(**entry) if isinstance(entry, dict) else None
        except TypeError:
            return None
        return verdict if verdict is not None and verdict.rule == RULE else None

    def put(self, sha256: str, kind: str, verdict: Verdict) -> None:
        from ilgnet_cli.runtime.fsutil import atomic_write_text

        data = self._read()
        data[f"{sha256}|{kind}"] = asdict(verdict)
        try:
            atomic_write_text(self.path, json.dumps(data, indent=1) + "\n")
        except OSError:
            pass  # only a cache of a check: the guard simply runs again next time


def plan(requested: str, device: torch.device, *, exact: bool) -> str:
    """``requested`` (auto/fp32/bf16) -> fp32, bf16, or guard (auto where bf16 is native).

    ``exact`` (the authors' pipeline) means fp32. An explicit ``bf16`` is honoured even where it
    is emulated (slow): the user asked for it.
    """
    from ilgnet_cli.errors import UsageError

    if requested not in PRECISIONS:
        raise UsageError(f"precision must be one of {', '.join(PRECISIONS)} (got {requested!r})")
    if exact:
        if requested == "bf16":
            raise UsageError("exact scoring is the authors' fp32 pipeline: it cannot run in bf16")
        return "fp32"
    if requested != "auto":
        return requested
    return "guard" if native_bf16(device) else "fp32"
