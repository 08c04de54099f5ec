#!/usr/bin/env bash
# Is loadgen the bottleneck? Runs wrk and loadgen against the same server, with
# the same connection count and duration, and prints a Markdown table of their
# requests per second. `make bench-loadgen` runs it as:
#   common/tools/bench_loadgen.sh BUILD_DIR
#
# Scenarios: (1) chapter 01's blocking server, keep-alive, 1 connection;
# (2) nginx (if installed) serving a small static file, keep-alive, 50
# connections. Each tool runs $rounds times, alternating, and its best run
# counts: on a small shared machine one run can lose a lot to anything else
# running at the same time.
# Everything this script starts is stopped on exit (see cleanup).
set -euo pipefail

build=${1:?usage: $0 BUILD_DIR}
loadgen=$build/tools/loadgen
server01=$build/chapters/01_blocking/server
seconds=3
rounds=3

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk is not installed (apt-get install wrk): nothing to compare loadgen with."
  exit 0
fi
for binary in "$loadgen" "$server01"; do
  [ -x "$binary" ] || { echo "$binary is missing: run make first." >&2; exit 1; }
done

tmp=$(mktemp -d /tmp/bench-loadgen.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts chapter 01's server on a free port and sets $port from its ready
# line "listening on 127.0.0.1:PORT". The FIFO stays open on fd 3, so the
# server never writes to a closed pipe.
start_chapter_server() {
  mkfifo "$tmp/ready"
  "$server01" --port 0 >"$tmp/ready" 2>"$tmp/server01.log" &
  pids+=($!)
  exec 3<"$tmp/ready"
  local line
  if ! read -r -t 10 -u 3 line; then
    echo "chapter 01's server printed no ready line; its log:" >&2
    cat "$tmp/server01.log" >&2
    exit 1
  fi
  port=${line##*:}
}

port_is_listening() {  # /proc/net/tcp: local address ADDR:PORT in hex, state 0A = LISTEN
  local hex
  hex=$(printf '%04X' "$1")
  awk -v p=":$hex" '$2 ~ p"$" && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp /proc/net/tcp6
}

# Starts nginx in the foreground with a private configuration and sets $port.
# nginx cannot be asked for a free port, so we try ports below Linux's default
# ephemeral range (32768-60999, where our client sockets sit) that nobody listens on.
start_nginx() {
  local nginx=$1 attempts=0
  mkdir -p "$tmp/nginx/www" "$tmp/nginx/temp"
  printf 'hello from nginx\n' >"$tmp/nginx/www/index.html"
  while ((attempts++ < 5)); do
    port=$((20000 + RANDOM % 10000))
    port_is_listening "$port" && continue
    cat >"$tmp/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $tmp/nginx/nginx.pid;
error_log $tmp/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $tmp/nginx/temp/body;
    proxy_temp_path $tmp/nginx/temp/proxy;
    fastcgi_temp_path $tmp/nginx/temp/fastcgi;
    uwsgi_temp_path $tmp/nginx/temp/uwsgi;
    scgi_temp_path $tmp/nginx/temp/scgi;
    server {
        listen 127.0.0.1:$port;
        root $tmp/nginx/www;
    }
}
EOF
    "$nginx" -e "$tmp/nginx/error.log" -p "$tmp/nginx" -c "$tmp/nginx/nginx.conf" &
    local pid=$!
    pids+=("$pid")
    # nginx prints nothing when ready: wait (with a deadline) until the port listens.
    local deadline=$((SECONDS + 5))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
      port_is_listening "$port" && return 0
      sleep 0.05
    done
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  echo "nginx did not start; its log:" >&2
  cat "$tmp/nginx/error.log" >&2
  return 1
}

wrk_rate() {  # "Requests/sec:  12345.67"
  wrk -t1 -c"$2" -d"${seconds}s" "$1" | awk '/^Requests\/sec:/ { print $2 }'
}

loadgen_rate() {
  "$loadgen" -k -c "$2" -t "$seconds" --json "$1" | sed -n 's/.*"requests_per_second":\([0-9.]*\).*/\1/p'
}

max() { awk -v a="$1" -v b="$2" 'BEGIN { m = (a + 0 > b + 0) ? a : b; print m }'; }

rows=()
# Runs both tools $rounds times, alternating, and adds a table row.
compare() {
  local name=$1 url=$2 connections=$3 best_wrk=0 best_loadgen=0 round
  for ((round = 1; round <= rounds; round++)); do
    best_wrk=$(max "$best_wrk" "$(wrk_rate "$url" "$connections")")
    best_loadgen=$(max "$best_loadgen" "$(loadgen_rate "$url" "$connections")")
  done
  local ratio
  ratio=$(awk -v w="$best_wrk" -v l="$best_loadgen" 'BEGIN { printf "%.2f", (w > 0 ? l / w : 0) }')
  rows+=("| $name | $connections | $best_wrk | $best_loadgen | $ratio |")
  awk -v r="$ratio" 'BEGIN { exit !(r < 0.8) }' && below=1
  return 0
}

below=0
cpu=$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)
echo "machine: $(nproc) CPUs ($cpu), Linux $(uname -r); $seconds s per run, best of $rounds, wrk -t1"
echo

start_chapter_server
compare "01_blocking (keep-alive)" "http://127.0.0.1:$port/" 1

nginx=$(command -v nginx || true)
[ -z "$nginx" ] && [ -x /usr/sbin/nginx ] && nginx=/usr/sbin/nginx
if [ -n "$nginx" ]; then
  start_nginx "$nginx"
  compare "nginx, 1 worker (keep-alive)" "http://127.0.0.1:$port/index.html" 50
else
  skipped="nginx is not installed (apt-get install nginx): its scenario was skipped."
fi

echo "| server | connections | wrk req/s | loadgen req/s | ratio |"
echo "|---|---:|---:|---:|---:|"
printf '%s\n' "${rows[@]}"
[ -n "${skipped:-}" ] && echo && echo "$skipped"
echo
if [ "$below" = 1 ]; then
  echo "loadgen reached less than 0.8x of wrk somewhere: it may be the bottleneck there."
else
  echo "loadgen reached at least 0.8x of wrk everywhere."
fi
