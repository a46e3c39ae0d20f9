#!/usr/bin/env python3
"""Runs one benchmark on both sides, Latent Studio and diffusers, in one go, and prints them
side by side with the ratios. Same config, random weights, size, batch, dtype and thread count.

    python packaging/bench/compare.py vae --config sd15 --batch 1
    python packaging/bench/compare.py pipeline --config sd15 --width 256 --height 256 --steps 10 --iters 1
    python packaging/bench/compare.py unet --config sd15 --batch 2 --iters 1

Needs a built `latent-studio` (--bin, default target/release/latent-studio) and a Python with
torch + diffusers + transformers (run this script with it). Ratios > 1 mean Latent Studio
takes longer / uses more memory. With --device cuda both sides run on the GPU and the table
adds each side's peak GPU memory as nvidia-smi saw it (sampled every 50 ms, the same way for
both; it includes the CUDA context)."""
import argparse, json, os, platform, subprocess, sys, threading

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


class GpuMemory:
    """Largest `memory.used` (MiB) nvidia-smi reports while the block runs."""

    def __enter__(self):
        self.peak = 0
        self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-lms", "50"],
                                     stdout=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.peak = max(self.peak, int(line.split(",")[0]))
            except ValueError:
                pass

    def __exit__(self, *exc):
        self.proc.terminate()
        self.thread.join(timeout=2)


def run(cmd, env, gpu=False):
    print("$ " + " ".join(cmd), file=sys.stderr)
    if gpu:
        with GpuMemory() as mem:
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    else:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if gpu:
        result["peak_gpu_gib"] = mem.peak / 1024
    return result


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
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--also", action="append", default=[], metavar="KEY=VALUE",
                    help="run our side once more with this environment variable set (e.g. "
                         "LATENT_STUDIO_FLASH_ATTN=0) and print it as an extra column")
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "latent-studio"))
    a = ap.parse_args()
    batch = a.batch or (2 if a.stage == "unet" else 1)
    common = ["--config", a.config, "--width", str(a.width), "--height", str(a.height), "--batch", str(batch),
              "--dtype", a.dtype, "--iters", str(a.iters), "--device", a.device]
    gpu = a.device == "cuda"
    extra = ["--steps", str(a.steps), "--cfg", str(a.cfg)] if a.stage == "pipeline" else []
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    ours = run([a.bin, "bench", a.stage, *common, *extra, "--json"], env, gpu)
    theirs = run([sys.executable, os.path.join(HERE, "diffusers_bench.py"), a.stage, *common, *extra,
                  "--threads", str(a.threads)], env, gpu)
    variants = []
    for kv in a.also:
        key, _, value = kv.partition("=")
        variants.append((kv, run([a.bin, "bench", a.stage, *common, *extra, "--json"], dict(env, **{key: value}), gpu)))
    where = theirs.get("gpu") if gpu else f"{a.threads} threads, {platform.processor() or platform.machine()}"
    print(f"\n{a.stage} {a.config} {a.width}x{a.height} batch {batch} {a.dtype} on {a.device}, {where}; torch {theirs.get('torch')}")
    print("| | Latent Studio | diffusers | ratio |" + "".join(f" ours, {kv} | ratio |" for kv, _ in variants))
    print("|---|---|---|---|" + "---|---|" * len(variants))
    rows = [("median_s", "median s"), ("min_s", "min s"), ("peak_rss_gib", "peak RSS GiB")]
    if gpu:
        rows.append(("peak_gpu_gib", "peak GPU GiB (nvidia-smi)"))
    for key, label in rows:
        o, t = ours[key], theirs[key]
        more = "".join(f" {v[key]:.2f} | {v[key] / t:.2f}x |" for _, v in variants)
        print(f"| {label} | {o:.2f} | {t:.2f} | {o / t:.2f}x |{more}")
    if a.stage == "pipeline":
        for k in ["text", "unet", "vae", "previews"]:
            o, t = ours["split_s"][k], theirs["split_s"][k]
            more = "".join(f" {v['split_s'][k]:.2f} | {(v['split_s'][k] / t) if t else float('nan'):.2f}x |" for _, v in variants)
            print(f"| {k} s | {o:.2f} | {t:.2f} | {(o / t) if t else float('nan'):.2f}x |{more}")
        print(f"| NFE | {ours['nfe']} | {theirs['nfe']} | |")


if __name__ == "__main__":
    main()
