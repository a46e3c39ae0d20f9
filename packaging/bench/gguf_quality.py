"""Quality of a quantized run against the full-precision one with the same seed: relative L2
of the final latents (safetensors written by `generate --latents-out`) and PSNR of the 8-bit
pictures. Usage: gguf_quality.py REF.safetensors REF.png RUN.safetensors RUN.png"""

import sys

import numpy as np
from PIL import Image
from safetensors.numpy import load_file


def latents(path):
    t = load_file(path)
    return np.concatenate([v.astype(np.float64).ravel() for _, v in sorted(t.items())])


def main():
    ref_l, ref_png, run_l, run_png = sys.argv[1:5]
    a, b = latents(ref_l), latents(run_l)
    rel = np.linalg.norm(b - a) / max(np.linalg.norm(a), 1e-30)
    x = np.asarray(Image.open(ref_png).convert("RGB"), dtype=np.float64)
    y = np.asarray(Image.open(run_png).convert("RGB"), dtype=np.float64)
    mse = np.mean((x - y) ** 2)
    psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
    print(f"latent_rel_l2 {rel:.3e} psnr_db {psnr:.1f}")


if __name__ == "__main__":
    main()
