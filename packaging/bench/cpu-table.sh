#!/usr/bin/env bash
# The CPU side-by-side table of BENCHMARKS.md ("CPU against diffusers"), in one go on a quiet
# machine: each line runs Latent Studio then diffusers on the same work (compare.py) and
# prints both with the ratios. Needs a release build (cargo build --release) and a Python
# with torch + diffusers; PYTHON picks it (default: python3). Takes ~20-40 min on 2 cores (AVX-512 / AVX2);
# SDXL needs ~14 GiB of memory free. Usage: packaging/bench/cpu-table.sh [LOG]
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
LOG=${1:-/dev/null}
cmp() { echo "### compare.py $*" | tee -a "$LOG"; "$PY" packaging/bench/compare.py "$@" 2>&1 | grep -v '^\$ ' | tee -a "$LOG"; }
echo "## $(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x$(nproc); torch $("$PY" -c 'import torch; print(torch.__version__)')" | tee -a "$LOG"
"${BIN:-target/release/latent-studio}" info --device | tee -a "$LOG"
cmp unet --config sd15 --batch 2 --iters 3
# bf16 only where the CPU multiplies bf16 (AVX-512 BF16; AMX): elsewhere PyTorch 2.15 did not
# finish three SD 1.5 UNet calls in bf16 within 13 minutes (AVX2-only EPYC, f32: 18 s each).
if grep -qw avx512_bf16 /proc/cpuinfo; then cmp unet --config sd15 --batch 2 --iters 3 --dtype bf16; fi
cmp vae --config sd15 --batch 1 --iters 2
cmp vae --config sd15 --width 1024 --height 1024 --batch 1 --iters 1
cmp pipeline --config sd15 --steps 20 --iters 1
cmp unet --config sdxl --width 1024 --height 1024 --batch 2 --iters 1
# stable-diffusion.cpp (pip install stable-diffusion-cpp-python) on a random SD 1.5 checkpoint,
# with ours on the very same file.
if "$PY" -c "import stable_diffusion_cpp" 2>/dev/null; then
    CK=${TMPDIR:-/tmp}/sd15-random-f32.safetensors
    "$PY" packaging/bench/sdcpp_bench.py --steps 4 --keep "$CK" | tee -a "$LOG"
    "$PY" packaging/bench/sdcpp_bench.py --steps 4 --keep "$CK" --flash | tee -a "$LOG"
    "${BIN:-target/release/latent-studio}" bench unet --config "$CK" --batch 2 --iters 3 | tee -a "$LOG"
fi
