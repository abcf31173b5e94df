#!/usr/bin/env bash
# The local broker for hookstream: Apache Kafka (KRaft, combined broker + controller nodes)
# on loopback, run from Maven Central's jars.
#
#   infra/broker.sh install            resolve Kafka's jars into the cache if missing (infra/kafka/pom.xml)
#   infra/broker.sh start [--fresh]    start one node on 127.0.0.1:$BROKER_PORT (--fresh: wipe its data first)
#   infra/broker.sh topics             create hookstream's topics if they do not exist
#   infra/broker.sh up [--fresh]       install + start + topics
#   infra/broker.sh stop               stop the node
#   infra/broker.sh status             say whether it runs
#   infra/broker.sh cluster up|stop|status          three nodes (replication 3, min.insync.replicas 2)
#   infra/broker.sh cluster kill-node N|start-node N  SIGKILL node N (1-3) / start it again
#
# Every command is idempotent: running it twice is harmless. Data lives on disk in
# $HOOKSTREAM_STATE, so a stopped node starts again with its log.
#
# Environment (all optional):
#   HOOKSTREAM_CACHE  where Kafka's jars go, outside the repository (default $HOME/.cache/hookstream)
#   BROKER_PORT       the single node's port; its controller listens on the next one (default 9092)
#   CLUSTER_PORT      the cluster's first port: node N on CLUSTER_PORT+2(N-1), its controller +1 (default 9192)
#   HOOKSTREAM_STATE  data, logs and pid files                  (default <repo>/.hookstream)
#   KAFKA_HEAP_OPTS   the JVM heap                              (default -Xms1g -Xmx1g, see kafka_java)
#   RAW_PARTITIONS / ACTIVATIONS_PARTITIONS / DLQ_PARTITIONS  partition counts (12 / 12 / 3)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KAFKA_DIR=$REPO/infra/kafka
# The one version, pinned in infra/kafka/pom.xml (which says why this one).
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$KAFKA_DIR/pom.xml")
CACHE=${HOOKSTREAM_CACHE:-$HOME/.cache/hookstream}
LIBS=$CACHE/kafka-$KAFKA_VERSION/libs
PORT=${BROKER_PORT:-9092}
CLUSTER_PORT=${CLUSTER_PORT:-9192}
STATE=${HOOKSTREAM_STATE:-$REPO/.hookstream}

say() { echo "broker: $*" >&2; }

require_tools() {
  command -v java >/dev/null || { say "java (17 or newer) is missing: install a JDK 17+, e.g. apt-get install openjdk-17-jre-headless"; exit 1; }
  local v; v=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ "${v:-0}" -ge 17 ] || { say "java $v is too old: Kafka $KAFKA_VERSION needs Java 17 or newer (apt-get install openjdk-17-jre-headless)"; exit 1; }
  command -v mvn >/dev/null || { say "mvn is missing: install Maven, e.g. apt-get install maven"; exit 1; }
}

installed() { [ -f "$LIBS/.complete" ]; }

install() {
  if installed; then return 0; fi
  require_tools
  mkdir -p "$CACHE"
  # One resolution at a time, even when several runs start together.
  exec 9>"$CACHE/.kafka-install.lock"
  flock 9
  if installed; then return 0; fi
  say "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS"
  rm -rf "$LIBS"
  mvn -B -Dstyle.color=never -f "$KAFKA_DIR/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$LIBS" >"$CACHE/kafka-install.log" 2>&1 ||
    { tail -30 "$CACHE/kafka-install.log" >&2; say "mvn failed (whole log: $CACHE/kafka-install.log)"; exit 1; }
  ls "$LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null
  touch "$LIBS/.complete"
}

# The JVM command line of a node (into JAVA_CMD). Heap 1 GiB (Kafka's own default in kafka-server-start.sh): Kafka keeps
# records in the page cache, not the heap, and a local node's heap stays well under it; on
# 24 GiB shared with the services three nodes take 3 GiB. G1 with a 20 ms pause goal, as
# kafka-run-class.sh sets it, so a collection does not show in ack latencies; its thread
# counts follow the 2 cores by themselves.
kafka_java() {
  local heap
  read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}"
  JAVA_CMD=(java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
    -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.yaml" -cp "$LIBS/*" "$@")
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# node_start NAME NODE_ID PORT VOTERS REPLICATION MIN_ISR [--fresh]
node_start() {
  local name=$1 id=$2 port=$3 voters=$4 rf=$5 isr=$6 fresh=${7:-}
  local dir=$STATE/$name pidfile=$STATE/$name/pid log=$STATE/$name/kafka.log
  installed || { say "Kafka is not installed: run infra/broker.sh install"; exit 1; }
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    say "$name already running on 127.0.0.1:$port (pid $(cat "$pidfile"))"; return 0
  fi
  if port_open "$port"; then say "port $port is taken by another process; set BROKER_PORT or CLUSTER_PORT"; exit 1; fi
  [ "$fresh" = --fresh ] && rm -rf "$dir"
  mkdir -p "$dir"
  sed -e "s|@NODE_ID@|$id|; s|@VOTERS@|$voters|; s|@PORT@|$port|; s|@CONTROLLER_PORT@|$((port + 1))|" \
    -e "s|@LOG_DIR@|$dir/data|; s|@REPLICATION@|$rf|; s|@MIN_ISR@|$isr|" \
    "$KAFKA_DIR/broker.properties" "$KAFKA_DIR/local.properties" >"$dir/server.properties"
  if [ ! -f "$dir/data/meta.properties" ]; then
    # Every node of a cluster is formatted with the same cluster id.
    local cid_file=$STATE/${name%-node*}.cluster-id
    [ -f "$cid_file" ] || python3 -c 'import base64, uuid; print("A" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode()[1:22])' >"$cid_file"
    kafka_java kafka.tools.StorageTool format --cluster-id="$(cat "$cid_file")" -c "$dir/server.properties"
    "${JAVA_CMD[@]}" >"$dir/format.log" 2>&1 ||
      { say "formatting $dir failed:"; tail -20 "$dir/format.log" >&2; exit 1; }
  fi
  say "starting $name (Kafka $KAFKA_VERSION) on 127.0.0.1:$port (log: $log)"
  # A session of its own: ctrl-c in the terminal that started it must not stop the
  # broker before the services that still need it (infra/run.sh stops them first).
  kafka_java kafka.Kafka "$dir/server.properties"
  setsid nohup "${JAVA_CMD[@]}" </dev/null >"$log" 2>&1 &
  echo $! >"$pidfile"
}

# node_wait NAME PORT: until the node's broker listener accepts connections (60 s at most).
node_wait() {
  local name=$1 port=$2 pidfile=$STATE/$1/pid
  for _ in $(seq 1 600); do
    if port_open "$port"; then say "$name ready"; return 0; fi
    kill -0 "$(cat "$pidfile")" 2>/dev/null || { say "$name exited; last lines of $STATE/$name/kafka.log:"; tail -20 "$STATE/$name/kafka.log" >&2; exit 1; }
    sleep 0.1
  done
  say "$name did not open 127.0.0.1:$port within 60 s"; exit 1
}

# node_stop NAME SIGNAL
node_stop() {
  local pidfile=$STATE/$1/pid pid
  if ! { [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then rm -f "$pidfile"; say "$1 not running"; return 0; fi
  pid=$(cat "$pidfile")
  kill "-$2" "$pid"
  # A controlled shutdown moves leadership away first: up to 30 s.
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
  say "$1 stopped ($2)"
}

node_running() { [ -f "$STATE/$1/pid" ] && kill -0 "$(cat "$STATE/$1/pid")" 2>/dev/null; }

# topics BOOTSTRAP REPLICATION MIN_ISR
topics() {
  local bootstrap=$1 rf=$2 isr=$3 report
  port_open "${bootstrap##*:}" || { say "no broker on $bootstrap: run infra/broker.sh start"; exit 1; }
  # Every topic, public and internal, as `processor topics apply` plans it from
  # infra/config/processor.toml's [topics] (12 raw partitions, enough processor
  # parallelism for a spike on a few machines). It creates what is missing and fails on a
  # topic that exists with other settings. The release binary run.sh and bench.sh build;
  # built here when missing.
  local bin=$REPO/target/release/processor
  [ -x "$bin" ] || cargo build --release --locked -q -p hookstream-processor --bin processor
  report=$(KAFKA_BROKERS=$bootstrap \
    PROCESSOR_TOPICS_REPLICATION_FACTOR=$rf PROCESSOR_TOPICS_MIN_INSYNC_REPLICAS=$isr \
    PROCESSOR_TOPICS_RAW_PARTITIONS=${RAW_PARTITIONS:-12} \
    PROCESSOR_TOPICS_ACTIVATIONS_PARTITIONS=${ACTIVATIONS_PARTITIONS:-12} \
    PROCESSOR_TOPICS_DLQ_PARTITIONS=${DLQ_PARTITIONS:-3} \
    "$bin" --config "$REPO/infra/config/processor.toml" topics apply 2>/dev/null) || { echo "$report"; say "topics are not as planned"; exit 1; }
  echo "$report" | python3 -c 'import json, sys
for t in json.load(sys.stdin): print("broker: topic %s: %s" % (t["name"], t["status"]), file=sys.stderr)'
}

single() { node_start "kafka-$PORT" 1 "$PORT" "1@127.0.0.1:$((PORT + 1))" 1 1 "${1:-}"; node_wait "kafka-$PORT" "$PORT"; }

cluster_port() { echo $((CLUSTER_PORT + 2 * ($1 - 1))); }
cluster_voters() { local n v=""; for n in 1 2 3; do v="$v${v:+,}$n@127.0.0.1:$(($(cluster_port "$n") + 1))"; done; echo "$v"; }
cluster_bootstrap() { local n b=""; for n in 1 2 3; do b="$b${b:+,}127.0.0.1:$(cluster_port "$n")"; done; echo "$b"; }
cluster_node_start() { node_start "cluster-node$1" "$1" "$(cluster_port "$1")" "$(cluster_voters)" 3 2 "${2:-}"; }
check_node() { case "${1:-}" in 1 | 2 | 3) ;; *) say "name a node: 1, 2 or 3"; exit 2 ;; esac; }

cluster() {
  case "${1:-}" in
    up)
      install
      # The three controllers must see each other to elect a leader: start all, then wait.
      for n in 1 2 3; do cluster_node_start "$n" "${2:-}"; done
      for n in 1 2 3; do node_wait "cluster-node$n" "$(cluster_port "$n")"; done
      topics "$(cluster_bootstrap)" 3 2
      say "cluster bootstrap: $(cluster_bootstrap)" ;;
    stop) for n in 1 2 3; do node_stop "cluster-node$n" TERM; done ;;
    kill-node) check_node "${2:-}"; node_stop "cluster-node$2" KILL ;;
    start-node) check_node "${2:-}"; cluster_node_start "$2"; node_wait "cluster-node$2" "$(cluster_port "$2")" ;;
    status)
      local n rc=0
      for n in 1 2 3; do
        if node_running "cluster-node$n"; then say "node $n running on 127.0.0.1:$(cluster_port "$n")"; else say "node $n not running"; rc=1; fi
      done
      return $rc ;;
    *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  esac
}

case "${1:-}" in
  install) install ;;
  start) single "${2:-}" ;;
  stop) node_stop "kafka-$PORT" TERM ;;
  topics) topics "127.0.0.1:$PORT" 1 1 ;;
  up) install; single "${2:-}"; topics "127.0.0.1:$PORT" 1 1 ;;
  status) if node_running "kafka-$PORT"; then say "running on 127.0.0.1:$PORT (pid $(cat "$STATE/kafka-$PORT/pid"))"; else say "not running"; exit 1; fi ;;
  cluster) shift; cluster "$@" ;;
  *) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
