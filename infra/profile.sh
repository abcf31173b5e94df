#!/usr/bin/env bash
# Where a backlog drain's time goes (tests/README.md, "Profile"): the processor drains
# pre-loaded events, exactly once, under `perf record` on the software clock, and the
# script prints
# - the wall time: start → first decision (the group join and restore) and first → last
#   decision, with the processor's and the broker's CPU-seconds in the drain, so the
#   share of the 2 cores that waited shows;
# - the processor's CPU per event, by component (Avro, JSON, sled, librdkafka, the
#   allocators, tokio, the kernel, ...): perf's samples folded by their symbols.
#
#   infra/profile.sh      (env: PROFILE_EVENTS=200000 PROFILE_PARTITIONS=4 PROFILE_PORT=19700
#                          PROFILE_PERF=1; 0: the same drain without perf, for its overhead)
#
# Needs perf (Debian's linux-perf) and the release build (built here).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mapfile -t ALLOCATOR < <(grep -v '^#' infra/allocator.env | grep .)

EVENTS=${PROFILE_EVENTS:-200000}
PARTS=${PROFILE_PARTITIONS:-4}
PORT=${PROFILE_PORT:-19700}
PERF=${PROFILE_PERF:-1}
B=127.0.0.1:$PORT
DIR=.hookstream/profile
rm -rf "$DIR" && mkdir -p "$DIR"
export HOOKSTREAM_STATE=$DIR BROKER_PORT=$PORT KAFKA_BROKERS=$B
say() { printf '==> %s\n' "$*" >&2; }
cleanup() { [ -n "${perf_pid:-}" ] && kill "$perf_pid" 2>/dev/null; infra/broker.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT
# CPU-seconds (user + system) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{print ($14 + $15) / hz}' "/proc/$1/stat"; }
metric_sum() { curl -fsS "$1/metrics" 2>/dev/null | awk -v m="$2" -v f="${3:-}" 'index($0, m) == 1 && index($0, f) > 0 {s += $NF} END {printf "%d", s}'; }
now() { date +%s.%N; }

say "build (release)"
cargo build --release --locked -q -p hookstream-processor -p hookstream-tests --bins
LG=target/release/loadgen
say "broker on $B, $EVENTS events on $PARTS partitions"
infra/broker.sh install >/dev/null
infra/broker.sh start --fresh >/dev/null
broker_pid=$(cat "$DIR/kafka-$PORT/pid")
$LG topic create profile.raw --partitions "$PARTS" >/dev/null
$LG topic create profile.activations --partitions 3 >/dev/null
$LG topic create profile.dlq --partitions 3 >/dev/null
$LG produce --brokers $B --topic profile.raw --events "$EVENTS" --in-flight 20000 >"$DIR/preload.json"

cat >"$DIR/processor.toml" <<TOML
admin_listen = "127.0.0.1:18792"
state_dir = "$DIR/state"
[kafka]
brokers = "$B"
group_id = "profile"
raw_topic = "profile.raw"
activations_topic = "profile.activations"
dlq_topic = "profile.dlq"
TOML

say "drain (perf record: $PERF)"
RECORD=()
[ "$PERF" = 1 ] && RECORD=(perf record -e cpu-clock -F 999 -o "$DIR/perf.data" --)
env "${ALLOCATOR[@]}" "${RECORD[@]}" target/release/processor run --config "$DIR/processor.toml" >"$DIR/processor.log" 2>&1 &
perf_pid=$!
u=http://127.0.0.1:18792 rec=hookstream_processor_records_total
for _ in $(seq 1 300); do curl -fsS "$u/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
started=$(now)
pid=$perf_pid
[ "$PERF" = 1 ] && pid=$(pgrep -P "$perf_pid" -f 'processor run')
t0="" n=0
while :; do
  n=$(metric_sum $u $rec 'stage="payments"')
  m=$(metric_sum $u $rec 'stage="policies"')
  r=$(metric_sum $u hookstream_processor_policy_requests_total)
  if [ -z "$t0" ] && [ "$n" -gt 0 ]; then
    t0=$(now) p0=$(cpu_s "$pid") b0=$(cpu_s "$broker_pid")
  fi
  if [ "$n" -ge "$EVENTS" ] && [ "$m" -ge "$r" ]; then break; fi
  sleep 0.1
done
t1=$(now) p1=$(cpu_s "$pid") b1=$(cpu_s "$broker_pid")
kill -INT "$pid"
wait "$perf_pid" 2>/dev/null || true
perf_pid=""

if [ "$PERF" = 1 ]; then
  perf report -i "$DIR/perf.data" --no-children --sort dso,sym --stdio 2>/dev/null >"$DIR/report.txt"
else
  : >"$DIR/report.txt"
fi
python3 infra/profile_fold.py "$DIR/report.txt" "$EVENTS" "$PARTS" "$started" "$t0" "$t1" "$p0" "$p1" "$b0" "$b1"
