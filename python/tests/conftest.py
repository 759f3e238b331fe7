"""Real servers for the tests: a nats-server per test on a free port with a temporary
store (``NATS_SERVER_BIN`` or ``nats-server`` on PATH), and the ``prism`` CLI
(``PRISM_BIN``) as the Rust peer."""

import asyncio
import json
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import queue

import pytest

# The library's log lines reach Python's logging from INFO up (pyo3-log caches each
# logger's level when it first logs, so this is set before any test runs).
logging.getLogger("prism_mesh").setLevel(logging.INFO)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nats_server_bin() -> str:
    path = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
    if not path:
        pytest.fail("nats-server >= 2.11 is required: nats/install-nats-server.sh prints its path "
                    "(set NATS_SERVER_BIN); tests/run.sh does this")
    return path


@pytest.fixture
def nats_url():
    port = free_port()
    store = tempfile.mkdtemp(prefix="prism-py-js-")
    process = subprocess.Popen(
        [nats_server_bin(), "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("nats-server did not start")
            time.sleep(0.02)
    yield f"nats://127.0.0.1:{port}"
    process.kill()
    process.wait()
    shutil.rmtree(store, ignore_errors=True)


def fast_config(url: str) -> dict:
    """A NATS client whose instances expire 2 s after their owner stops heartbeating."""
    return {"backend": "nats", "backend_config": {"url": url},
            "instance_ttl": 2, "heartbeat_interval": 0.5}


async def until(predicate, what, timeout=15.0):
    """Waits until ``predicate()`` holds, or fails naming ``what``."""
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"never {what}"
        await asyncio.sleep(0.02)


def prism_bin() -> str:
    path = os.environ.get("PRISM_BIN") or shutil.which("prism")
    if not path:
        pytest.fail("the prism CLI is required: cargo build -p prism-cli, then PRISM_BIN=target/debug/prism "
                    "(tests/run.sh does this)")
    return path


class Lines:
    """A child process whose stdout lines (JSON where they parse) are read on a thread."""

    def __init__(self, args, **kwargs):
        self.process = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.PIPE,
                                        text=True, **kwargs)
        self.lines = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.process.stdout:
            try:
                self.lines.put(json.loads(line))
            except ValueError:
                self.lines.put(line.rstrip("\n"))

    def expect(self, predicate, what, timeout=15.0):
        deadline = time.time() + timeout
        seen = []
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.time()))
            except queue.Empty:
                break
            seen.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"never saw {what}; saw {seen}")

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


@pytest.fixture
def spawn():
    started = []

    def start(args, **kwargs):
        child = Lines(args, **kwargs)
        started.append(child)
        return child

    yield start
    for child in started:
        child.stop()
