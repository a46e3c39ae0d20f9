#!/usr/bin/env python3
"""Trims a copy of candle-flash-attn 0.11.1 to the kernels Latent Studio uses (called by
packaging/build-cuda.sh): f16, not causal, head sizes up to 64, 96 and 160 (SD 1.x: 40, 80,
160; SD 2.x and SDXL: 64), and points its build at a local CUTLASS instead of a git clone.

    flash-attn-patch.py CRATE_COPY CUTLASS_DIR

The engine calls the kernel only for those cases (engine/src/nets/layers.rs, `flash`)."""
import re
import sys

crate, cutlass = sys.argv[1], sys.argv[2]
KERNELS = ["kernels/flash_api.cu"] + [f"kernels/flash_fwd_hdim{d}_fp16_sm80.cu" for d in (64, 96, 160)]

build = open(f"{crate}/build.rs").read()
build, n = re.subn(r"const KERNEL_FILES: \[&str; \d+\] = \[.*?\];",
                   f"const KERNEL_FILES: [&str; {len(KERNELS)}] = [{', '.join(repr(k).replace(chr(39), chr(34)) for k in KERNELS)}];",
                   build, flags=re.S)
assert n == 1, "KERNEL_FILES not found"
build, n = re.subn(r"\.with_cutlass\(Some\(CUTLASS_COMMIT\)\)[^\n]*",
                   f'.arg("-I{cutlass}/include").arg("-I{cutlass}/tools/util/include").arg("-DUSE_CUTLASS")', build)
assert n == 1, "with_cutlass not found"
build = build.replace(".thread_percentage(0.5)", ".thread_percentage(1.0)")
open(f"{crate}/build.rs", "w").write(build)

api = open(f"{crate}/kernels/flash_api.cu").read()
start = api.index("void run_mha_fwd(Flash_fwd_params &params, cudaStream_t stream) {")
end = api.index('extern "C" void run_mha(')
api = api[:start] + """void run_mha_fwd(Flash_fwd_params &params, cudaStream_t stream) {
  // Trimmed by Latent Studio's packaging/flash-attn-patch.py: f16, not causal, no paged KV.
  if (params.d <= 64) {
    run_mha_fwd_<cutlass::half_t, 64, false>(params, stream);
  } else if (params.d <= 96) {
    run_mha_fwd_<cutlass::half_t, 96, false>(params, stream);
  } else {
    run_mha_fwd_<cutlass::half_t, 160, false>(params, stream);
  }
}

""" + api[end:]
open(f"{crate}/kernels/flash_api.cu", "w").write(api)
print(f"patched {crate}: {len(KERNELS) - 1} kernels, CUTLASS from {cutlass}")
