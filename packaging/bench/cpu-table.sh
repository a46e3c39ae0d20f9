#!/usr/bin/env bash
# The CPU side-by-side table of BENCHMARKS.md ("CPU against diffusers"), in one go on a quiet
# machine: each line runs Latent Studio then diffusers on the same work (compare.py) and
# prints both with the ratios. Needs a release build (cargo build --release) and a Python
# with torch + diffusers; PYTHON picks it (default: python3). Takes ~30 min on 2 cores;
# SDXL needs ~14 GiB of memory free. Usage: packaging/bench/cpu-table.sh [LOG]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
LOG=${1:-/dev/null}
cmp() { echo "### compare.py $*" | tee -a "$LOG"; "$PY" packaging/bench/compare.py "$@" 2>&1 | grep -v '^\$ ' | tee -a "$LOG"; }
echo "## $(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x$(nproc); torch $("$PY" -c 'import torch; print(torch.__version__)')" | tee -a "$LOG"
cmp unet --config sd15 --batch 2 --iters 3
cmp vae --config sd15 --batch 1 --iters 2
cmp pipeline --config sd15 --steps 4 --iters 1
cmp unet --config sdxl --width 1024 --height 1024 --batch 2 --iters 1
# bf16 is left out on CPUs without AVX-512 BF16/AMX: PyTorch 2.15 did not finish three SD 1.5
# UNet calls in bf16 within 13 minutes on an AVX2-only EPYC (f32: 18 s each), so the row
# would only time the fallback. Where the CPU has them, add: cmp unet ... --dtype bf16
