"""Draws the Latent Studio icon at the sizes the freedesktop hicolor theme uses.

A rounded square going from noise (left) to a clean shape (right): a picture forming step by
step, which is what the studio shows. Deterministic (fixed seed); needs Pillow.

    python3 packaging/icons/make_icons.py      # writes packaging/icons/<size>/latent-studio.png
"""

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).parent
BIG = 1024


def star(cx, cy, r_out, r_in, points=5):
    import math

    out = []
    for i in range(points * 2):
        r = r_out if i % 2 == 0 else r_in
        a = math.pi / 2 + i * math.pi / points
        out.append((cx + r * math.cos(a), cy - r * math.sin(a)))
    return out


def draw():
    rng = random.Random(7)
    base = Image.new("RGB", (BIG, BIG), (22, 24, 38))
    d = ImageDraw.Draw(base)
    # Background: deep blue to violet.
    for y in range(BIG):
        t = y / BIG
        d.line([(0, y), (BIG, y)], fill=(int(30 + 40 * t), int(34 + 10 * t), int(80 + 60 * t)))
    clean = base.copy()
    ImageDraw.Draw(clean).polygon(star(BIG * 0.5, BIG * 0.53, BIG * 0.36, BIG * 0.15), fill=(255, 196, 58))
    clean = clean.filter(ImageFilter.GaussianBlur(2))
    # Noise that fades out from left to right (the denoising steps).
    noisy = Image.new("RGB", (BIG // 16, BIG // 16))
    noisy.putdata([tuple(rng.randrange(256) for _ in range(3)) for _ in range(noisy.width * noisy.height)])
    noisy = noisy.resize((BIG, BIG), Image.NEAREST)
    mask = Image.new("L", (BIG, BIG))
    md = ImageDraw.Draw(mask)
    for x in range(BIG):
        t = max(0.0, 1.0 - x / (BIG * 0.75))
        md.line([(x, 0), (x, BIG)], fill=int(255 * t**1.5))
    img = Image.composite(noisy, clean, mask)
    # Rounded-square silhouette.
    shape = Image.new("L", (BIG, BIG))
    ImageDraw.Draw(shape).rounded_rectangle([24, 24, BIG - 24, BIG - 24], radius=200, fill=255)
    out = Image.new("RGBA", (BIG, BIG))
    out.paste(img, mask=shape)
    return out


def main():
    icon = draw()
    for size in (16, 32, 48, 64, 128, 256, 512):
        d = HERE / str(size)
        d.mkdir(exist_ok=True)
        icon.resize((size, size), Image.LANCZOS).save(d / "latent-studio.png", optimize=True)
        print(d / "latent-studio.png")


if __name__ == "__main__":
    main()
