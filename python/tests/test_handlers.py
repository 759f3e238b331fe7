"""Event handlers: once per change, in the seed's shapes, plain or async; a handler that
raises is logged and the others still run."""

import asyncio
import logging

import pytest

from conftest import fast_config, until
from prism_mesh import PrismError, ServiceDiscoveryClient, ServiceInstance, ServiceStatus

pytestmark = pytest.mark.asyncio


async def test_handlers_fire_once_per_change_with_the_seeds_shapes(nats_url, caplog):
    watcher = ServiceDiscoveryClient(fast_config(nats_url))
    await watcher.initialize()
    calls = {kind: [] for kind in ("registered", "status", "deregistered", "expired")}

    async def on_registered(instance):
        calls["registered"].append(instance)

    def on_status(data):  # a plain function works too
        calls["status"].append(data)

    def broken(data):
        raise RuntimeError("a handler's own bug")

    watcher.add_event_handler("service_registered", on_registered)
    watcher.add_event_handler("service_status_changed", broken)
    watcher.add_event_handler("service_status_changed", on_status)
    watcher.add_event_handler("service_deregistered", lambda i: calls["deregistered"].append(i))
    watcher.add_event_handler("service_expired", lambda i: calls["expired"].append(i))
    with pytest.raises(PrismError):
        watcher.add_event_handler("service_exploded", on_status)

    owner = ServiceDiscoveryClient(fast_config(nats_url))
    await owner.initialize()
    me = await owner.register_myself("orders", "127.0.0.1", 8080, metadata={"weight": 5})
    await owner.update_my_status(ServiceStatus.HEALTHY)
    await owner.update_my_status(ServiceStatus.MAINTENANCE)
    await until(lambda: len(calls["status"]) == 2, "saw two status changes")

    assert len(calls["registered"]) == 1
    registered = calls["registered"][0]
    assert isinstance(registered, ServiceInstance)
    assert (registered.service_name, registered.instance_id, registered.weight) == ("orders", me.instance_id, 5)
    first, second = calls["status"]
    assert set(first) >= {"service_name", "instance_id", "old_status", "new_status"}
    assert (first["service_name"], first["instance_id"]) == ("orders", me.instance_id)
    assert (first["old_status"], first["new_status"]) == (ServiceStatus.STARTING, ServiceStatus.HEALTHY)
    assert (second["old_status"], second["new_status"]) == (ServiceStatus.HEALTHY, ServiceStatus.MAINTENANCE)
    assert "a handler's own bug" in caplog.text, "the failing handler was logged"

    await owner.deregister_myself()
    await until(lambda: len(calls["deregistered"]) == 1, "saw the deregistration")
    assert calls["deregistered"][0].instance_id == me.instance_id

    # An owner that stops heartbeating (its process gone): expired, once.
    doomed = await owner.registry.register_service("doomed", "127.0.0.1", 9000)
    await until(lambda: len(calls["registered"]) == 2, "saw the second registration")
    await owner._require().shutdown_without_deregistering()
    await until(lambda: len(calls["expired"]) == 1, "saw the expiry")
    assert calls["expired"][0].instance_id == doomed.instance_id
    await asyncio.sleep(0.5)
    assert [len(v) for v in calls.values()] == [2, 2, 1, 1], "each change once"
    await watcher.shutdown()


async def test_python_logging_receives_the_librarys_log_lines(nats_url, caplog):
    caplog.set_level(logging.INFO)
    client = ServiceDiscoveryClient(fast_config(nats_url))
    await client.initialize()
    await client.shutdown()
    assert any(r.name.startswith("prism_mesh") for r in caplog.records), [r.name for r in caplog.records]
