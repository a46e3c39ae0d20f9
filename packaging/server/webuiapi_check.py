#!/usr/bin/env python3
"""Drives `latent-studio serve` with the usual A1111 client, PyPI's `webuiapi`
(pip install webuiapi pillow): txt2img, img2img, get_sd_models, get_samplers, set options and
interrupt, printing what each returned. Start the server first, e.g.
    latent-studio serve --listen 127.0.0.1:7860
then: python packaging/server/webuiapi_check.py [--port 7860]
"""
import argparse
import threading
import time

import webuiapi

ap = argparse.ArgumentParser()
ap.add_argument("--host", default="127.0.0.1")
ap.add_argument("--port", type=int, default=7860)
a = ap.parse_args()
api = webuiapi.WebUIApi(host=a.host, port=a.port)

models = api.get_sd_models()
print("get_sd_models:", [m["model_name"] for m in models])
samplers = api.get_samplers()
print("get_samplers:", len(samplers), "e.g.", [s["name"] for s in samplers[:6]])
api.set_options({"sd_model_checkpoint": models[0]["title"], "CLIP_stop_at_last_layers": 1})
print("set_options: ok; options now", {k: v for k, v in api.get_options().items() if k in ("sd_model_checkpoint", "CLIP_stop_at_last_layers")})

r = api.txt2img(prompt="a red star on a black background", width=64, height=64, steps=12, cfg_scale=2,
                sampler_name="DPM++ 2M", scheduler="Karras", seed=5, batch_size=2)
print("txt2img:", len(r.images), "images", r.images[0].size, "seeds", r.info["all_seeds"])
print("  parameters:", r.info["infotexts"][0].splitlines()[-1][:120], "...")

i = api.img2img(images=[r.image], prompt="a blue star on a black background", width=64, height=64, steps=12,
                cfg_scale=2, denoising_strength=0.6, seed=6)
print("img2img:", len(i.images), "image", i.image.size, "|", i.info["infotexts"][0].splitlines()[-1][:120], "...")

# interrupt: a long job in a thread, interrupted once it runs.
out = {}
t = threading.Thread(target=lambda: out.setdefault("r", api.txt2img(prompt="a circle", width=64, height=64, steps=1000, cfg_scale=2)))
t0 = time.time()
t.start()
while api.get_progress()["state"]["sampling_step"] < 1:
    time.sleep(0.05)
api.interrupt()
t.join()
print(f"interrupt: the long job returned after {time.time() - t0:.2f} s with {len(out['r'].images)} images")
