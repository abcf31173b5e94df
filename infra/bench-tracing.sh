#!/usr/bin/env bash
# What observability costs: the 5,000/s spike (infra/bench.sh's, on 4 partitions, with
# the processor running and every activation verified) with
#   off      no trace export and no receipt log line (RUST_LOG=info,hookstream_ingest::received=off)
#   log      the receipt line on (the default), no export
#   1%       the line, and spans exported at 1% (parentbased_traceidratio 0.01)
#   100%     the line, and every span exported
# to an OTLP/HTTP sink on loopback (`loadgen otlp-sink`, which only counts what it gets).
# The modes alternate for BENCH_ROUNDS rounds; the table shows medians, each against
# `off` of the same rounds.
#
#   infra/bench-tracing.sh   (env: BENCH_RATE=5000 BENCH_SECONDS=30 BENCH_ROUNDS=2 BENCH_PORT=19610)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The services run with the allocator settings of infra/allocator.env, as in production.
mapfile -t ALLOCATOR < <(grep -v '^#' infra/allocator.env | grep .)
SERVICE_ENV=(env "${ALLOCATOR[@]}")
RATE=${BENCH_RATE:-5000}
SECONDS_=${BENCH_SECONDS:-30}
ROUNDS=${BENCH_ROUNDS:-2}
PORT=${BENCH_PORT:-19610}
PARTS=4
B=127.0.0.1:$PORT
SINK=127.0.0.1:14318
DIR=.hookstream/bench-tracing
rm -rf "$DIR" && mkdir -p "$DIR"
export HOOKSTREAM_STATE=$DIR BROKER_PORT=$PORT KAFKA_BROKERS=$B
export PAYMENTHUB_WEBHOOK_SECRET=bench-secret STANDARD_WEBHOOK_SECRET=whsec_YmVuY2g= \
  STRIPE_WEBHOOK_SECRET=bench GITHUB_WEBHOOK_SECRET=bench
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; infra/broker.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
say() { printf '==> %s\n' "$*" >&2; }
wait_ready() { for _ in $(seq 1 150); do curl -fsS "$1/readyz" >/dev/null 2>&1 && return 0; sleep 0.2; done; echo "not ready: $1" >&2; exit 1; }
# CPU seconds (user + system) a process has used.
cpu_s() { awk -v t="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / t}' "/proc/$1/stat"; }

say "build (release)"
cargo build --release --locked -q -p hookstream-ingest -p hookstream-processor -p hookstream-tests --bins
LG=target/release/loadgen
infra/broker.sh install >/dev/null
infra/broker.sh start --fresh >/dev/null

# run MODE ROUND: one spike; writes $DIR/MODE-ROUND.json (loadgen's) and .cpu (ingest, processor) and .sink.
run() {
  local mode=$1 r=$2 n="$1-$2" raw act dlq env=()
  raw=bench.t$n.raw act=bench.t$n.activations dlq=bench.t$n.dlq
  $LG topic create "$raw" --partitions $PARTS >/dev/null
  $LG topic create "$act" --partitions $PARTS >/dev/null
  $LG topic create "$dlq" --partitions 1 >/dev/null
  case $mode in
    off) env=(RUST_LOG=info,hookstream_ingest::received=off) ;;
    log) env=(RUST_LOG=info) ;;
    1pct) env=(RUST_LOG=info OTEL_EXPORTER_OTLP_ENDPOINT=http://$SINK OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01) ;;
    100pct) env=(RUST_LOG=info OTEL_EXPORTER_OTLP_ENDPOINT=http://$SINK OTEL_TRACES_SAMPLER=parentbased_always_on) ;;
  esac
  $LG otlp-sink --listen $SINK >"$DIR/$n.sink" &
  local sp=$!; pids+=($sp)
  sed "s/^group_id = .*/group_id = \"bench-t$n\"/; s/^raw_topic = .*/raw_topic = \"$raw\"/; s/^activations_topic = .*/activations_topic = \"$act\"/; s/^dlq_topic = .*/dlq_topic = \"$dlq\"/" \
    infra/config/processor.toml >"$DIR/processor-$n.toml"
  PROCESSOR_STATE_DIR=$DIR/state-$n PROCESSOR_ADMIN_LISTEN=127.0.0.1:18792 \
    "${SERVICE_ENV[@]}" "${env[@]}" target/release/processor run --config "$DIR/processor-$n.toml" >"$DIR/processor-$n.log" 2>&1 &
  local pp=$!; pids+=($pp)
  wait_ready http://127.0.0.1:18792
  sed "s/^topic = .*/topic = \"$raw\"/" infra/config/ingest.toml >"$DIR/ingest-$n.toml"
  INGEST_LISTEN=127.0.0.1:18703 "${SERVICE_ENV[@]}" "${env[@]}" target/release/ingest --config "$DIR/ingest-$n.toml" >"$DIR/ingest-$n.log" 2>&1 &
  local ip=$!; pids+=($ip)
  wait_ready http://127.0.0.1:18703
  for _ in $(seq 1 150); do
    [ "$(grep -c '"partitions assigned"' "$DIR/processor-$n.log")" -ge 2 ] && break
    sleep 0.2
  done
  local i0 p0; i0=$(cpu_s $ip); p0=$(cpu_s $pp)
  $LG send --rate "$RATE" --duration "$SECONDS_" --connections 256 --target 127.0.0.1:18703 \
    --verify --brokers $B --activations-topic "$act" >"$DIR/$n.json" || true
  echo "$(python3 -c "print($(cpu_s $ip) - $i0, $(cpu_s $pp) - $p0)")" >"$DIR/$n.cpu"
  kill "$ip" "$pp"; wait "$ip" "$pp" 2>/dev/null || true
  kill -INT "$sp"; wait "$sp" 2>/dev/null || true
  wc -c <"$DIR/ingest-$n.log" >"$DIR/$n.logbytes"
  # Each run's sled state and receipt log take ~200 MB: keep only the numbers.
  rm -rf "$DIR/state-$n" "$DIR/ingest-$n.log"
}

for r in $(seq 1 "$ROUNDS"); do
  for mode in off log 1pct 100pct; do
    say "round $r/$ROUNDS: $mode, ${RATE}/s for ${SECONDS_} s"
    run "$mode" "$r"
  done
done

python3 - "$DIR" "$ROUNDS" "$RATE" "$SECONDS_" <<'PY'
import json, os, statistics, sys, datetime
d, rounds, rate, secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
med = statistics.median
def load(mode):
    out = []
    for r in range(1, rounds + 1):
        n = f"{mode}-{r}"
        o = json.load(open(os.path.join(d, n + ".json")))
        icpu, pcpu = map(float, open(os.path.join(d, n + ".cpu")).read().split())
        sink = json.loads(open(os.path.join(d, n + ".sink")).read() or "{}")
        logmb = int(open(os.path.join(d, n + ".logbytes")).read()) / 2**20
        v = o.get("verify", {})
        out.append(dict(ack_p50=o["latency_ms"]["p50"], ack_p99=o["latency_ms"]["p99"], e2e_p99=v.get("e2e_ms", {}).get("p99", float("nan")),
                        non2xx=o["non_2xx"], sent=o["sent"], passed=bool(v.get("passed")), icpu=icpu, pcpu=pcpu,
                        spans=sink.get("spans", 0), logmb=logmb))
    return out
modes = [("off", "off (no export, receipt line off)"), ("log", "receipt line on, no export (default)"),
         ("1pct", "receipt line + spans at 1%"), ("100pct", "receipt line + every span")]
runs = {m: load(m) for m, _ in modes}
base = {k: med(x[k] for x in runs["off"]) for k in ("ack_p99", "icpu", "pcpu")}
print(f"\nobservability cost, {datetime.date.today()}, {os.cpu_count()} cores; {rate}/s × {secs} s, 4 partitions, processor running, verified; medians of {rounds} alternating rounds; `infra/bench-tracing.sh`\n")
print("| mode | ack p50 / p99 (ms) | end-to-end p99 (ms) | ingest CPU s (× off) | processor CPU s (× off) | spans exported | ingest log | non-2xx, exactly-once |")
print("|---|---|---|---|---|---|---|---|")
for m, label in modes:
    x = runs[m]
    g = lambda k: med(r[k] for r in x)
    print(f"| {label} | {g('ack_p50'):.1f} / {g('ack_p99'):.1f} | {g('e2e_p99'):.0f} | {g('icpu'):.1f} ({g('icpu')/base['icpu']:.2f}) | {g('pcpu'):.1f} ({g('pcpu')/base['pcpu']:.2f}) | {g('spans'):,.0f} | {g('logmb'):.1f} MB | {sum(r['non2xx'] for r in x)}, {'PASS' if all(r['passed'] for r in x) else 'FAIL'} |")
PY
