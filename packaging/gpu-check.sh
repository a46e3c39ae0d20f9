#!/usr/bin/env bash
# The CUDA check, in one run on a machine with an NVIDIA GPU (about 5 minutes on an H100/H200).
#
#   packaging/gpu-check.sh [BIN] [OUTDIR]
#
# BIN is a `latent-studio` built with `--features cuda` (packaging/build-cuda.sh makes one;
# default .gpu/latent-studio, or .gpu/latent-studio.xz, which is unpacked first). The machine needs the NVIDIA driver, the CUDA 13 libraries
# (cuBLAS, cuRAND, NVRTC: PyTorch's CUDA wheels ship them and are found by themselves) and,
# for the diffusers side, a Python with torch and diffusers (wheels in .whl/ are installed
# into a scratch folder first when present). It prints, and writes to OUTDIR/gpu-check.log:
#   1. correctness: the tiny SD1 and SDXL fixtures generated on CUDA (f32 and f16) against the
#      CPU, same seed, final latents compared;
#   2. `bench pipeline --config sd15` (512x512, 20 steps DPM++ 2M, CFG 7) on CUDA in f16, and
#      diffusers on the same work, side by side (packaging/bench/compare.py);
#   3. `bench unet --config sdxl` (1024x1024, batch 2 = CFG) on CUDA in f16, both sides.
# 2 and 3 run our side a second time with LATENT_STUDIO_FLASH_ATTN=0 (the chunked attention
# instead of the fused kernel) as an extra column; check 1 runs f16 through the fused kernel;
#   4. `bench attention`: the fused kernel against the chunked path at SD/SDXL shapes, time
#      and largest difference (covers head sizes 40, 80, 160 and 64).
set -u
cd "$(dirname "$0")/.."
BIN=${1:-.gpu/latent-studio}
[ -f "$BIN" ] || [ ! -f "$BIN.xz" ] || BIN="$BIN.xz"
LOGDIR=${2:-${OUT:-/tmp/gpu-check}}
mkdir -p "$LOGDIR"
LOG="$LOGDIR/gpu-check.log"
exec > >(tee "$LOG") 2>&1
say() { printf '\n== %s\n' "$*"; }
T0=$(date +%s)

say "machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || { echo "no nvidia-smi: not a GPU machine"; exit 1; }
PY=${PYTHON:-python3}
THREADS=$(nproc)
if [[ "$BIN" == *.xz ]]; then
    $PY -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$BIN" /tmp/latent-studio-cuda &&
        chmod +x /tmp/latent-studio-cuda && BIN=/tmp/latent-studio-cuda
fi
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site .whl/*.whl &&
        export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
fi
# The CUDA libraries the binary links (libcublas.so.13, libcurand.so.10, libnvrtc.so.13 and,
# with flash attention, libcudart.so.13): from
# the system, else from PyTorch's wheels.
LIBS=$($PY - <<'EOF' 2>/dev/null
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for pat in ("libcublas.so.*", "libcublasLt.so.*", "libcurand.so.*", "libnvrtc.so.*", "libcudart.so.*"):
        for f in glob.glob(os.path.join(sp, "nvidia", "**", pat), recursive=True):
            dirs.add(os.path.dirname(f))
print(":".join(sorted(dirs)))
EOF
)
export LD_LIBRARY_PATH=${LIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
echo "binary: $BIN ($(du -h "$BIN" | cut -f1)); libraries: $LIBS"
if ldd "$BIN" | grep -q "not found"; then
    ldd "$BIN" | grep "not found"
    echo "FAIL: missing libraries"
    exit 1
fi

say "1. CUDA against CPU on the tiny fixtures (same seed, final latents)"
W=$(mktemp -d)
FAILS=0
check() { # name model size dtype tolerance [more generate options]
    local name=$1 model=$2 size=$3 dt=$4 tol=$5
    shift 5
    local args=(generate --model "$model" --prompt "a red circle" --negative "blurry" --width "$size" --height "$size"
        --steps 6 --seed 7 --cfg 5 "$@")
    "$BIN" "${args[@]}" --device cpu --dtype f32 --out "$W/$name-cpu.png" --latents-out "$W/$name-cpu.safetensors" >/dev/null &&
        "$BIN" "${args[@]}" --device cuda --dtype "$dt" --out "$W/$name-cuda.png" --latents-out "$W/$name-cuda.safetensors" >/dev/null ||
        { echo "FAIL $name: a generation failed"; FAILS=$((FAILS + 1)); return; }
    $PY - "$W/$name-cpu.safetensors" "$W/$name-cuda.safetensors" "$name" "$tol" <<'EOF' || FAILS=$((FAILS + 1))
import sys
from safetensors.numpy import load_file
import numpy as np
a, b = (load_file(p)["latents"].astype(np.float64) for p in sys.argv[1:3])
d = np.abs(a - b)
rel = d.max() / max(np.abs(a).max(), 1e-12)
ok = rel <= float(sys.argv[4]) and np.isfinite(b).all()
print(f"{'ok  ' if ok else 'FAIL'} {sys.argv[3]}: max |cuda - cpu| = {d.max():.2e} ({rel:.2e} of max |cpu|), mean {d.mean():.2e}, tolerance {sys.argv[4]}")
sys.exit(0 if ok else 1)
EOF
}
check sd1-f32 tests/fixtures/sd1/sd1-tiny.safetensors 64 f32 1e-3
check sd1-f16 tests/fixtures/sd1/sd1-tiny.safetensors 64 f16 1e-2
check sd1-bf16 tests/fixtures/sd1/sd1-tiny.safetensors 64 bf16 5e-2
check sd1-lora-f32 tests/fixtures/sd1/sd1-tiny.safetensors 64 f32 1e-3 --lora tests/fixtures/lora/sd1-kohya.safetensors:0.8
check sd1-unipc-f32 tests/fixtures/sd1/sd1-tiny.safetensors 96 f32 1e-3 --solver unipc
check sdxl-f32 tests/fixtures/sdxl/sdxl-tiny.safetensors 64 f32 1e-3
check sd2-f32 tests/fixtures/sd2/sd2-tiny.safetensors 64 f32 1e-3
if [ -f assets/models/latent-studio-default.safetensors ]; then
    check embedded-f16 assets/models/latent-studio-default.safetensors 64 f16 1e-2
fi
echo "correctness failures: $FAILS"

say "2. whole SD1.5 generation, 512x512, 20 steps, CFG 7, f16"
timeout 200 $PY packaging/bench/compare.py pipeline --config sd15 --dtype f16 --device cuda --steps 20 --iters 3 --threads "$THREADS" --bin "$BIN" \
    --also LATENT_STUDIO_FLASH_ATTN=0 ||
    echo "(pipeline comparison did not finish)"

say "3. SDXL UNet, 1024x1024, batch 2 (one CFG step), f16"
timeout 200 $PY packaging/bench/compare.py unet --config sdxl --width 1024 --height 1024 --batch 2 --dtype f16 --device cuda --iters 5 --threads "$THREADS" --bin "$BIN" \
    --also LATENT_STUDIO_FLASH_ATTN=0 ||
    echo "(SDXL comparison did not finish)"

say "4. attention alone, fused kernel against the chunked path (f16, batch 2)"
timeout 120 "$BIN" bench attention --device cuda --dtype f16 --iters 5 || echo "(attention bench did not finish)"

say "done in $(($(date +%s) - T0)) s; correctness failures: $FAILS"
[ "$FAILS" -eq 0 ]
