#!/usr/bin/env bash
# The local Kafka-protocol broker for hookstream: nisshi 0.8.1 (tansu's successor) on loopback.
#
#   infra/broker.sh install          build nisshi into the tool cache if it is missing (~10 min once)
#   infra/broker.sh start [--sqlite] start it (memory storage; --sqlite keeps data across restarts)
#   infra/broker.sh topics           create hookstream's topics if they do not exist
#   infra/broker.sh up [--sqlite]    install + start + topics
#   infra/broker.sh stop             stop it
#   infra/broker.sh status           say whether it runs
#
# Every command is idempotent: running it twice is harmless.
#
# Environment (all optional):
#   HOOKSTREAM_TOOLS  tool cache, outside the repository   (default $HOME/.cache/hookstream/tools)
#   HOOKSTREAM_BROKER_BIN  another broker binary with the same command line (e.g. tansu)
#   BROKER_PORT       loopback port                        (default 9092)
#   HOOKSTREAM_STATE  pid file, log and sqlite database    (default <repo>/.hookstream)
#   RAW_PARTITIONS / ACTIVATIONS_PARTITIONS / DLQ_PARTITIONS  partition counts (12 / 12 / 3)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${HOOKSTREAM_TOOLS:-$HOME/.cache/hookstream/tools}
# HOOKSTREAM_BROKER_BIN runs another binary with the same command line instead (e.g.
# tansu 0.6.0, for a side-by-side comparison); install then only checks it exists.
BROKER=${HOOKSTREAM_BROKER_BIN:-$TOOLS/bin/nisshi}
BROKER_VERSION=0.8.1
# nisshi 0.8.1 needs rustc >= 1.96.
MIN_RUSTC_MINOR=96
PORT=${BROKER_PORT:-9092}
STATE=${HOOKSTREAM_STATE:-$REPO/.hookstream}
PIDFILE=$STATE/broker-$PORT.pid
LOG=$STATE/broker-$PORT.log
URL=tcp://127.0.0.1:$PORT

say() { echo "broker: $*" >&2; }

installed() {
  if [ -n "${HOOKSTREAM_BROKER_BIN:-}" ]; then [ -x "$BROKER" ]; return; fi
  [ -x "$BROKER" ] && "$BROKER" --version 2>/dev/null | grep -q "$BROKER_VERSION"
}

# The installed toolchain with the newest rustc that is new enough: stable when it is,
# else a nightly (or any other installed toolchain). Prints its name, or nothing.
toolchain() {
  local best="" best_minor=0 tc minor
  for tc in stable $(rustup toolchain list 2>/dev/null | awk '{print $1}'); do
    minor=$(rustc "+$tc" --version 2>/dev/null | sed -n 's/^rustc 1\.\([0-9]*\)\..*/\1/p')
    [ -n "$minor" ] || continue
    if [ "$minor" -ge "$MIN_RUSTC_MINOR" ] && [ "$minor" -gt "$best_minor" ]; then best=$tc best_minor=$minor; fi
  done
  echo "$best"
}

install() {
  if installed; then return 0; fi
  mkdir -p "$TOOLS"
  # One build at a time, even when several runs start together.
  exec 9>"$TOOLS/.install.lock"
  flock 9
  if installed; then return 0; fi
  local tc; tc=$(toolchain)
  if [ -z "$tc" ]; then
    say "nisshi $BROKER_VERSION needs rustc >= 1.$MIN_RUSTC_MINOR and no installed toolchain has it"
    say "(installed: $(rustup toolchain list 2>/dev/null | tr '\n' ' ')); install one, e.g. rustup toolchain install nightly"
    exit 1
  fi
  say "installing nisshi $BROKER_VERSION into $TOOLS with toolchain $tc (about 10 minutes on 2 cores, once)"
  # Only the storage engines hookstream uses: memory (dynostore) and sqlite (libsql).
  cargo "+$tc" install "nisshi@$BROKER_VERSION" --locked --no-default-features --features dynostore,libsql \
    --root "$TOOLS"
  installed || { say "nisshi install finished but $BROKER --version is not $BROKER_VERSION"; exit 1; }
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  local storage="memory://nisshi/"
  # The broker reads the sqlite URL's path relative to its working directory, so it
  # runs in $STATE with a relative file name.
  if [ "${1:-}" = "--sqlite" ]; then storage="sqlite://nisshi-$PORT.db"; fi
  installed || { say "nisshi is not installed: run infra/broker.sh install"; exit 1; }
  if running; then say "already running on $URL (pid $(cat "$PIDFILE"))"; return 0; fi
  if port_open; then say "port $PORT is taken by another process; set BROKER_PORT"; exit 1; fi
  mkdir -p "$STATE"
  say "starting nisshi on $URL with $storage (log: $LOG)"
  # A session of its own: ctrl-c in the terminal that started it must not stop the
  # broker before the services that still need it (infra/run.sh stops them first).
  (cd "$STATE" && exec setsid nohup "$BROKER" broker --listener-url "$URL" --advertised-listener-url "$URL" \
    --storage-engine "$storage") >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if port_open; then say "ready"; return 0; fi
    running || { say "nisshi exited; last lines of $LOG:"; tail -20 "$LOG" >&2; exit 1; }
    sleep 0.1
  done
  say "nisshi did not open $URL within 10 s"; exit 1
}

stop() {
  if ! running; then rm -f "$PIDFILE"; say "not running"; return 0; fi
  local pid; pid=$(cat "$PIDFILE")
  kill "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$PIDFILE"
  say "stopped"
}

topics() {
  port_open || { say "no broker on $URL: run infra/broker.sh start"; exit 1; }
  # Every topic, public and internal, as `processor topics apply` plans it from
  # infra/config/processor.toml's [topics] (one replica on this one-broker cluster; 12
  # raw partitions, enough processor parallelism for a spike on a few machines). It
  # creates what is missing and fails on a topic that exists with other settings.
  # The release binary run.sh and bench.sh build; built here when missing.
  local bin=$REPO/target/release/processor report
  [ -x "$bin" ] || cargo build --release --locked -q -p hookstream-processor --bin processor
  report=$(KAFKA_BROKERS=127.0.0.1:$PORT \
    PROCESSOR_TOPICS_RAW_PARTITIONS=${RAW_PARTITIONS:-12} \
    PROCESSOR_TOPICS_ACTIVATIONS_PARTITIONS=${ACTIVATIONS_PARTITIONS:-12} \
    PROCESSOR_TOPICS_DLQ_PARTITIONS=${DLQ_PARTITIONS:-3} \
    "$bin" --config "$REPO/infra/config/processor.toml" topics apply 2>/dev/null) || { echo "$report"; say "topics are not as planned"; exit 1; }
  echo "$report" | python3 -c 'import json, sys
for t in json.load(sys.stdin): print("broker: topic %s: %s" % (t["name"], t["status"]), file=sys.stderr)'
}

case "${1:-}" in
  install) install ;;
  start) start "${2:-}" ;;
  stop) stop ;;
  topics) topics ;;
  up) install; start "${2:-}"; topics ;;
  status) if running; then say "running on $URL (pid $(cat "$PIDFILE"))"; else say "not running"; exit 1; fi ;;
  *) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
