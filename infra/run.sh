#!/usr/bin/env bash
# The README's run command: the whole pipeline on this machine.
#
# Starts the local broker (installing it if missing) and creates the topics, builds and
# starts processor and ingest with the shipped configs and demo secrets, sends a few
# signed demo payments (a duplicate and an out-of-order pair among them), and shows the
# resulting policy activations as the example downstream consumer reads them.
# ctrl-c stops everything it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# The services run with the allocator settings of infra/allocator.env, as in production.
mapfile -t ALLOCATOR < <(grep -v '^#' infra/allocator.env | grep .)
SERVICE_ENV=(env "${ALLOCATOR[@]}")

STATE=.hookstream
mkdir -p "$STATE"
export KAFKA_BROKERS=${KAFKA_BROKERS:-127.0.0.1:9092}
# Demo secrets: never use these outside this demo.
export PAYMENTHUB_WEBHOOK_SECRET=${PAYMENTHUB_WEBHOOK_SECRET:-demo-paymenthub-secret}
export STANDARD_WEBHOOK_SECRET=${STANDARD_WEBHOOK_SECRET:-whsec_ZGVtby1zdGFuZGFyZC13ZWJob29rcy1zZWNyZXQ=}
export STRIPE_WEBHOOK_SECRET=${STRIPE_WEBHOOK_SECRET:-whsec_demo_stripe_secret}
export GITHUB_WEBHOOK_SECRET=${GITHUB_WEBHOOK_SECRET:-demo-github-secret}

# Every service runs in a session of its own (setsid), so ctrl-c reaches only this
# script: it stops the consumer, ingest and the processor first (each gets SIGTERM and
# up to 20 s, the processor's grace period being 15 s), and the broker last, leaving no
# process behind.
pids=()
cleanup() {
  # Nothing may interrupt the stopping: not a second ctrl-c, nor a closed terminal or
  # pipe (with `infra/run.sh | tee`, ctrl-c ends tee first, and an echo to it would end
  # this script before it stopped anything).
  trap '' INT TERM HUP PIPE
  set +e
  { echo; echo "==> stopping"; } 2>/dev/null
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    p=${pids[$i]}
    kill -TERM "$p" 2>/dev/null || continue
    for _ in $(seq 1 200); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
  done
  wait 2>/dev/null
  if [ "${started_broker:-0}" = 1 ]; then infra/broker.sh stop >/dev/null 2>&1; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

echo "==> broker"
started_broker=0
if ! infra/broker.sh status 2>/dev/null; then
  infra/broker.sh install
  infra/broker.sh start
  started_broker=1
fi

echo "==> build (release)"
cargo build --release --locked -q -p hookstream-ingest -p hookstream-processor -p hookstream-tests --bins
cargo build --release --locked -q -p hookstream-processor --example activations

echo "==> topics"
infra/broker.sh topics

wait_ready() { # url name
  for _ in $(seq 1 100); do
    if curl -fsS "$1" >/dev/null 2>&1; then echo "    $2 ready"; return 0; fi
    sleep 0.2
  done
  echo "$2 did not become ready at $1; see $STATE/$2.log" >&2; exit 1
}

echo "==> processor (infra/config/processor.toml; admin on 127.0.0.1:9090; log $STATE/processor.log)"
setsid "${SERVICE_ENV[@]}" target/release/processor run --config infra/config/processor.toml >"$STATE/processor.log" 2>&1 &
pids+=($!)
wait_ready http://127.0.0.1:9090/readyz processor

echo "==> ingest (infra/config/ingest.toml; on 127.0.0.1:8080; log $STATE/ingest.log)"
setsid "${SERVICE_ENV[@]}" target/release/ingest --config infra/config/ingest.toml >"$STATE/ingest.log" 2>&1 &
pids+=($!)
wait_ready http://127.0.0.1:8080/readyz ingest

echo "==> demo payments"
target/release/demo --ingest 127.0.0.1:8080

echo
echo "==> policy activations (example downstream consumer: processor/examples/activations.rs); ctrl-c to stop"
echo "    try: curl -s 127.0.0.1:9090/payments/pay_demo_2 | python3 -m json.tool"
setsid target/release/examples/activations --brokers "$KAFKA_BROKERS" --group "demo-$$" --from beginning &
pids+=($!)
wait
