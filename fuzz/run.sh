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
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
  # libFuzzer reads -max_total_time=0 as "no limit": refuse it rather than run forever.
  echo "fuzz/run.sh: seconds must be a whole number above zero, not '$seconds'" >&2
  exit 2
fi
CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
  cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzzing needs the nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi

# Optimised, with debug assertions and overflow checks (-a) like the test builds.
cargo +nightly fuzz build -O -a
targets="$(cargo +nightly fuzz list)"
[ -n "$targets" ] || { echo "fuzz/run.sh: cargo fuzz lists no targets" >&2; exit 1; }
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
for target in $targets; do
  echo "fuzzing $target for ${seconds}s" >&2
  # Inputs up to 64 KiB: longer ones slow every run (the 1 MiB seeds run in the unit test).
  if cargo +nightly fuzz run -O -a "$target" -- -max_total_time="$seconds" \
      -max_len=65536 -rss_limit_mb=4096 >"$log" 2>&1; then
    grep -E "^Done|DONE" "$log" >&2 || true
  else
    tail -n 60 "$log" >&2
    echo "fuzz target $target failed: its input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
