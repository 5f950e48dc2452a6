"""Which device a run uses, whether it computes bf16 natively, and what a stored verdict about it
is valid for (the device model and the numeric libraries' versions)."""

from __future__ import annotations

import functools
import os
import platform
import re
import subprocess

import torch

from ilgnet_cli.errors import UsageError


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps and mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA, else MPS, else CPU. Asking for an absent accelerator is an error."""
    name = name.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("device cuda requested but no CUDA device is available (auto picks what there is)")
    if name == "mps" and not _mps_available():
        raise UsageError("device mps requested but MPS is not available (auto picks what there is)")
    if name not in ("cpu", "mps") and not re.fullmatch(r"cuda(:[0-9]{1,3})?", name):
        raise UsageError(f"unknown device {name[:40]!r} (auto, cpu, cuda, cuda:N, mps)")
    return torch.device(name)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


@functools.cache
def _apple_chip() -> str:
    try:
        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                             timeout=2, check=False)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def native_bf16(device: torch.device) -> bool:
    """True where bf16 matrix arithmetic is native (fast), not emulated.

    CUDA: compute capability 8.0 (Ampere) and later; torch's ``is_bf16_supported()`` also says
    yes on a T4 or V100, where bf16 is emulated and slower than fp32. MPS: Apple chips from M2 on
    (M1 GPUs have no bf16 units). CPUs: AVX512-BF16 or AMX on x86, the BF16 extension on Arm.
    ``ILGNET_NATIVE_BF16=0|1`` overrides the detection (for testing, or a device it misjudges).
    """
    forced = os.environ.get("ILGNET_NATIVE_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        major, _ = torch.cuda.get_device_capability(device)
        return major >= 8
    if device.type == "mps":
        chip = _apple_chip()
        return bool(chip) and not re.search(r"\bM1\b", chip)
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def device_kind(device: torch.device) -> str:
    """The device type and model, e.g. ``cuda:NVIDIA H200`` or ``cpu:Intel(R) Xeon(R) ...``."""
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
    if device.type == "mps":
        return f"mps:{_apple_chip() or platform.machine()}"
    return device.type


@functools.cache
def backend_versions() -> str:
    """torch and the numeric libraries under it (oneDNN, cuDNN, CUDA): a new release of any of
    them can change how bf16 is rounded, so a stored verdict names them."""
    parts = [f"torch {torch.__version__}"]
    found = re.search(r"(?:MKL-DNN|oneDNN) v([0-9.]+)", torch.__config__.show())
    if found:
        parts.append(f"onednn {found.group(1)}")
    if torch.version.cuda:
        parts.append(f"cuda {torch.version.cuda}")
        if torch.backends.cudnn.is_available():
            parts.append(f"cudnn {torch.backends.cudnn.version()}")
    return ", ".join(parts)


def exact_fp32(device: torch.device) -> None:
    """fp32 means fp32 on CUDA too: PyTorch lets cuDNN run fp32 convolutions in TF32 (10-bit
    mantissas) on Ampere and later by default, which would move "fp32" scores as far as bf16 does.
    Caffe computed in fp32; so do ilgnet's fp32 paths (bf16 is a precision of its own)."""
    if device.type == "cuda":
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
