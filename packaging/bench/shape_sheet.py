# python packaging/bench/shape_sheet.py DIR OUT.png (DIR: a shape_judge.py OUTDIR): contact sheet of judge images (rows shapes, columns colour pairs x seeds)
import sys, glob, os
from PIL import Image
SHAPES = ["circle","square","triangle","star","heart","ring","cross","diamond"]
d, out = sys.argv[1:3]
files = sorted(glob.glob(d + "/*.png"))
cols = sorted({os.path.basename(f).split("-")[0] + "-" + os.path.basename(f).split("-")[1] + "-" + os.path.basename(f).split("-")[3] for f in files})
S = 64
im = Image.new("RGB", (S * len(cols), S * 8), "gray")
for f in files:
    b = os.path.basename(f).split("-")
    r = SHAPES.index(b[2]); c = cols.index(b[0] + "-" + b[1] + "-" + b[3])
    im.paste(Image.open(f).convert("RGB").resize((S, S)), (c * S, r * S))
im.resize((im.width * 2, im.height * 2), Image.NEAREST).save(out)
print(out, cols)
