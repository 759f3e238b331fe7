"""prism_mesh from Python: discover() per call, register round trips beside the same
registrations made from Rust in this process, and handlers receiving 10,000 events/s
(plus a slow handler, to show drops are reported and memory stays bounded).

    NATS_SERVER_BIN=... python python/bench/bench.py   [--quick]
"""

import asyncio
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from prism_mesh import ServiceDiscoveryClient

QUICK = "--quick" in sys.argv


def start_nats():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    binary = os.environ.get("NATS_SERVER_BIN") or shutil.which("nats-server")
    if not binary:
        sys.exit("nats-server is required (NATS_SERVER_BIN)")
    store = tempfile.mkdtemp()
    process = subprocess.Popen([binary, "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.02)
    return process, f"nats://127.0.0.1:{port}"


def rss_mib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def main():
    server, url = start_nats()
    config = {"backend": "nats", "backend_config": {"url": url}}
    try:
        watcher = ServiceDiscoveryClient(config)
        await watcher.initialize()
        owner = ServiceDiscoveryClient(config)
        await owner.initialize()

        # discover(): three instances in the view.
        for port in (8001, 8002, 8003):
            await owner.registry.register_service("catalog", "127.0.0.1", port)
        while len(watcher.discover_now("catalog")) < 3:
            await asyncio.sleep(0.01)
        calls = 20_000 if QUICK else 200_000
        began = time.perf_counter()
        for _ in range(calls):
            watcher.discover_now("catalog")
        per_call = (time.perf_counter() - began) / calls * 1e6
        began = time.perf_counter()
        for _ in range(calls):
            await watcher.discover("catalog")
        per_await = (time.perf_counter() - began) / calls * 1e6

        # Register round trips, Python and Rust alternating in rounds.
        rounds, per_round = (2, 50) if QUICK else (5, 200)
        python_times, rust_times = [], []
        for r in range(rounds):
            for n in range(per_round):
                began = time.perf_counter()
                await owner.registry.register_service("bench-python", "127.0.0.1", 10000 + n)
                python_times.append(time.perf_counter() - began)
            rust_times += await owner._require()._bench_rust_registrations(per_round)
        py_p50, rust_p50 = statistics.median(python_times), statistics.median(rust_times)

        # What any call from asyncio into a threaded runtime costs here: a native async call
        # that does nothing, beside Python's own thread-pool round trip.
        loop = asyncio.get_running_loop()
        bridge, executor = [], []
        for _ in range(2000):
            began = time.perf_counter()
            await owner._require()._bench_noop()
            bridge.append(time.perf_counter() - began)
            began = time.perf_counter()
            await loop.run_in_executor(None, lambda: None)
            executor.append(time.perf_counter() - began)
        bridge_p50, executor_p50 = statistics.median(bridge), statistics.median(executor)

        # Handlers at 10,000 events/s.
        churn_owner = ServiceDiscoveryClient(config)
        await churn_owner.initialize()
        for port in range(20):
            await churn_owner.registry.register_service("churn", "127.0.0.1", 7000 + port)
        received = 0

        def on_status(data):
            nonlocal received
            received += 1

        watcher.add_event_handler("service_status_changed", on_status)
        await asyncio.sleep(0.5)
        count = 10_000 if QUICK else 50_000
        rss_before = rss_mib()
        elapsed = await churn_owner._require()._bench_status_churn(count, 10_000.0)
        deadline = time.time() + 30
        while received < count and time.time() < deadline:
            await asyncio.sleep(0.05)
        rss_after = rss_mib()
        handled = received
        dropped = watcher.events_dropped
        kept_up = handled == count and dropped == 0
        watcher.remove_event_handler("service_status_changed", on_status)

        # A slow handler (1 ms each) at the same rate: drops are reported, memory bounded.
        slow = ServiceDiscoveryClient(config)
        await slow.initialize()
        slow_seen = 0

        async def on_status_slowly(data):
            nonlocal slow_seen
            slow_seen += 1
            time.sleep(0.001)

        slow.add_event_handler("service_status_changed", on_status_slowly)
        await asyncio.sleep(0.5)
        slow_rss_before = rss_mib()
        # Two and a half queues' worth: more than a 1 ms handler can take in time.
        slow_count = 25_000
        await churn_owner._require()._bench_status_churn(slow_count, 10_000.0)
        await asyncio.sleep(1)
        slow_rss_after = rss_mib()

        print()
        print("| figure | Python | Rust | ratio |")
        print("|---|---|---|---|")
        print(f"| discover() of 3 instances, per call (no await / awaited) | {per_call:.2f} µs / {per_await:.2f} µs | - | - |")
        print(f"| register round trip, p50 of {len(python_times)} (rounds alternating) | "
              f"{py_p50 * 1e3:.3f} ms | {rust_p50 * 1e3:.3f} ms | {py_p50 / rust_p50:.2f}x |")
        print(f"| an async call doing nothing, p50 (Python: loop.run_in_executor) | "
              f"{executor_p50 * 1e6:.0f} µs | {bridge_p50 * 1e6:.0f} µs (native no-op) | - |")
        print(f"| handlers at 10,000 events/s: {count} status changes sent in {elapsed:.2f} s | "
              f"{handled} handled, {dropped} dropped, RSS {rss_before:.0f} -> {rss_after:.0f} MiB | - | kept up: {kept_up} |")
        print(f"| a handler taking 1 ms, {slow_count} changes at the same rate | {slow_seen} handled, {slow.events_dropped} dropped "
              f"(reported), RSS {slow_rss_before:.0f} -> {slow_rss_after:.0f} MiB | - | - |")
        for client in (watcher, owner, churn_owner, slow):
            await client.shutdown()
    finally:
        server.kill()


asyncio.run(main())
