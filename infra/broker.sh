#!/usr/bin/env bash
# The local Kafka-protocol broker for hookstream: tansu 0.6.0 on loopback.
#
#   infra/broker.sh install          build tansu into the tool cache if it is missing (~11 min once)
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
#   BROKER_PORT       loopback port                        (default 9092)
#   HOOKSTREAM_STATE  pid file, log and sqlite database    (default <repo>/.hookstream)
#   RAW_PARTITIONS / ACTIVATIONS_PARTITIONS / DLQ_PARTITIONS  partition counts (12 / 12 / 3)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOOLS=${HOOKSTREAM_TOOLS:-$HOME/.cache/hookstream/tools}
TANSU=$TOOLS/bin/tansu
TANSU_VERSION=0.6.0
PORT=${BROKER_PORT:-9092}
STATE=${HOOKSTREAM_STATE:-$REPO/.hookstream}
PIDFILE=$STATE/broker-$PORT.pid
LOG=$STATE/broker-$PORT.log
URL=tcp://127.0.0.1:$PORT
# 30 days: the raw topic is the source of truth, its retention must cover the dedup
# window (7 days) plus the replay horizon (DESIGN.md, "Topics").
RETENTION_MS=$((30 * 24 * 3600 * 1000))

say() { echo "broker: $*" >&2; }

installed() { [ -x "$TANSU" ] && "$TANSU" --version 2>/dev/null | grep -q "$TANSU_VERSION"; }

install() {
  if installed; then return 0; fi
  mkdir -p "$TOOLS"
  # One build at a time, even when several runs start together.
  exec 9>"$TOOLS/.install.lock"
  flock 9
  if installed; then return 0; fi
  say "installing tansu $TANSU_VERSION into $TOOLS (about 11 minutes on 2 cores, once)"
  cargo install "tansu@$TANSU_VERSION" --locked --features dynostore,libsql --root "$TOOLS"
  installed || { say "tansu install finished but $TANSU --version is not $TANSU_VERSION"; exit 1; }
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

running() { [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; }

start() {
  local storage="memory://tansu/"
  # tansu reads the sqlite URL's path relative to its working directory, so it runs
  # in $STATE with a relative file name.
  if [ "${1:-}" = "--sqlite" ]; then storage="sqlite://tansu-$PORT.db"; fi
  installed || { say "tansu is not installed: run infra/broker.sh install"; exit 1; }
  if running; then say "already running on $URL (pid $(cat "$PIDFILE"))"; return 0; fi
  if port_open; then say "port $PORT is taken by another process; set BROKER_PORT"; exit 1; fi
  mkdir -p "$STATE"
  say "starting tansu on $URL with $storage (log: $LOG)"
  # A session of its own: ctrl-c in the terminal that started it must not stop the
  # broker before the services that still need it (infra/run.sh stops them first).
  (cd "$STATE" && exec setsid nohup "$TANSU" broker --listener-url "$URL" --advertised-listener-url "$URL" \
    --storage-engine "$storage") >"$LOG" 2>&1 &
  echo $! >"$PIDFILE"
  for _ in $(seq 1 100); do
    if port_open; then say "ready"; return 0; fi
    running || { say "tansu exited; last lines of $LOG:"; tail -20 "$LOG" >&2; exit 1; }
    sleep 0.1
  done
  say "tansu did not open $URL within 10 s"; exit 1
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

create_topic() { # name partitions
  if "$TANSU" topic list --broker "$URL" 2>/dev/null | grep -qF -- "\"name\":\"$1\""; then
    say "topic $1 exists"; return 0
  fi
  "$TANSU" topic create "$1" --broker "$URL" --partitions "$2" --config "retention.ms=$RETENTION_MS" >/dev/null
  say "created topic $1 ($2 partitions)"
}

topics() {
  port_open || { say "no broker on $URL: run infra/broker.sh start"; exit 1; }
  # 12 raw partitions: enough processor parallelism for a spike on a few machines.
  create_topic payments.webhooks.raw "${RAW_PARTITIONS:-12}"
  create_topic policy.activations "${ACTIVATIONS_PARTITIONS:-12}"
  create_topic payments.webhooks.dlq "${DLQ_PARTITIONS:-3}"
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
