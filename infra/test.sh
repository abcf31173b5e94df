#!/usr/bin/env bash
# The README's test command: installs what is missing, then runs every check and test.
#
#   infra/test.sh [all]       everything below (CI runs this)
#   infra/test.sh quick       no broker: fmt, clippy, the crates' unit and property
#                             tests, the production files, the golden samples (minutes)
#   infra/test.sh integration the broker-backed tests (tests/tests), with the broker and
#                             Prometheus installed
#
# - Apache Kafka's jars (the local broker) from Maven Central into
#   $HOME/.cache/hookstream/kafka-<version>, once (infra/broker.sh install; needs java 17+ and mvn);
# - fastavro (an independent Avro implementation) into $HOME/.cache/hookstream/venv, once;
# - the validators of the production files (infra/validate.sh) into
#   $HOME/.cache/hookstream/venv-infra, once;
# - Debian's prometheus package (server and promtool), once, for the rule checks and
#   the test that runs a real Prometheus (infra/prometheus.sh);
# - cargo fmt --check, clippy -D warnings, every cargo test (integration tests start
#   their own Kafka, one node or three, on free loopback ports), and the fastavro check of
#   the golden samples;
# - every fuzz target for 60 s (infra/fuzz.sh; cargo-fuzz installed when missing; a nightly
#   toolchain when one is installed, else stable with RUSTC_BOOTSTRAP=1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TIER=${1:-all}
case "$TIER" in
  quick | integration | all) ;;
  *) echo "usage: infra/test.sh [quick|integration|all]" >&2; exit 2 ;;
esac
# Whether this run's tier includes a step of tiers "$@" (every step is in `all`).
in_tier() { [ "$TIER" = all ] || [[ " $* " == *" $TIER "* ]]; }

CACHE=${HOOKSTREAM_CACHE:-$HOME/.cache/hookstream}
VENV=$CACHE/venv

# Each step prints the minutes and seconds since the start, so a run shows what each took.
step() { printf '\n==> [%dm%02ds] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

if in_tier integration; then
  step "broker: Apache Kafka (infra/broker.sh install)"
  infra/broker.sh install
fi

if in_tier quick; then
  step "independent Avro decoder: fastavro"
  if ! "$VENV/bin/python" -c 'import fastavro' 2>/dev/null; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'fastavro==1.13.1'
  fi

  step "production files: yamllint, kubernetes-validate, checkov (infra/validate.sh)"
  infra/validate.sh
fi

if in_tier integration; then
  step "Prometheus: promtool check and the alert rules' unit tests (infra/prometheus.sh check)"
  infra/prometheus.sh check
fi

if in_tier quick; then
  step "cargo fmt --check"
  cargo fmt --all -- --check

  step "cargo clippy -D warnings"
  cargo clippy --workspace --all-targets --locked -- -D warnings
fi

case "$TIER" in
  quick)
    step "cargo test: the crates' own tests"
    cargo test --workspace --locked --lib --bins
    ;;
  integration)
    step "cargo test: the broker-backed tests (tests/tests)"
    cargo test --workspace --locked --test '*'
    ;;
  all)
    step "cargo test"
    cargo test --workspace --locked
    ;;
esac

if in_tier quick; then
  step "golden samples decode with fastavro"
  "$VENV/bin/python" schemas/check_golden.py
fi

if in_tier; then
  step "fuzzing: every target ${FUZZ_SECONDS:-60} s from the committed corpus (infra/fuzz.sh)"
  infra/fuzz.sh
fi

step "done"
