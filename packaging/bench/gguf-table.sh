#!/usr/bin/env bash
# The GGUF table of BENCHMARKS.md ("GGUF: memory, speed and quality"): a random-weight
# checkpoint of CONFIG (sd15 by default; `bench random-model`, f16), quantized per type
# (sd.cpp layout and --flatten-convs), each file generating the same seed at SIZE with STEPS
# steps; prints file size, peak resident memory (GNU time), time per step and quality against
# the f16 file's run (latent relative L2, PSNR; gguf_quality.py, numpy + pillow + safetensors).
# Needs a release build. Usage: DTYPE=f32 STEPS=4 packaging/bench/gguf-table.sh [LOG]
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release/latent-studio}
PY=${PYTHON:-python3}
CONFIG=${CONFIG:-sd15}
SIZE=${SIZE:-512}
STEPS=${STEPS:-4}
DTYPE=${DTYPE:-f32}
DIR=${DIR:-${TMPDIR:-/tmp}/gguf-table}
TYPES=${TYPES:-"q8_0 q8_0+flat q4_K+flat q4_0+flat"}
LOG=${1:-/dev/null}
mkdir -p "$DIR"
SRC=$DIR/$CONFIG-f16.safetensors
[ -f "$SRC" ] || "$BIN" bench random-model --config "$CONFIG" --dtype f16 "$SRC"
echo "## $(date -u +%F) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) x$(nproc); $CONFIG ${SIZE}px, $STEPS steps, --dtype $DTYPE" | tee -a "$LOG"
run() { # name file
    local out=$DIR/$1-$DTYPE
    rm -f "$out.png" "$out.safetensors"
    /usr/bin/time -f "%M" -o "$out.rss" "$BIN" generate --model "$2" --prompt "a lighthouse at dusk" --seed 7 \
        --steps "$STEPS" --width "$SIZE" --height "$SIZE" --dtype "$DTYPE" --solver dpm++2m \
        --out "$out.png" --latents-out "$out.safetensors" 2> "$out.log"
    local rss mb t
    rss=$(awk '{printf "%.2f", $1/1048576}' "$out.rss")
    mb=$(du -m --apparent-size "$2" | cut -f1)
    t=$(grep -o 'denoise [0-9.]* s' "$out.log" | awk -v s="$STEPS" '{printf "%.2f", $2/s}')
    local q="reference"
    [ "$1" = f16 ] || q=$("$PY" packaging/bench/gguf_quality.py "$DIR/f16-$DTYPE.safetensors" "$DIR/f16-$DTYPE.png" "$out.safetensors" "$out.png")
    echo "$1 | file ${mb} MB | peak ${rss} GiB | ${t} s/step | $q | $(grep -o 'weights [0-9.]* GB in memory' "$out.log" || true)" | tee -a "$LOG"
}
run f16 "$SRC"
for t in $TYPES; do
    kind=${t%+flat}
    f=$DIR/$CONFIG-$t.gguf
    if [ ! -f "$f" ]; then
        if [ "$t" != "$kind" ]; then "$BIN" quantize --type "$kind" --flatten-convs "$SRC" "$f"; else "$BIN" quantize --type "$kind" "$SRC" "$f"; fi
    fi
    run "$t" "$f"
done
