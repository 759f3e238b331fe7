"""prism-mesh for Python: MarketPrism's service discovery client API over the Rust mesh.

The API is the one MarketPrism's ``core.service_discovery`` module documents::

    from prism_mesh import ServiceDiscoveryClient, ServiceStatus

    client = ServiceDiscoveryClient({"backend": "nats",
                                     "backend_config": {"url": "nats://127.0.0.1:4222"}})
    await client.initialize()
    me = await client.register_myself("my-service", "10.0.0.5", 8080, metadata={"version": "1"})
    url = await client.get_service_url("data-collector")   # None when there is none
    await client.update_my_status(ServiceStatus.HEALTHY)
    await client.shutdown()

Underneath is the Rust library: the registry lives in NATS JetStream (one key per instance,
expiring on the server when its owner stops heartbeating), every process keeps a live view
in memory, and reads (``discover``, ``get_service``) never touch the network. Python
processes and Rust services see each other: it is one mesh.
"""

import asyncio
import inspect
import json
import logging
from enum import Enum
from typing import Any, Awaitable, Callable, Dict, List, Optional, Union

from . import _native
from ._native import PrismError, ServiceInstance

__all__ = [
    "PrismError",
    "ServiceDiscoveryClient",
    "ServiceInstance",
    "ServiceRegistry",
    "ServiceStatus",
    "discover_service",
    "get_service_url",
    "register_service",
]

logger = logging.getLogger("prism_mesh")

EVENT_TYPES = (
    "service_registered",
    "service_deregistered",
    "service_status_changed",
    "service_updated",
    "service_expired",
)

# How far handlers may fall behind (about a second of events at 10,000/s) before events
# are dropped, counted (`events_dropped`) and logged, instead of buffered without bound.
EVENT_QUEUE = 10_000


class ServiceStatus(Enum):
    """An instance's lifecycle status."""

    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"
    UNKNOWN = "unknown"
    STARTING = "starting"
    STOPPING = "stopping"
    MAINTENANCE = "maintenance"


_native._set_status_enum(ServiceStatus)


def _resolve(future: "asyncio.Future", ok: bool, value: Any) -> None:
    """Settles a native call's future on its loop, unless its awaiter gave up."""
    if future.cancelled():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


_native._set_resolver(_resolve)


class _ServiceMap(dict):
    """``list_all_services()``'s dict, which may also be awaited (the seed's was async)."""

    def __await__(self):
        if False:  # pragma: no cover - makes this a generator
            yield
        return self


class ServiceRegistry:
    """``client.registry``: registers instances other than this process itself."""

    def __init__(self, client: "ServiceDiscoveryClient"):
        self._client = client

    async def register_service(
        self,
        service_name: str,
        host: str,
        port: int,
        instance_id: Optional[str] = None,
        metadata: Optional[Dict[str, Any]] = None,
        tags: Optional[List[str]] = None,
        version: str = "1.0.0",
    ) -> ServiceInstance:
        """Registers an instance; ``metadata["weight"]`` sets its load-balancing weight."""
        native = self._client._require()
        metadata = dict(metadata or {})
        metadata.setdefault("version", version)
        return await native.register_service(
            service_name, host, port, json.dumps(metadata), list(tags or []), instance_id
        )

    def list_all_services(self) -> Dict[str, List[ServiceInstance]]:
        return self._client.list_all_services()


class ServiceDiscoveryClient:
    """MarketPrism's discovery client, backed by the Rust mesh.

    ``config`` takes the keys of the ``service_discovery`` section of
    ``config/service_discovery.yaml``: ``backend`` (``memory`` or ``nats``),
    ``backend_config`` (flat ``url``, ``username``, ``password``, ``token``, TLS, or nested
    under ``nats``), ``health_check_interval``, ``instance_ttl``, ``heartbeat_interval``,
    ``cleanup_interval``, ``auto_register`` with a ``service`` section, ``auto_deregister``,
    ``load_balancing``... Unknown keys and bad values raise ``PrismError`` naming them.
    """

    def __init__(self, config: Optional[Dict[str, Any]] = None):
        self.config: Dict[str, Any] = dict(config or {"backend": "memory"})
        self._native: Optional[Any] = None
        self._handlers: Dict[str, List[Callable[[Any], Any]]] = {t: [] for t in EVENT_TYPES}
        self._pump_task: Optional[asyncio.Task] = None
        self._pump: Optional[Any] = None
        self.my_instance: Optional[ServiceInstance] = None
        self.registry = ServiceRegistry(self)

    @classmethod
    def from_yaml(cls, path: str) -> "ServiceDiscoveryClient":
        """A client configured by a ``service_discovery`` YAML file (PyYAML needed)."""
        import yaml  # only for this constructor

        with open(path, encoding="utf-8") as file:
            document = yaml.safe_load(file) or {}
        if "service_discovery" not in document:
            raise PrismError(f"{path}: no `service_discovery` section at the top level")
        return cls(document["service_discovery"])

    def _require(self):
        if self._native is None:
            raise PrismError("the client is not initialized: await client.initialize() first")
        return self._native

    async def initialize(self) -> None:
        """Connects to the mesh and loads its view."""
        if self._native is not None:
            return
        self._native = await _native.connect(json.dumps(self.config))
        if any(self._handlers.values()):
            self._start_pump()

    async def register_myself(
        self,
        service_name: str,
        host: str,
        port: int,
        metadata: Optional[Dict[str, Any]] = None,
        tags: Optional[List[str]] = None,
    ) -> ServiceInstance:
        """Registers this process; its key is heartbeated until it leaves."""
        native = self._require()
        self.my_instance = await native.register_myself(
            service_name, host, port, json.dumps(dict(metadata or {})), list(tags or [])
        )
        return self.my_instance

    async def discover(self, service_name: str) -> List[ServiceInstance]:
        """Every instance of ``service_name``, any status, from memory."""
        return self._require().discover(service_name)

    def discover_now(self, service_name: str) -> List[ServiceInstance]:
        """``discover`` without the coroutine (the view is in memory)."""
        return self._require().discover(service_name)

    async def get_service(self, service_name: str) -> Optional[ServiceInstance]:
        """One healthy instance, weighted round robin (weights from ``metadata["weight"]``)."""
        return self._require().get_service(service_name)

    async def get_service_url(self, service_name: str) -> Optional[str]:
        instance = self._require().get_service(service_name)
        return instance.base_url if instance is not None else None

    async def update_my_status(self, status: Union[ServiceStatus, str]) -> ServiceInstance:
        value = status.value if isinstance(status, ServiceStatus) else str(status)
        self.my_instance = await self._require().update_my_status(value)
        return self.my_instance

    async def deregister_myself(self) -> None:
        await self._require().deregister_myself()
        self.my_instance = None

    async def health_check_service(self, service_name: str, instance_id: str) -> bool:
        """Runs the instance's health check now (HTTP GET of its health URL)."""
        return await self._require().health_check_service(service_name, instance_id)

    def list_all_services(self) -> Dict[str, List[ServiceInstance]]:
        """Every service with its instances (may be awaited, as the seed's was)."""
        native = self._require()
        return _ServiceMap({name: native.discover(name) for name in native.service_names()})

    def get_metrics(self) -> str:
        """The mesh's metrics, Prometheus text."""
        return self._require().metrics()

    def add_event_handler(self, event_type: str, handler: Callable[[Any], Any]) -> None:
        """Calls ``handler`` (plain or async) on each event of ``event_type``:
        ``service_registered``, ``service_deregistered``, ``service_expired`` (with the
        instance), ``service_status_changed`` (a dict: ``service_name``, ``instance_id``,
        ``old_status``, ``new_status``, ``reason``, ``instance``), ``service_updated`` (a
        dict: ``service_name``, ``instance_id``, ``previous``, ``instance``, ``reason``).
        A handler that raises is logged; the others still run."""
        if event_type not in self._handlers:
            raise PrismError(
                f"unknown event type {event_type!r} (expected one of {', '.join(EVENT_TYPES)})"
            )
        self._handlers[event_type].append(handler)
        if self._native is not None and self._pump_task is None:
            self._start_pump()

    def remove_event_handler(self, event_type: str, handler: Callable[[Any], Any]) -> None:
        if handler in self._handlers.get(event_type, []):
            self._handlers[event_type].remove(handler)

    @property
    def events_dropped(self) -> int:
        """Events dropped because handlers fell more than the queue behind."""
        return self._pump.dropped if self._pump is not None else 0

    def _start_pump(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # started by initialize(), inside the loop
        self._pump = self._native.events(EVENT_QUEUE)
        self._pump_task = loop.create_task(self._run_pump(self._pump))

    async def _run_pump(self, pump) -> None:
        while True:
            batch = await pump.next_batch(1024)
            if not batch:
                return
            for kind, instance, previous, old, new, reason in batch:
                handlers = self._handlers.get(kind)
                if not handlers:
                    continue
                if kind == "service_status_changed":
                    data = {
                        "service_name": instance.service_name,
                        "instance_id": instance.instance_id,
                        "old_status": old,
                        "new_status": new,
                        "reason": reason,
                        "instance": instance,
                    }
                elif kind == "service_updated":
                    data = {
                        "service_name": instance.service_name,
                        "instance_id": instance.instance_id,
                        "previous": previous,
                        "instance": instance,
                        "reason": reason,
                    }
                else:
                    data = instance
                for handler in list(handlers):
                    try:
                        result = handler(data)
                        if inspect.isawaitable(result):
                            await result
                    except Exception:  # a handler's failure is its own
                        logger.exception("event handler for %s failed", kind)

    async def shutdown(self) -> None:
        """Leaves the mesh: maintenance, drain, deregistration (``auto_deregister``)."""
        if self._native is None:
            return
        native, self._native = self._native, None
        await native.shutdown()
        if self._pump_task is not None:
            self._pump_task.cancel()
            try:
                await self._pump_task
            except (asyncio.CancelledError, Exception):
                pass
            self._pump_task = None


_default_client: Optional[ServiceDiscoveryClient] = None


async def _default(config: Optional[Dict[str, Any]] = None) -> ServiceDiscoveryClient:
    global _default_client
    if _default_client is None:
        _default_client = ServiceDiscoveryClient(config)
        await _default_client.initialize()
    return _default_client


async def register_service(
    service_name: str,
    host: str,
    port: int,
    metadata: Optional[Dict[str, Any]] = None,
    tags: Optional[List[str]] = None,
    config: Optional[Dict[str, Any]] = None,
) -> ServiceInstance:
    """Registers this process through a process-wide client made from ``config`` once."""
    client = await _default(config)
    return await client.register_myself(service_name, host, port, metadata, tags)


async def discover_service(service_name: str) -> List[ServiceInstance]:
    """Instances of ``service_name`` through the process-wide client."""
    return await (await _default()).discover(service_name)


async def get_service_url(service_name: str) -> Optional[str]:
    """A balanced URL of ``service_name`` through the process-wide client, or None."""
    return await (await _default()).get_service_url(service_name)
