#!/usr/bin/env bash
# Prometheus for hookstream: Debian's `prometheus` package (the server and promtool).
#
#   infra/prometheus.sh install   apt-get install prometheus when promtool is missing
#   infra/prometheus.sh check     install, then promtool check config + rules, the rules'
#                                 unit tests (infra/prometheus/tests)
#   infra/prometheus.sh run       a local Prometheus scraping `infra/run.sh`'s ingest and
#                                 processor, on $PROMETHEUS_LISTEN (default 127.0.0.1:9095:
#                                 the processor's admin port is Prometheus' usual 9090)
#
# The test command (infra/test.sh) runs `check`; tests/tests/prometheus.rs starts the
# server itself against a live pipeline.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

HERE=infra/prometheus
STATE=${HOOKSTREAM_STATE:-$PWD/.hookstream}

install() {
  if command -v promtool >/dev/null && command -v prometheus >/dev/null; then return; fi
  echo "installing Debian's prometheus (server and promtool)"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  # The package's service is not wanted (and cannot start without systemd): the tests and
  # `run` start the server themselves.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  command -v promtool >/dev/null || { echo "promtool still missing after apt-get install" >&2; exit 1; }
}

check() {
  install
  promtool --version | head -1
  promtool check config "$HERE/prometheus.yml"
  promtool check rules "$HERE"/rules/*.yml
  (cd "$HERE/tests" && promtool test rules ./*.yml)
}

run() {
  install
  mkdir -p "$STATE/prometheus"
  exec prometheus --config.file="$HERE/prometheus.yml" \
    --storage.tsdb.path="$STATE/prometheus" \
    --web.listen-address="${PROMETHEUS_LISTEN:-127.0.0.1:9095}"
}

case "${1:-}" in
  install) install ;;
  check) check ;;
  run) run ;;
  *) sed -n '2,12p' "$0"; exit 2 ;;
esac
