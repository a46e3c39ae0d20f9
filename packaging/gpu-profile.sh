#!/usr/bin/env bash
# Where GPU time goes: runs `latent-studio bench ARGS...` once under Nsight Compute (kernel
# durations only) and prints the kernels grouped by name, largest total first.
#
#   packaging/gpu-profile.sh BIN unet --config sdxl --width 1024 --height 1024 --batch 2 --dtype f16
#
# Needs ncu (Nsight Compute) and the libraries gpu-check.sh finds. Kernel time under ncu is
# measured with each kernel serialised, so the sum is the GPU's busy time, not wall time.
set -u
BIN=$1
shift
PY=${PYTHON:-python3}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | tail -1)
CSV=$(mktemp --suffix .csv)
"$NCU" --metrics gpu__time_duration.sum --csv --page raw "$BIN" bench "$@" --device cuda --iters 1 > "$CSV" 2>/dev/null
$PY - "$CSV" <<'PYEOF'
import csv, collections, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
head = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
names = rows[head]
k, t = names.index("Kernel Name"), names.index("gpu__time_duration.sum")
unit = rows[head + 1][t] if head + 1 < len(rows) else ""
total, count = collections.Counter(), collections.Counter()
for r in rows[head + 2:]:
    try:
        total[r[k][:70]] += float(r[t].replace(",", ""))
        count[r[k][:70]] += 1
    except (ValueError, IndexError):
        pass
all_t = sum(total.values())
print(f"{sum(count.values())} kernels, {all_t:.0f} {unit} in all")
for name, v in total.most_common(25):
    print(f"{100 * v / all_t:5.1f}%  {v:12.0f} {unit}  x{count[name]:<5} {name}")
PYEOF
