# Shape judge for a candidate embedded model (the outline classifier of tests/tests/embedded_model.rs,
# as a logistic regression in Python), for training experiments: BENCHMARKS.md, "Shape names".
#   BIN=target/release/latent-studio PAIRS=red:white,yellow:black python packaging/bench/shape_judge.py MODEL [SEEDS]
# Generates "a {colour} {shape} on a {background} background" for every shape and colour pair
# (Euler, 20 steps, guidance CFG=2, seeds 1..SEEDS; images cached in OUTDIR) and prints how many
# the classifier (trained on large shapes of data seed 2, from `latent-studio make-dataset`)
# assigns to the named shape. Needs numpy, pillow, scikit-learn.
import sys, os, json, subprocess, glob
import numpy as np
from PIL import Image
COLORS = dict(red=(214,40,40), orange=(245,135,30), yellow=(245,215,45), green=(45,160,65), blue=(40,85,215),
  purple=(135,60,185), pink=(240,130,180), brown=(125,75,40), black=(25,25,28), white=(242,242,238))
SHAPES = ["circle","square","triangle","star","heart","ring","cross","diamond"]
BIN = os.environ.get("BIN", "target/release/latent-studio")

def feats(img, c, bg):
    x = img.astype(np.float32)
    dc = ((x - np.array(COLORS[c]))**2).sum(-1); db = ((x - np.array(COLORS[bg]))**2).sum(-1)
    m = (dc < db).astype(np.float32)
    if m.sum() < 1: return np.zeros(256, np.float32)
    ys, xs = np.nonzero(m)
    dy, dx = int(round(32 - ys.mean())), int(round(32 - xs.mean()))
    sh = np.zeros_like(m)
    H = m.shape[0]
    ys2, xs2 = ys + dy, xs + dx
    ok = (ys2 >= 0) & (ys2 < H) & (xs2 >= 0) & (xs2 < H)
    sh[ys2[ok], xs2[ok]] = 1
    return sh.reshape(16, 4, 16, 4).mean((1, 3)).ravel()

def classifier():
    cache = "/tmp/shape_clf.npz"
    from sklearn.linear_model import LogisticRegression
    if not os.path.exists(cache):
        ds = "/tmp/ds_judge"
        if not os.path.exists(ds):
            subprocess.run([BIN, "make-dataset", "--out", ds, "--count", "3000", "--seed", "2"], check=True, capture_output=True)
        X, y = [], []
        for line in open(os.path.join(ds, "captions.jsonl")):
            r = json.loads(line); cap = r["caption"]; w = cap.split()
            if "small" in w: continue
            if w[2] not in SHAPES: continue
            X.append(feats(np.array(Image.open(os.path.join(ds, r["file"])).convert("RGB")), w[1], w[-2])); y.append(SHAPES.index(w[2]))
        np.savez(cache, X=np.array(X), y=np.array(y))
    d = np.load(cache)
    X, y = d["X"], d["y"]
    n = len(y) * 4 // 5
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(X[:n], y[:n])
    print(f"classifier: {len(y)} training shapes, held-out accuracy {clf.score(X[n:], y[n:]):.3f}", file=sys.stderr)
    return clf

if __name__ == "__main__":
    model = sys.argv[1]; seeds = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    pairs = [p.split(":") for p in os.environ.get("PAIRS", "red:blue,yellow:purple,white:green,orange:black").split(",")]
    cfg = os.environ.get("CFG", "2"); solver = os.environ.get("SOLVER", "euler")
    out = os.environ.get("OUTDIR", "/tmp/judge_" + os.path.basename(model).replace(".safetensors", ""))
    os.makedirs(out, exist_ok=True)
    clf = classifier()
    right = 0; total = 0; conf = np.zeros((8, 8), int)
    for c, bg in pairs:
        for si, s in enumerate(SHAPES):
            for seed in range(1, seeds + 1):
                f = f"{out}/{c}-{bg}-{s}-{seed}-cfg{cfg}.png"
                if not os.path.exists(f):
                    art = "an" if c[0] in "aeiou" else "a"
                    subprocess.run([BIN, "generate", "--model", model, "--prompt", f"{art} {c} {s} on a {bg} background",
                        "--seed", str(seed), "--cfg", cfg, "--solver", solver, "--out", f], check=True, capture_output=True)
                p = clf.predict([feats(np.array(Image.open(f).convert("RGB")), c, bg)])[0]
                conf[si, p] += 1; right += p == si; total += 1
    print(f"{model}: shapes right {right}/{total} (cfg {cfg}, {solver})")
    print("rows named, cols judged:\n" + "\n".join(f"{SHAPES[i]:>9} " + " ".join(f"{v:2d}" for v in conf[i]) for i in range(8)))
