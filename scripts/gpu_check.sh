#!/usr/bin/env bash
# On a CUDA machine: bf16/TF32 fidelity with weights trained there, the fidelity gate's cost,
# scoring and model throughput. Copy the printed tables into docs/performance.md and the README.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 benchmarks/bench_gpu.py "$@"
