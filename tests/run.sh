#!/usr/bin/env bash
# Runs every check and test of prism-mesh (fmt, clippy -D warnings, nextest, doctests,
# the examples)
# against real nats-server processes, installing a pinned nats-server first when the one
# on PATH is missing or too old. .ci/run calls exactly this.
#   PRISM_CHURN=100000 tests/run.sh   # the full-size churn test (default 2000)
#   PRISM_FUZZ_SECONDS=60 tests/run.sh # then every cargo fuzz target for 60 s (fuzz/run.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_BIN="$(nats/install-nats-server.sh)"
export NATS_SERVER_BIN
# The audit bench measures `prism` processes with GNU time.
if [ ! -x /usr/bin/time ]; then
  echo "installing GNU time (/usr/bin/time) for the audit bench" >&2
  apt-get update -qq && apt-get install -y -qq time >/dev/null || {
    echo "/usr/bin/time is missing and could not be installed: apt-get install time" >&2
    exit 1
  }
fi

# `prism serve` is tested through programs no one here wrote: curl, dig, Prometheus,
# headless Chromium, and Python's py-consul in a virtual environment.
missing=()
command -v curl >/dev/null || missing+=(curl)
command -v dig >/dev/null || missing+=(dnsutils)
command -v prometheus >/dev/null || missing+=(prometheus)
command -v chromium >/dev/null || missing+=(chromium)
python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} for the prism serve tests" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } || {
    echo "could not install ${missing[*]}: apt-get install ${missing[*]}" >&2
    exit 1
  }
fi
PY_VENV="${CARGO_TARGET_DIR:-target}/py-consul"
if [ ! -x "$PY_VENV/bin/python" ] || ! "$PY_VENV/bin/python" -c "import consul" 2>/dev/null; then
  echo "installing py-consul into $PY_VENV for the prism serve tests" >&2
  python3 -m venv "$PY_VENV" && "$PY_VENV/bin/pip" install -q "py-consul>=1.5" || {
    echo "could not install py-consul: python3 -m venv $PY_VENV && $PY_VENV/bin/pip install py-consul" >&2
    exit 1
  }
fi
PRISM_PYTHON="$(cd "$PY_VENV" && pwd)/bin/python"
export PRISM_PYTHON

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
cargo build --workspace --all-targets --all-features
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast
else
  echo "cargo-nextest not found; using cargo test" >&2
  cargo test --workspace --all-features --lib --bins --tests
fi
cargo test --workspace --all-features --doc
tests/run-examples.sh
# The Python package: built with maturin into a virtual environment (the dev build, sharing
# this target directory), then its pytest suite against real nats-servers and the CLI.
TARGET_ABS="$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)"
PY_PKG_VENV="$TARGET_ABS/py-prism"
if [ ! -x "$PY_PKG_VENV/bin/python" ]; then
  python3 -m venv "$PY_PKG_VENV"
fi
"$PY_PKG_VENV/bin/pip" install -q "maturin>=1.5,<2" "pytest>=7" "pytest-asyncio>=0.23" "pyyaml>=6" || {
  echo "could not install maturin and pytest into $PY_PKG_VENV: pip install maturin pytest pytest-asyncio pyyaml" >&2
  exit 1
}
(cd python && VIRTUAL_ENV="$PY_PKG_VENV" "$PY_PKG_VENV/bin/maturin" develop --quiet)
PRISM_BIN="$TARGET_ABS/debug/prism" "$PY_PKG_VENV/bin/python" -m pytest -q python/tests
"$PY_PKG_VENV/bin/python" python/bench/bench.py --quick
# Every benchmark once with tiny counts, in the dev build made above: a bench that panics
# fails the build. Figures come from `cargo bench` (docs/benchmarks.md), not from this.
PRISM_BENCH_SAMPLES=20 PRISM_BENCH_REGISTRATIONS=300 PRISM_BENCH_COLD=300 \
  PRISM_BENCH_COLD_ROUNDS=1 PRISM_BENCH_EXPIRY_TTLS=1 PRISM_BENCH_FAILOVER_CHANGES=2 \
  PRISM_BENCH_FAILOVER_TAIL_SECS=1 \
  cargo bench --profile dev -p prism-benches --bench mesh_vs_raw
PRISM_PICKS=2000 PRISM_PICK_SERVICES=10 cargo bench --profile dev -p prism-benches --bench picks
PRISM_SCALE_SERVICES=10 PRISM_SCALE_PER_SERVICE=20 PRISM_SCALE_RATE=200 PRISM_SCALE_SECS=1 \
  cargo bench --profile dev -p prism-benches --bench scale
PRISM_SHARDS_STEPS=100 PRISM_SHARDS_HOLD_SECS=1 cargo bench --profile dev -p prism-benches --bench shards
PRISM_VIEW_SERVICES=5 PRISM_VIEW_PER_SERVICE=20 cargo bench --profile dev -p prism-benches --bench view_memory
PRISM_SERVE_INSTANCES=200 PRISM_SERVE_REQUESTS=200 PRISM_SERVE_EVENTS=20 \
  cargo bench --profile dev -p prism-benches --bench serve
PRISM_BENCH_EVENTS=3000 PRISM_BENCH_LIVE=200 PRISM_BIN="${CARGO_TARGET_DIR:-target}/debug/prism" \
  cargo bench --profile dev -p prism-benches --bench audit
if [ -n "${PRISM_FUZZ_SECONDS:-}" ]; then
  fuzz/run.sh "$PRISM_FUZZ_SECONDS"
fi
