#!/usr/bin/env bash
# Runs every `cargo run --example` program of prism-mesh against a fresh local nats-server
# (JetStream, temp store dir, free port). Each example asserts what it demonstrates and
# exits non-zero when it does not hold. tests/run.sh calls this.
set -euo pipefail
cd "$(dirname "$0")/.."

bin="${NATS_SERVER_BIN:-$(nats/install-nats-server.sh)}"
cargo build -p prism-mesh --examples --all-features

store="$(mktemp -d)"
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$bin" -js -a 127.0.0.1 -p "$port" -sd "$store/js" >"$store/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$store"' EXIT
for _ in $(seq 1 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

export NATS_URL="nats://127.0.0.1:$port"
for example in basic api_gateway data_collector event_handlers tower_balance scoped_peer; do
  echo "== example $example against $NATS_URL" >&2
  if ! timeout 120 "${CARGO_TARGET_DIR:-target}/debug/examples/$example"; then
    echo "example $example failed; server log:" >&2
    tail -n 20 "$store/server.log" >&2
    exit 1
  fi
done
echo "all examples passed" >&2
