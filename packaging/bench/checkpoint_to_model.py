# A loadable f16 model from a `latent-studio train` checkpoint (e.g. a copy taken mid-run), with the
# metadata of a model that has the same autoencoder (the one passed to --autoencoder-from):
#   python packaging/bench/checkpoint_to_model.py RUN/checkpoint.safetensors OUT.safetensors assets/models/latent-studio-default.safetensors
# numpy only. For training experiments (packaging/bench/shape_judge.py judges the result).
import sys, json, struct
import numpy as np
def read(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); base = 8 + n
    meta = h.pop("__metadata__", {}); t = {}
    for k, v in h.items():
        dt = {"F32": np.float32, "F16": np.float16}[v["dtype"]]; s, e = v["data_offsets"]
        t[k] = np.frombuffer(b[base + s:base + e], dtype=dt).reshape(v["shape"])
    return t, meta
ck, out, shipped = sys.argv[1:4]
t, cm = read(ck); _, sm = read(shipped)
meta = json.loads(sm["latent_studio"]); meta["diffusion_steps"] = int(cm.get("diffusion_step", 0)); meta["large_shapes"] = float(cm.get("large_shapes", 0))
if "unet.add_embedding.linear_1.weight" in t:  # a --pooled-text run (the engine's POOLED_SIZE_EMBED)
    meta["addition_time_embed_dim"] = 8
else:
    meta.pop("addition_time_embed_dim", None)
hdr = {}; off = 0; blobs = []
for k in sorted(t):
    a = t[k].astype(np.float16).tobytes(); hdr[k] = {"dtype": "F16", "shape": list(t[k].shape), "data_offsets": [off, off + len(a)]}; off += len(a); blobs.append(a)
hdr["__metadata__"] = {"latent_studio": json.dumps(meta)}
h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
with open(out, "wb") as f:
    f.write(struct.pack("<Q", len(h))); f.write(h); [f.write(x) for x in blobs]
print(out, meta["diffusion_steps"])
