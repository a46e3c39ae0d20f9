#!/usr/bin/env python3
"""The diffusers side of `latent-studio bench stage`: the same network, config, random weights,
input sizes, dtype and thread count, timed the same way (median and min of --iters runs, peak
RSS). Usage: python packaging/bench/diffusers_bench.py unet --config sd15 [--width 512 --height 512
--batch 2 --dtype f32 --iters 3 --threads 2]"""
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
    ap.add_argument("stage", choices=["unet", "vae"])
    ap.add_argument("--config", default="sd15")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16", "bf16"])
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    dt = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}[a.dtype]
    h, w = a.height // 8, a.width // 8
    with torch.no_grad():
        if a.stage == "unet":
            cfg = CONFIGS[a.config]["unet"]
            net = UNet2DConditionModel(**cfg).to(dt).eval()
            x = torch.randn(a.batch, 4, h, w, dtype=dt)
            ctx = torch.randn(a.batch, 77, cfg["cross_attention_dim"], dtype=dt)
            kw = {}
            if a.config == "sdxl":
                kw["added_cond_kwargs"] = {"text_embeds": torch.randn(a.batch, 1280, dtype=dt),
                                           "time_ids": torch.tensor([[a.height, a.width, 0, 0, a.height, a.width]] * a.batch, dtype=dt)}
            run = lambda: net(x, torch.tensor([500.0] * a.batch), encoder_hidden_states=ctx, **kw)
        else:
            net = AutoencoderKL(**VAE).to(dt).eval()
            z = torch.randn(a.batch, 4, h, w, dtype=dt)
            run = lambda: net.decode(z)
        times = []
        for _ in range(a.iters):
            t = time.perf_counter()
            run()
            times.append(time.perf_counter() - t)
    times.sort()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20)
    print(json.dumps({"stage": a.stage, "config": a.config, "width": a.width, "height": a.height, "batch": a.batch, "dtype": a.dtype,
                      "iters": a.iters, "median_s": times[len(times) // 2], "min_s": times[0], "peak_rss_gib": peak,
                      "torch": torch.__version__, "threads": a.threads}))


if __name__ == "__main__":
    main()
