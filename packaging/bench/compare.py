#!/usr/bin/env python3
"""Runs one benchmark on both sides, Latent Studio and diffusers, in one go, and prints them
side by side with the ratios. Same config, random weights, size, batch, dtype and thread count.

    python packaging/bench/compare.py vae --config sd15 --batch 1
    python packaging/bench/compare.py pipeline --config sd15 --width 256 --height 256 --steps 10 --iters 1
    python packaging/bench/compare.py unet --config sd15 --batch 2 --iters 1

Needs a built `latent-studio` (--bin, default target/release/latent-studio) and a Python with
torch + diffusers + transformers (run this script with it). Ratios > 1 mean Latent Studio
takes longer / uses more memory."""
import argparse, json, os, platform, subprocess, sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run(cmd, env):
    print("$ " + " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["unet", "vae", "pipeline"])
    ap.add_argument("--config", default="sd15")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "latent-studio"))
    a = ap.parse_args()
    batch = a.batch or (2 if a.stage == "unet" else 1)
    common = ["--config", a.config, "--width", str(a.width), "--height", str(a.height), "--batch", str(batch),
              "--dtype", a.dtype, "--iters", str(a.iters)]
    extra = ["--steps", str(a.steps), "--cfg", str(a.cfg)] if a.stage == "pipeline" else []
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    ours = run([a.bin, "bench", a.stage, *common, *extra, "--json"], env)
    theirs = run([sys.executable, os.path.join(HERE, "diffusers_bench.py"), a.stage, *common, *extra,
                  "--threads", str(a.threads)], env)
    print(f"\n{a.stage} {a.config} {a.width}x{a.height} batch {batch} {a.dtype}, {a.threads} threads, "
          f"{platform.processor() or platform.machine()}; torch {theirs.get('torch')}")
    print("| | Latent Studio | diffusers | ratio |")
    print("|---|---|---|---|")
    for key, label in [("median_s", "median s"), ("min_s", "min s"), ("peak_rss_gib", "peak RSS GiB")]:
        o, t = ours[key], theirs[key]
        print(f"| {label} | {o:.2f} | {t:.2f} | {o / t:.2f}x |")
    if a.stage == "pipeline":
        for k in ["text", "unet", "vae", "previews"]:
            o, t = ours["split_s"][k], theirs["split_s"][k]
            print(f"| {k} s | {o:.2f} | {t:.2f} | {(o / t) if t else float('nan'):.2f}x |")
        print(f"| NFE | {ours['nfe']} | {theirs['nfe']} | |")


if __name__ == "__main__":
    main()
