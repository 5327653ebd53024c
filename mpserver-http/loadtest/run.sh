#!/usr/bin/env bash
# Load test of the HTTP front (a benchmark, not a test: it asserts nothing
# about speed). Builds `seed_http` in release mode, serves on 127.0.0.1 only,
# drives it with wrk (installed with apt-get if missing), and prints
# requests/s, p50/p99/p99.9 latency and error counts:
#
#   1. the seed flow (capacity 256) at 1, 8 and 64 connections;
#   2. a trivial echo flow at the same levels: the HTTP front's own cost;
#   3. overload: the seed flow with capacity 4 and 256 connections. 503s
#      must come back fast (sampled with curl during the run) and /readyz must
#      stay 200 during and after it.
#
# Knobs (environment): DURATION (default 10s), CONNS (default "1 8 64"),
# PORT (default 18480), OVERLOAD_CONNS (default 256), CARGO_TARGET_DIR.
# Run from anywhere: bash mpserver-http/loadtest/run.sh
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
DURATION="${DURATION:-10s}"
CONNS="${CONNS:-1 8 64}"
PORT="${PORT:-18480}"
OVERLOAD_CONNS="${OVERLOAD_CONNS:-256}"
target="${CARGO_TARGET_DIR:-$root/target}"
base="http://127.0.0.1:$PORT"

if ! command -v wrk >/dev/null 2>&1; then
  echo "# installing wrk" >&2
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && apt-get install -y -qq wrk >/dev/null
  else
    sudo apt-get update -qq && sudo apt-get install -y -qq wrk >/dev/null
  fi
fi

echo "# building seed_http (release)" >&2
(cd "$root" && cargo build --release -q -p mpserver-http-seed --bin seed_http)
bin="$target/release/seed_http"

server_pid=""
stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid"
    wait "$server_pid" || echo "# seed_http exited with $?" >&2
  fi
  server_pid=""
}
trap stop_server EXIT

start_server() { # flow capacity
  RUST_LOG=warn "$bin" --addr "127.0.0.1:$PORT" --flow "$1" --capacity "$2" >/dev/null &
  server_pid=$!
  for _ in $(seq 1 300); do
    if [ "$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz")" = 200 ]; then
      return 0
    fi
    sleep 0.05
  done
  echo "seed_http did not become ready" >&2
  exit 1
}

run_wrk() { # label connections
  local threads=2
  [ "$2" -lt 2 ] && threads=1
  local line
  line="$(wrk -t"$threads" -c"$2" -d"$DURATION" --timeout 10s -s "$here/post.lua" "$base/call" | grep '^RESULT')"
  printf '%-22s conns=%-4s %s\n' "$1" "$2" "${line#RESULT }"
}

echo "== $(date -u +%FT%TZ) $(nproc) CPUs; wrk $DURATION per run; loopback only"

for flow in seed echo; do
  start_server "$flow" 256
  curl -s -o /dev/null -X POST "$base/call" -d '"world"' # warm up
  for c in $CONNS; do
    run_wrk "$flow(cap=256)" "$c"
  done
  stop_server
done

# Overload: many more connections than capacity.
start_server seed 4
samples="$(mktemp)"
(
  sleep 1
  for _ in $(seq 1 200); do
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST "$base/call" -d '"world"'
  done >"$samples"
  for _ in $(seq 1 20); do
    curl -s -o /dev/null -w 'readyz %{http_code}\n' "$base/readyz"
  done >>"$samples"
) &
sampler=$!
run_wrk "overload(seed,cap=4)" "$OVERLOAD_CONNS"
wait "$sampler"
awk '$1 == 503 { print $2 * 1000 }' "$samples" | sort -n | awk '
  { t[++n] = $1 }
  END {
    if (n == 0) { print "overload: no 503 sampled"; exit }
    p50 = int((n + 1) / 2); p90 = int(n * 0.9); if (p90 < 1) p90 = 1
    printf "overload: 503 answers sampled by curl: %d, median %.3f ms, p90 %.3f ms, max %.3f ms\n",
           n, t[p50], t[p90], t[n]
  }'
awk '$1 == "readyz" { c[$2]++ } END { for (k in c) printf "overload: /readyz during the run: %d x %s\n", c[k], k }' "$samples"
rm -f "$samples"
after_ready="$(curl -s -o /dev/null -w '%{http_code}' "$base/readyz")"
after_call="$(curl -s -X POST "$base/call" -d '"world"')"
echo "overload: after the run /readyz=$after_ready /call=$after_call"
stop_server
