#!/usr/bin/env bash
# Ingest under hostile connections, with signed traffic beside them: one command, one
# table (infra/README.md, Security). Every connection of the flood passes the checks made before
# a body is read and then holds on: `bodies` sends 800 KiB of a declared 900 KiB and
# waits, `trickle` sends a byte every 500 ms, `stall` sends nothing (tests/src/load/flood.rs).
#
#   infra/flood.sh        (env: FLOOD_SECONDS=30 FLOOD_CONNECTIONS=1500 FLOOD_RATE=200 FLOOD_PORT=19700)
#
# 1. signed traffic alone (FLOOD_RATE/s, 20 s): the baseline;
# 2. the three attacks at once (FLOOD_CONNECTIONS each) with the same signed traffic;
# 3. signed traffic alone again, after the flood.
# Reports ingest's peak RSS (VmHWM) and the signed traffic's answers and latency in each.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS=${FLOOD_SECONDS:-30}
CONNS=${FLOOD_CONNECTIONS:-1500}
RATE=${FLOOD_RATE:-200}
PORT=${FLOOD_PORT:-19700}
B=127.0.0.1:$PORT
DIR=.hookstream/flood
rm -rf "$DIR" && mkdir -p "$DIR"
export HOOKSTREAM_STATE=$DIR BROKER_PORT=$PORT KAFKA_BROKERS=$B
export PAYMENTHUB_WEBHOOK_SECRET=flood-secret STANDARD_WEBHOOK_SECRET=whsec_Zmxvb2Q= \
  STRIPE_WEBHOOK_SECRET=flood GITHUB_WEBHOOK_SECRET=flood
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; infra/broker.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
say() { printf '==> %s\n' "$*" >&2; }
hwm_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
rss_mb() { awk '/VmRSS/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

say "build (release)"
cargo build --release --locked -q -p hookstream-ingest -p hookstream-tests --bins
LG=target/release/loadgen
say "broker on $B"
infra/broker.sh install >/dev/null
infra/broker.sh start --fresh >/dev/null
$LG topic create flood.raw --partitions 4 >/dev/null
# More open files than connections: the flood and ingest's own.
ulimit -n 65536 2>/dev/null || true
mapfile -t ALLOCATOR < <(grep -v '^#' infra/allocator.env | grep .)
env "${ALLOCATOR[@]}" INGEST_LISTEN=127.0.0.1:18800 INGEST_KAFKA_TOPIC=flood.raw \
  target/release/ingest --config infra/config/ingest.toml >"$DIR/ingest.log" 2>&1 &
ip=$!; pids+=($ip)
for _ in $(seq 1 150); do curl -fsS http://127.0.0.1:18800/readyz >/dev/null 2>&1 && break; sleep 0.2; done

say "1/3 signed traffic alone: $RATE/s for 20 s"
$LG send --rate "$RATE" --duration 20 --connections 32 --target 127.0.0.1:18800 >"$DIR/before.json"
before_hwm=$(hwm_mb "$ip")
say "2/3 flood: $CONNS connections each of bodies, trickle and stall for $SECS s, with $RATE/s signed"
for a in bodies trickle stall; do
  $LG flood --target 127.0.0.1:18800 --attack "$a" --connections "$CONNS" --seconds "$SECS" >"$DIR/flood-$a.json" &
  pids+=($!)
done
$LG send --rate "$RATE" --duration "$SECS" --connections 32 --target 127.0.0.1:18800 >"$DIR/during.json"
wait "${pids[@]:1}" 2>/dev/null || true
flood_hwm=$(hwm_mb "$ip")
say "3/3 signed traffic alone again"
$LG send --rate "$RATE" --duration 10 --connections 32 --target 127.0.0.1:18800 >"$DIR/after.json"
after_rss=$(rss_mb "$ip")

python3 - "$DIR" "$before_hwm" "$flood_hwm" "$after_rss" "$CONNS" "$RATE" "$SECS" <<'PY'
import json, os, sys
d, before_hwm, flood_hwm, after_rss, conns, rate, secs = sys.argv[1:]
j = lambda n: json.load(open(os.path.join(d, n)))
row = lambda o: f"{o['sent']:,} sent, {o['non_2xx']:,} non-2xx; p50 / p99 / max {o['latency_ms']['p50']:.1f} / {o['latency_ms']['p99']:.1f} / {o['latency_ms']['max']:.1f} ms"
print(f"\ningest under a flood, {os.cpu_count()} cores; `infra/flood.sh` ({conns} connections per attack, {rate}/s signed)\n")
print("| phase | signed traffic | ingest memory |")
print("|---|---|---|")
print(f"| signed alone, 20 s | {row(j('before.json'))} | peak RSS {before_hwm} MB |")
answers = "; ".join(f"{a}: " + ", ".join(f"{k}×{v}" for k, v in j(f'flood-{a}.json')['answers'].items()) for a in ("bodies", "trickle", "stall"))
print(f"| flood + signed, {secs} s | {row(j('during.json'))} | peak RSS {flood_hwm} MB |")
print(f"| signed alone after the flood, 10 s | {row(j('after.json'))} | RSS {after_rss} MB |")
print(f"\nanswers to the flood's connections (status×count, 0 = closed): {answers}")
PY
