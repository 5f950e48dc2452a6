"""Options several commands share, declared once so that they cannot drift apart (no torch here:
``ilgnet --help`` must stay quick)."""

from __future__ import annotations

from typing import Annotated

import typer

from ilgnet_cli.runtime.precision import Precision

Weights = Annotated[str | None, typer.Option(
    "--weights", "-w", help="Installed weights name or .safetensors file (default: the default weights, "
    "ilgnet-ava1 unless changed with 'ilgnet weights default NAME'; fetched on first use).")]
Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")]
Workers = Annotated[int | None, typer.Option(
    min=0, help="Decoding worker processes (default: one per CPU core, at most 8; 0 = decode in this process).")]
BatchSize = Annotated[int, typer.Option(min=1, help="Images per forward pass.")]
Offline = Annotated[bool, typer.Option("--offline", help="Never download anything (also ILGNET_OFFLINE=1).")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")]
PrecisionOpt = Annotated[Precision, typer.Option(
    "--precision", help="auto: bf16 where the device computes it natively, kept only while the fidelity gate "
    "finds every checked score within 0.008 in log-odds of fp32 (checked on sampled batches through the run; with "
    "weights trained in our tests bf16 moved P by up to 0.019 and was refused: benchmarks/bench_fidelity.py), "
    "else fp32. bf16: unchecked.")]
MaxPixels = Annotated[int | None, typer.Option(
    min=1, help="Refuse images declaring more pixels (decompression bombs). Default 120,000,000.")]


def workers_or_default(workers: int | None) -> int:
    from ilgnet_cli.runtime.system import default_workers

    return default_workers() if workers is None else workers
