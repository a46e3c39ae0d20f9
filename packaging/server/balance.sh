#!/usr/bin/env bash
# Two `latent-studio serve` processes behind nginx (Debian's nginx or nginx-light package):
# jobs sent to nginx land on both servers, a killed server's running jobs fail cleanly
# (502 from nginx, nothing hangs) while the other keeps serving, and later jobs all go to
# the one left. Nothing here is special to the studio: servers keep no state between jobs
# apart from the loaded model, so any HTTP load balancer works the same way.
#
#   packaging/server/balance.sh [path/to/latent-studio]    (default: target/release, then debug)
#
# Exits non-zero when one of those expectations fails. Ports 7860-7862 on 127.0.0.1.
set -euo pipefail

BIN=${1:-}
if [ -z "$BIN" ]; then
  for b in target/release/latent-studio target/debug/latent-studio; do
    [ -x "$b" ] && BIN=$b && break
  done
fi
[ -x "${BIN:-}" ] || { echo "no latent-studio binary: build one (cargo build --release) or pass its path" >&2; exit 2; }
command -v nginx >/dev/null || { echo "nginx is not installed (apt-get install nginx-light)" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

TOKEN=balance-$RANDOM$RANDOM
echo "$TOKEN" > "$WORK/token"
AUTH="Authorization: Bearer $TOKEN"

for port in 7861 7862; do
  "$BIN" serve --listen 127.0.0.1:$port --token-file "$WORK/token" > "$WORK/serve-$port.log" 2>&1 &
  PIDS+=($!)
done
A=${PIDS[0]}

cat > "$WORK/nginx.conf" <<CONF
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 256; }
http {
  access_log $WORK/access.log;
  upstream latent_studio {
    # Jobs take seconds: send each to the server with the fewest running.
    least_conn;
    server 127.0.0.1:7861 max_fails=1 fail_timeout=30s;
    server 127.0.0.1:7862 max_fails=1 fail_timeout=30s;
  }
  server {
    listen 127.0.0.1:7860;
    client_max_body_size 64m;
    location / {
      proxy_pass http://latent_studio;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      # Long jobs, and server-sent events (/latent/v1/generate, /latent/v1/events) unbuffered.
      proxy_read_timeout 600s;
      proxy_buffering off;
      # A server that is down is skipped; a job already sent to one that dies is not
      # resent (POST is not idempotent): its client gets 502.
      proxy_next_upstream error timeout;
    }
  }
}
CONF
nginx -c "$WORK/nginx.conf" -p "$WORK" -g "daemon on;"

for port in 7861 7862 7860; do
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
  done
done
echo "two servers (7861, 7862) behind nginx on 7860, binary $BIN"

job() { # steps seed -> prints the HTTP status
  curl -s --max-time 300 -o /dev/null -w '%{http_code}\n' -H "$AUTH" -H 'Content-Type: application/json' \
    -d "{\"prompt\": \"a red star on a black background\", \"width\": 64, \"height\": 64, \"steps\": $1, \"cfg_scale\": 2, \"seed\": $2, \"sampler_name\": \"DPM++ 2M\"}" \
    http://127.0.0.1:7860/sdapi/v1/txt2img
}
finished() { # port -> jobs finished there
  curl -s -H "$AUTH" "http://127.0.0.1:$1/metrics" | awk '/outcome="finished"/ {print $2}'
}
fail=0

echo "== 8 jobs at once through nginx"
C=(); for i in $(seq 1 8); do job 20 "$i" > "$WORK/s1-$i" & C+=($!); done
wait "${C[@]}"
codes=$(cat "$WORK"/s1-* | sort | uniq -c | tr '\n' ' ')
a=$(finished 7861); b=$(finished 7862)
echo "   answers: $codes; finished on 7861: $a, on 7862: $b"
[ "$a" -gt 0 ] && [ "$b" -gt 0 ] || { echo "FAIL: both servers should have had jobs"; fail=1; }
[ "$(cat "$WORK"/s1-* | grep -c '^200$')" -eq 8 ] || { echo "FAIL: every job should succeed"; fail=1; }

echo "== 4 long jobs, then 7861 is killed while they run"
C=(); for i in $(seq 1 4); do job 300 "$((100 + i))" > "$WORK/s2-$i" & C+=($!); done
sleep 2
kill -9 "$A"
start=$(date +%s)
wait "${C[@]}"
codes=$(cat "$WORK"/s2-* | sort | uniq -c | tr '\n' ' ')
echo "   answers: $codes (502 = the killed server's jobs, 200 = the other's), $(( $(date +%s) - start )) s after the kill"
grep -q 502 "$WORK"/s2-* || { echo "FAIL: the killed server's jobs should answer 502"; fail=1; }
grep -q 200 "$WORK"/s2-* || { echo "FAIL: the other server's jobs should finish"; fail=1; }

echo "== 4 more jobs after the kill"
C=(); for i in $(seq 1 4); do job 10 "$((200 + i))" > "$WORK/s3-$i" & C+=($!); done
wait "${C[@]}"
codes=$(cat "$WORK"/s3-* | sort | uniq -c | tr '\n' ' ')
echo "   answers: $codes; finished on 7862 in all: $(finished 7862)"
[ "$(cat "$WORK"/s3-* | grep -c '^200$')" -eq 4 ] || { echo "FAIL: the server left should take every job"; fail=1; }

[ $fail -eq 0 ] && echo "OK: both servers used; the killed one's jobs failed cleanly; the other served on"
exit $fail
