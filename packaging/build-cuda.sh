#!/usr/bin/env bash
# Builds `latent-studio` with CUDA on a machine with no GPU and no CUDA toolkit installed, from
# NVIDIA's PyPI wheels (the only place nvcc is published as a package):
#
#   packaging/build-cuda.sh [OUTDIR]      # default .gpu/ ; writes OUTDIR/latent-studio
#
# FEATURES (default `cuda,flash-attn`) picks what goes in:
# - flash-attn: candle-flash-attn's FlashAttention-2 kernels for f16, built here from the crate
#   with CUTLASS (NVIDIA/cutlass at the commit candle pins, taken from CUTLASS_DIR or cloned)
#   and only the kernels our models need (head sizes up to 64, 96 and 160, not causal): one
#   kernel file takes ~8 minutes of one core, all 53 of the crate's would take hours. The
#   compiled library is kept in $CUDA_WHEELS/flash-attn-build between builds.
#
# - CUDA 13.0 wheels: nvcc compiles candle's kernels to PTX for sm_90a (H100/H200; set
#   CUDA_COMPUTE_CAP=89 for Ada, 86 for Ampere), which the 580-series driver (CUDA 13.0) loads.
#   Newer nvcc emits PTX that a 580 driver refuses.
# - candle links the CUDA driver library (libcuda.so.1) at build time. No package here ships it,
#   so a stub exporting every cu* symbol cudarc declares is linked instead; at run time the
#   real driver's libcuda.so.1 is used. cuBLAS, cuRAND and NVRTC come from the same wheels at
#   build time and from the machine (or PyTorch's wheels) at run time.
# - The binary needs the NVIDIA driver to start (packaging/gpu-check.sh checks it on a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-.gpu}
PY=${PYTHON:-python3}
CUDA_WHEELS=${CUDA_WHEELS:-$HOME/.cache/latent-studio/cuda13}
ROOT="$CUDA_WHEELS/nvidia/cu13"
if [ ! -x "$ROOT/bin/nvcc" ]; then
    $PY -m pip install -q --target "$CUDA_WHEELS" --no-deps nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 "nvidia-cublas>=13.0,<13.1" \
        nvidia-curand==10.4.0.35 nvidia-cuda-cccl==13.0.85
fi
FEATURES=${FEATURES:-cuda,flash-attn}
# Unversioned names for the linker.
for lib in libcublas libcublasLt libcudart libnvrtc; do ln -sf "$lib.so.13" "$ROOT/lib/$lib.so"; done
ln -sf libcurand.so.10 "$ROOT/lib/libcurand.so"
# The driver stub: every cu* function cudarc's bindings declare, each returning an error.
STUB="$CUDA_WHEELS/stub"
mkdir -p "$STUB"
SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs 2>/dev/null | tail -1 || true)
if [ -z "$SYS" ]; then
    cargo fetch --locked
    SYS=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-*/src/driver/sys/mod.rs | tail -1)
fi
grep -oh "pub unsafe fn cu[A-Za-z0-9_]*" "$SYS" | awk '{print $4}' | sort -u |
    awk '{print "int " $1 "(void) { return 999; }"}' > "$STUB/stub.c"
cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$STUB/libcuda.so" "$STUB/stub.c"

PATCH=()
if [[ ",$FEATURES," == *",flash-attn,"* ]]; then
    CUTLASS_COMMIT=7d49e6c7e2f8896c47f586706e67e1fb215529dc
    CUTLASS_DIR=${CUTLASS_DIR:-$CUDA_WHEELS/cutlass}
    if [ ! -d "$CUTLASS_DIR/include/cute" ]; then
        git clone -q --filter=blob:none --no-checkout https://github.com/NVIDIA/cutlass.git "$CUTLASS_DIR.git"
        git -C "$CUTLASS_DIR.git" archive "$CUTLASS_COMMIT" include tools/util/include | (mkdir -p "$CUTLASS_DIR" && tar x -C "$CUTLASS_DIR")
    fi
    FA=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-flash-attn-0.11.1 2>/dev/null | tail -1 || true)
    [ -n "$FA" ] || { cargo fetch; FA=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/candle-flash-attn-0.11.1 | tail -1); }
    FASRC="$CUDA_WHEELS/candle-flash-attn"
    rm -rf "$FASRC" && cp -r "$FA" "$FASRC"
    mkdir -p "$CUDA_WHEELS/flash-attn-build"
    $PY packaging/flash-attn-patch.py "$FASRC" "$CUTLASS_DIR"
    PATCH=(--config "patch.crates-io.candle-flash-attn.path=\"$FASRC\"")
    export CANDLE_FLASH_ATTN_BUILD_DIR="$CUDA_WHEELS/flash-attn-build"
fi
export CUDA_ROOT="$ROOT" CUDA_PATH="$ROOT" PATH="$ROOT/bin:$PATH"
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export RUSTFLAGS="-L native=$STUB"
export LIBRARY_PATH="$STUB:$ROOT/lib"
TARGET=${CARGO_TARGET_DIR:-target/cuda}
# The patched flash-attn source changes Cargo.lock for this build only: keep the committed one.
cp Cargo.lock "$TARGET.Cargo.lock" 2>/dev/null || { mkdir -p "$(dirname "$TARGET")"; cp Cargo.lock "$TARGET.Cargo.lock"; }
status=0
cargo build --release "${PATCH[@]}" --features "$FEATURES" -p latent-studio --target-dir "$TARGET" || status=$?
cp "$TARGET.Cargo.lock" Cargo.lock
[ "$status" -eq 0 ] || exit "$status"
mkdir -p "$OUTDIR"
cp "$TARGET/release/latent-studio" "$OUTDIR/latent-studio"
strip "$OUTDIR/latent-studio" 2>/dev/null || true
ls -la "$OUTDIR/latent-studio"
