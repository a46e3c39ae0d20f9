#!/usr/bin/env python3
"""Checks that stable-diffusion.cpp reads GGUF files written by `latent-studio quantize`
(issue #26): each file is loaded by PyPI's `stable-diffusion-cpp-python` (which builds
stable-diffusion.cpp from source: `pip install stable-diffusion-cpp-python`) and generates
one small picture; prints one JSON line per file (loaded, seconds, the picture's mean and
spread, whether every pixel is finite). Nothing here is compared with our output: the two
tools draw different noise for a seed.

    python packaging/bench/sdcpp_reads_gguf.py FILE.gguf [FILE.gguf ...] [--size 256] [--steps 1]
"""
import argparse, json, time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    import numpy as np
    from stable_diffusion_cpp import StableDiffusion

    for f in a.files:
        row = {"file": f}
        try:
            t = time.time()
            sd = StableDiffusion(model_path=f, n_threads=a.threads, verbose=False)
            row["load_s"] = round(time.time() - t, 2)
            t = time.time()
            img = sd.generate_image(prompt="a lighthouse at dusk", negative_prompt="", width=a.size, height=a.size,
                                    cfg_scale=7.0, sample_steps=a.steps, seed=7, sample_method="euler")[0]
            row["generate_s"] = round(time.time() - t, 2)
            px = np.asarray(img, dtype=np.float64)
            row.update(loaded=True, shape=list(px.shape), mean=round(float(px.mean()), 2), std=round(float(px.std()), 2),
                       finite=bool(np.isfinite(px).all()))
        except Exception as e:  # a file it refuses is the finding
            row.update(loaded=False, error=str(e)[:300])
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
