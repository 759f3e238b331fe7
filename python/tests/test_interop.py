"""A Python client and a Rust peer (the `prism` CLI) on one mesh: each sees the other's
registrations, status changes and departures, and `kill -9` of a Python process expires
its instance at the Rust peer."""

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import fast_config, prism_bin, until
from prism_mesh import ServiceDiscoveryClient, ServiceStatus

pytestmark = pytest.mark.asyncio


async def test_a_python_client_and_a_rust_peer_see_each_other(nats_url, spawn):
    client = ServiceDiscoveryClient(fast_config(nats_url))
    await client.initialize()  # (the first peer makes the mesh's bucket and stream)
    watch = spawn([prism_bin(), "watch", "--json", "--url", nats_url])
    await asyncio.sleep(1)  # the watch has loaded its (empty) view
    gone = []
    client.add_event_handler("service_deregistered", lambda instance: gone.append(instance))

    me = await client.register_myself("pysvc", "127.0.0.1", 9001, metadata={"lang": "python"})
    seen = await asyncio.to_thread(
        watch.expect, lambda l: isinstance(l, dict) and l.get("event") == "registered"
        and l.get("service") == "pysvc", "the Python registration at the Rust peer")
    assert seen["id"] == me.instance_id
    await client.update_my_status(ServiceStatus.UNHEALTHY)
    status = await asyncio.to_thread(
        watch.expect, lambda l: isinstance(l, dict) and l.get("event") == "status"
        and l.get("service") == "pysvc", "the Python status change at the Rust peer")
    assert status["status"] == "unhealthy"

    rust = spawn([prism_bin(), "register", "--service", "rustsvc", "--port", "9100",
                  "--url", nats_url, "--ttl", "2s", "--heartbeat", "500ms"])
    await until(lambda: len(client.discover_now("rustsvc")) == 1, "saw the Rust instance")
    found = client.discover_now("rustsvc")[0]
    assert (found.port, found.status) == (9100, ServiceStatus.HEALTHY)
    rust.process.send_signal(signal.SIGTERM)
    await until(lambda: any(i.service_name == "rustsvc" for i in gone),
                "saw the Rust instance deregister")
    assert client.discover_now("rustsvc") == []

    await client.deregister_myself()
    await asyncio.to_thread(
        watch.expect, lambda l: isinstance(l, dict) and l.get("event") == "deregistered"
        and l.get("service") == "pysvc", "the Python deregistration at the Rust peer")
    await client.shutdown()


CHILD = """
import asyncio, sys
from prism_mesh import ServiceDiscoveryClient
async def main():
    client = ServiceDiscoveryClient({"backend": "nats", "backend_config": {"url": sys.argv[1]},
                                     "instance_ttl": 2, "heartbeat_interval": 0.5})
    await client.initialize()
    me = await client.register_myself("doomed", "127.0.0.1", 9002)
    print(me.instance_id, flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_kill_9_of_a_python_process_expires_its_instance_at_the_rust_peer(nats_url, spawn):
    child = spawn([sys.executable, "-c", CHILD, nats_url])
    instance_id = await asyncio.to_thread(child.expect, lambda l: isinstance(l, str) and len(l) == 36,
                                          "the child's instance id")
    watch = spawn([prism_bin(), "watch", "doomed", "--json", "--url", nats_url])
    await asyncio.to_thread(watch.expect, lambda l: isinstance(l, dict) and l.get("id") == instance_id,
                            "the child's instance at the Rust peer")
    # Heartbeats keep it well past its TTL while the process lives.
    await asyncio.sleep(3)
    os.kill(child.process.pid, signal.SIGKILL)
    killed = time.time()
    expired = await asyncio.to_thread(
        watch.expect, lambda l: isinstance(l, dict) and l.get("event") == "expired", "the expiry", 15)
    assert expired["id"] == instance_id
    assert time.time() - killed < 6, "expired within the 2 s TTL and some slack"
