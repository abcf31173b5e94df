#!/usr/bin/env bash
# Runs every fuzz target (tests/fuzz, cargo-fuzz + libFuzzer) for
# FUZZ_SECONDS each (default 60), starting from the committed seed corpus
# (tests/fuzz/corpus/<target>). A crash fails the run and leaves its input in
# tests/fuzz/artifacts/<target>/: fix the bug, then add the input to the corpus so it
# stays a regression case. New inputs the fuzzer finds go to a scratch corpus, not to
# the committed one.
#
#   infra/fuzz.sh                 # every target, 60 s each
#   FUZZ_SECONDS=600 infra/fuzz.sh fold
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(verify extract avro fold)
SCRATCH=${FUZZ_SCRATCH:-$(mktemp -d)}

if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi

# cargo-fuzz passes nightly-only flags to rustc (-Zsanitizer, coverage options): a nightly
# toolchain when one is installed, else the stable one, which takes them with
# RUSTC_BOOTSTRAP=1 (no nightly needed on a fresh machine). FUZZ_TOOLCHAIN=stable forces
# the latter.
TOOLCHAIN=+${FUZZ_TOOLCHAIN:-}
if [ "$TOOLCHAIN" = + ]; then
  if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then TOOLCHAIN=+nightly; else TOOLCHAIN=+stable; fi
fi
if [ "$TOOLCHAIN" != +nightly ]; then export RUSTC_BOOTSTRAP=1; fi
echo "==> fuzzing with $TOOLCHAIN toolchain${RUSTC_BOOTSTRAP:+ (RUSTC_BOOTSTRAP=1)}"

# The fuzz crate is its own workspace with its own target directory.
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-$PWD/tests/fuzz/target}
cargo "$TOOLCHAIN" fuzz build --fuzz-dir tests/fuzz
# The fuzz crate is a workspace of its own: its lock file is committed and must be
# current, or every machine resolves its dependencies afresh and the run leaves the
# tree changed.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1 && ! git diff --quiet -- tests/fuzz/Cargo.lock; then
  echo "tests/fuzz/Cargo.lock changed in the build: it is stale; commit the new one" >&2
  exit 1
fi
for t in "${TARGETS[@]}"; do
  echo "==> fuzz $t for ${SECONDS_EACH} s"
  mkdir -p "tests/fuzz/corpus/$t" "$SCRATCH/$t"
  cargo "$TOOLCHAIN" fuzz run --fuzz-dir tests/fuzz "$t" "$SCRATCH/$t" "tests/fuzz/corpus/$t" -- \
    -max_total_time="$SECONDS_EACH" -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
done
