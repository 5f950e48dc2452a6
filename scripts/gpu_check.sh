#!/usr/bin/env bash
# On a CUDA machine: training throughput (batch 48 and 256, bf16), data-loader share, peak GPU
# memory, and scoring 2,000 synthetic JPEGs. Copy the printed tables into the README.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
python benchmarks/bench_gpu.py --iters "${ITERS:-300}" --batches 48 256 --jpegs "${JPEGS:-2000}" "$@"
