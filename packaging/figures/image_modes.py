#!/usr/bin/env python3
"""Draws docs/figures/image-modes.png: the embedded model's text to image, then image to image,
inpainting, outpainting and the hires fix from that picture, through the command line.

    cargo build --release -p latent-studio && python3 packaging/figures/image_modes.py

(or any build: LATENT_STUDIO=path/to/latent-studio; target/release, then target/debug, are tried)

Needs Pillow (for the mask and the contact sheet only; the images come from latent-studio).
"""
import os
import subprocess
import tempfile

from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("LATENT_STUDIO") or next(
    (b for b in (os.path.join(ROOT, "target", k, "latent-studio") for k in ("release", "debug")) if os.path.exists(b)),
    "latent-studio")
tmp = tempfile.mkdtemp(prefix="latent-figure-")


def gen(name, *args):
    out = os.path.join(tmp, name + ".png")
    subprocess.run([BIN, "generate", "--seed", "7", "--steps", "20", "--out", out, *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return out


base = gen("base", "--prompt", "a yellow star on a black background")
img2img = gen("img2img", "--prompt", "a red star on a black background", "--init-image", base, "--strength", "0.6")
mask = os.path.join(tmp, "mask.png")
m = Image.new("RGB", (64, 64))
ImageDraw.Draw(m).rectangle([32, 0, 63, 63], fill=(255, 255, 255))
m.save(mask)
inpaint = gen("inpaint", "--prompt", "a blue circle on a black background", "--init-image", base, "--mask", mask,
              "--strength", "1")
outpaint = gen("outpaint", "--prompt", "a yellow star on a black background", "--init-image", base,
               "--outpaint", "32,0,32,0", "--strength", "1")
hires = gen("hires", "--prompt", "a yellow star on a black background", "--hires-scale", "2", "--hires-strength", "0.5")

panels = [("text to image", base), ("image to image 0.6", img2img), ("mask (white)", mask),
          ("inpaint", inpaint), ("outpaint 32,0,32,0", outpaint), ("hires fix 2x", hires)]
scale, pad, label = 3, 8, 18
images = [(t, Image.open(p).convert("RGB")) for t, p in panels]
width = sum(i.width * scale for _, i in images) + pad * (len(images) + 1)
height = max(i.height * scale for _, i in images) + label + 2 * pad
sheet = Image.new("RGB", (width, height), (24, 24, 24))
draw = ImageDraw.Draw(sheet)
x = pad
for title, im in images:
    big = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    sheet.paste(big, (x, pad + label))
    draw.text((x, pad), title, fill=(220, 220, 220))
    x += big.width + pad
out = os.path.join(ROOT, "docs", "figures", "image-modes.png")
sheet.save(out)
print("wrote", out)
