#!/usr/bin/env python3
"""stable-diffusion.cpp as a second peer for the CPU table (BENCHMARKS.md "CPU against
diffusers and stable-diffusion.cpp"): the same SD 1.5 architecture with random weights, the
same size, guidance and thread count, timed through PyPI's `stable-diffusion-cpp-python`
(which builds stable-diffusion.cpp from source: `pip install stable-diffusion-cpp-python`,
needs a C++ compiler; cmake comes from PyPI).

    python packaging/bench/sdcpp_bench.py [--steps 4] [--width 512 --height 512] [--threads 2]
        [--dtype f32|f16] [--keep /tmp/sd15-random.safetensors] [--flash]

Writes a random-weight SD 1.5 checkpoint in the original (LDM) layout with the diffusers ->
LDM mapping of tests/fixtures/make_fixtures.py (UNet, VAE and CLIP from diffusers' and
transformers' own classes, as diffusers_bench.py builds them), loads it once, then times a
1-step and an N-step generation with CFG (two UNet passes per step, as ours batch 2): the
difference over N - 1 steps is one CFG step, comparable with `compare.py unet --batch 2`.
Prints one JSON line."""
import argparse, json, os, resource, sys, tempfile, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures"))
sys.path.insert(0, HERE)


def checkpoint(path, dtype):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffusers_bench import CONFIGS, VAE
    from make_fixtures import hf_text_to_ldm, unet_to_ldm, vae_to_ldm

    torch.manual_seed(0)
    ucfg = CONFIGS["sd15"]["unet"]
    unet = UNet2DConditionModel(**ucfg)
    vae = AutoencoderKL(**VAE)
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                      max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu"))
    up_attn = [bt.startswith("CrossAttn") for bt in ucfg["up_block_types"]]
    sd = unet_to_ldm(unet.state_dict(), ucfg["layers_per_block"], up_attn)
    sd.update(vae_to_ldm(vae.state_dict(), len(VAE["block_out_channels"])))
    sd.update(hf_text_to_ldm(te.state_dict(), "cond_stage_model.transformer."))
    dt = {"f32": torch.float32, "f16": torch.float16}[dtype]
    save_file({k: t.to(dt).contiguous() for k, t in sd.items()}, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16"])
    ap.add_argument("--keep", help="write (or reuse) the checkpoint here instead of a temporary file")
    ap.add_argument("--flash", action="store_true", help="stable-diffusion.cpp's flash attention for the UNet")
    ap.add_argument("--flush-denormal", action="store_true",
                    help="set the CPU's flush-to-zero / denormals-are-zero bits first (as diffusers_bench.py does for "
                         "torch): random weights make denormal numbers, slow on x86; threads started later inherit them")
    a = ap.parse_args()
    path = a.keep or os.path.join(tempfile.mkdtemp(), "sd15-random.safetensors")
    if not os.path.exists(path):
        t = time.perf_counter()
        checkpoint(path, a.dtype)
        print(f"checkpoint written in {time.perf_counter() - t:.1f} s: {path}", file=sys.stderr)
    if a.flush_denormal:
        import torch
        torch.set_flush_denormal(True)
    from stable_diffusion_cpp import StableDiffusion

    t = time.perf_counter()
    sd = StableDiffusion(model_path=path, n_threads=a.threads, diffusion_flash_attn=a.flash, verbose=False)
    load_s = time.perf_counter() - t

    def generate(steps):
        t = time.perf_counter()
        sd.generate_image(prompt="a photograph of an astronaut riding a horse", negative_prompt="", width=a.width,
                          height=a.height, cfg_scale=a.cfg, sample_steps=steps, seed=1, sample_method="euler")
        return time.perf_counter() - t

    one = generate(1)
    many = generate(a.steps)
    import stable_diffusion_cpp
    print(json.dumps({"peer": "stable-diffusion.cpp", "version": getattr(stable_diffusion_cpp, "__version__", "?"),
                      "width": a.width, "height": a.height, "dtype": a.dtype, "threads": a.threads, "flash_attn": a.flash, "flush_denormal": a.flush_denormal, "load_s": load_s,
                      "generate_1_step_s": one, f"generate_{a.steps}_steps_s": many,
                      "cfg_step_s": (many - one) / max(a.steps - 1, 1),
                      "rest_s": one - (many - one) / max(a.steps - 1, 1),
                      "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
    if not a.keep:
        os.remove(path)


if __name__ == "__main__":
    main()
