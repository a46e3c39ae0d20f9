#!/usr/bin/env python3
"""The diffusers side of `latent-studio bench unet|vae|pipeline`: the same network, config,
random weights, input sizes, dtype and thread count, timed the same way (median and min of
--iters runs, peak RSS). Usage: python packaging/bench/diffusers_bench.py unet --config sd15
[--width 512 --height 512 --batch 2 --dtype f32 --iters 3 --threads 2] (pipeline: --steps 20
--cfg 7; --device cuda times on the GPU and reports torch's peak allocation; DPMSolverMultistep = our dpm++2m; text encoder timed on random token ids, since no
tokenizer files are available offline, then the pipeline runs from those embeddings).
Compare both sides in one run with packaging/bench/compare.py."""
import argparse, json, resource, time

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

CONFIGS = {
    "sd15": dict(unet=dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8, block_out_channels=(320, 640, 1280, 1280),
                           down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                           up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2)),
    "sd21": dict(unet=dict(sample_size=96, cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                           block_out_channels=(320, 640, 1280, 1280), down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                           up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, layers_per_block=2)),
    "sdxl": dict(unet=dict(sample_size=128, cross_attention_dim=2048, attention_head_dim=(5, 10, 20), use_linear_projection=True,
                           block_out_channels=(320, 640, 1280), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                           up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), transformer_layers_per_block=(1, 2, 10),
                           addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                           layers_per_block=2)),
}
VAE = dict(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
           latent_channels=4, layers_per_block=2)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["unet", "vae", "pipeline"])
    ap.add_argument("--config", default="sd15")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cfg", type=float, default=7.0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    a = ap.parse_args()
    dev = torch.device(a.device)
    sync = torch.cuda.synchronize if a.device == "cuda" else (lambda: None)
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    h, w = a.height // 8, a.width // 8
    with torch.no_grad():
        if a.stage == "unet":
            cfg = CONFIGS[a.config]["unet"]
            net = UNet2DConditionModel(**cfg).to(dev, dt).eval()
            x = torch.randn(a.batch, 4, h, w, dtype=dt, device=dev)
            ctx = torch.randn(a.batch, 77, cfg["cross_attention_dim"], dtype=dt, device=dev)
            kw = {}
            if a.config == "sdxl":
                kw["added_cond_kwargs"] = {"text_embeds": torch.randn(a.batch, 1280, dtype=dt, device=dev),
                                           "time_ids": torch.tensor([[a.height, a.width, 0, 0, a.height, a.width]] * a.batch, dtype=dt,
                                                                    device=dev)}
            run = lambda: net(x, torch.tensor([500.0] * a.batch, device=dev), encoder_hidden_states=ctx, **kw)
        elif a.stage == "vae":
            net = AutoencoderKL(**VAE).to(dev, dt).eval()
            z = torch.randn(a.batch, 4, h, w, dtype=dt, device=dev)
            run = lambda: net.decode(z)
        else:
            run, split = pipeline(a, dt, h, w, dev, sync)
        times = []
        for _ in range(a.iters):
            sync()
            t = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - t)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    out = {"stage": a.stage, "config": a.config, "width": a.width, "height": a.height, "batch": a.batch, "dtype": a.dtype,
           "iters": a.iters, "median_s": times[len(times) // 2], "min_s": times[0], "peak_rss_gib": peak,
           "torch": torch.__version__, "threads": a.threads, "device": a.device}
    if a.device == "cuda":
        out["peak_device_gib"] = torch.cuda.max_memory_allocated() / (1 << 30)
        out["gpu"] = torch.cuda.get_device_name()
    if a.stage == "pipeline":
        out["split_s"] = dict(split)
        out["nfe"] = a.steps * (2 if a.cfg > 1 else 1)
    print(json.dumps(out))


def pipeline(a, dt, h, w, dev, sync):
    """A whole SD generation from random weights: CLIP text encoder (SD 1.x: 12 layers, width
    768), UNet, VAE, DPM-Solver++ 2M; returns the runner and its last per-stage split."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel
    assert a.config == "sd15", "pipeline: sd15 only"
    te = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                      max_position_embeddings=77, vocab_size=49408, hidden_act="quick_gelu")).to(dev, dt).eval()
    unet = UNet2DConditionModel(**CONFIGS["sd15"]["unet"]).to(dev, dt).eval()
    vae = AutoencoderKL(**VAE).to(dev, dt).eval()
    sched = DPMSolverMultistepScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=None, unet=unet, scheduler=sched, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    split = {}
    ids = torch.randint(0, 49408, (2, 77), device=dev)

    def run():
        t0 = time.perf_counter()
        emb = te(ids)[0]
        sync()
        t1 = time.perf_counter()
        lat = pipe(prompt_embeds=emb[1:], negative_prompt_embeds=emb[:1], height=a.height, width=a.width,
                   num_inference_steps=a.steps, guidance_scale=a.cfg, output_type="latent",
                   generator=torch.Generator().manual_seed(1)).images
        sync()
        t2 = time.perf_counter()
        vae.decode(lat / vae.config.scaling_factor)
        sync()
        t3 = time.perf_counter()
        split.update(text=t1 - t0, unet=t2 - t1, vae=t3 - t2, previews=0.0)
    return run, split


if __name__ == "__main__":
    main()
