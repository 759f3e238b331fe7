#!/usr/bin/env bash
# Runs every cargo fuzz target for SECONDS seconds each (default 60), from the seeds in
# corpus/, installing the pinned cargo-fuzz when it is missing. Needs the nightly toolchain.
#   fuzz/run.sh 300                      # five minutes per target
#   PRISM_FUZZ_SECONDS=60 tests/run.sh   # the whole suite, then this
# Exits non-zero, naming the target, on the first input that fails; the input is left in
# fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"

seconds="${1:-60}"
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzzing needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi

cargo +nightly fuzz build -O
for target in $(cargo +nightly fuzz list); do
  echo "fuzzing $target for ${seconds}s" >&2
  if ! cargo +nightly fuzz run -O "$target" -- -max_total_time="$seconds" -rss_limit_mb=4096 \
      2> >(grep -E "DONE|ERROR|panicked|SUMMARY|Test unit" >&2); then
    echo "fuzz target $target failed: see fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
