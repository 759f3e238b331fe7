"""The seed README's samples (MarketPrism's core/service_discovery/README.md), each as a
test: unchanged except the import line, the server url, and (for samples written for the
Consul backend, which prism-mesh does not offer) the backend; prints kept as they were."""

import asyncio
import signal

import pytest

from prism_mesh import (PrismError, ServiceDiscoveryClient, ServiceStatus,
                        discover_service, get_service_url, register_service)

pytestmark = pytest.mark.asyncio


async def test_basic_usage():  # 1. 基础使用
    config = {
        'backend': 'memory',  # 或 consul, etcd, nats, redis
        'health_check_interval': 30,
        'instance_ttl': 300
    }

    client = ServiceDiscoveryClient(config)
    await client.initialize()

    instance = await client.register_myself(
        service_name="my-service",
        host="localhost",
        port=8080,
        metadata={"version": "1.0.0"},
        tags=["api", "web"]
    )

    instances = await client.discover("api-gateway-service")
    for inst in instances:
        print(f"发现服务: {inst.base_url}")

    url = await client.get_service_url("data-collector")
    if url:
        print(f"数据采集服务: {url}")

    await client.update_my_status(ServiceStatus.HEALTHY)

    await client.shutdown()

    assert instance.service_name == "my-service"
    assert instance.base_url == "http://localhost:8080"
    assert instance.metadata == {"version": "1.0.0"}
    assert instance.tags == ["api", "web"]
    assert instances == [] and url is None


async def test_convenience_functions():  # 2. 便捷函数
    instance = await register_service(
        service_name="my-service",
        host="localhost",
        port=8080,
        config={'backend': 'memory'}
    )

    instances = await discover_service("api-gateway-service")

    url = await get_service_url("data-collector")

    assert instance.port == 8080
    assert instances == [] and url is None
    assert [i.instance_id for i in await discover_service("my-service")] == [instance.instance_id]


async def test_backend_configurations(nats_url):  # 后端配置
    config = {
        'backend': 'memory'
    }
    memory = ServiceDiscoveryClient(config)
    await memory.initialize()
    await memory.shutdown()

    config = {
        'backend': 'nats',
        'backend_config': {
            'url': nats_url
        }
    }
    nats = ServiceDiscoveryClient(config)
    await nats.initialize()
    await nats.shutdown()

    # The backends prism-mesh does not offer are refused with the key at fault named.
    with pytest.raises(PrismError) as refused:
        await ServiceDiscoveryClient({'backend': 'consul'}).initialize()
    assert "consul" in str(refused.value) and "service_discovery.backend" in str(refused.value)
    for config in [
        {'backend': 'consul', 'backend_config': {'url': 'http://localhost:8500', 'datacenter': 'dc1', 'token': 'your-token'}},
        {'backend': 'etcd', 'backend_config': {'url': 'http://localhost:2379', 'username': 'user', 'password': 'pass'}},
        {'backend': 'redis', 'backend_config': {'url': 'redis://localhost:6379', 'password': 'your-password'}},
    ]:
        with pytest.raises(PrismError) as refused:
            await ServiceDiscoveryClient(config).initialize()
        assert "service_discovery.backend" in str(refused.value), str(refused.value)
        assert refused.value.kind == "invalid configuration"


async def test_full_configuration_example(nats_url):  # 完整配置示例
    config = {
        # 后端配置
        'backend': 'nats',
        'backend_config': {
            'url': nats_url
        },

        # 健康检查配置
        'health_check_interval': 30,  # 健康检查间隔（秒）
        'instance_ttl': 300,          # 实例过期时间（秒）
        'cleanup_interval': 60,       # 清理间隔（秒）

        # 自动注册配置
        'auto_register': True,
        'auto_deregister': True
    }
    client = ServiceDiscoveryClient(config)
    await client.initialize()
    await client.shutdown()


async def test_api_gateway_integration(nats_url):  # API网关集成
    class APIGateway:
        def __init__(self):
            self.discovery = ServiceDiscoveryClient({
                'backend': 'nats',
                'backend_config': {'url': nats_url}
            })

        async def start(self):
            await self.discovery.initialize()

            await self.discovery.register_myself(
                service_name="api-gateway-service",
                host="0.0.0.0",
                port=8080,
                metadata={"role": "gateway", "public": True},
                tags=["gateway", "api"]
            )

        async def route_request(self, service_name: str):
            instance = await self.discovery.get_service(service_name)
            if instance:
                return f"{instance.base_url}/api/v1"
            return None

    gateway = APIGateway()
    await gateway.start()
    assert await gateway.route_request("data-collector") is None
    # Healthy instances are what the balancer picks.
    await gateway.discovery.update_my_status(ServiceStatus.HEALTHY)
    assert await gateway.route_request("api-gateway-service") == "http://0.0.0.0:8080/api/v1"
    await gateway.discovery.shutdown()


async def test_data_collector_integration(nats_url):  # 数据采集服务集成
    class DataCollector:
        def __init__(self):
            self.discovery = ServiceDiscoveryClient({
                'backend': 'nats', 'backend_config': {'url': nats_url}
            })

        async def start(self):
            await self.discovery.initialize()

            await self.discovery.register_myself(
                service_name="data-collector",
                host="0.0.0.0",
                port=8081,
                metadata={
                    "exchanges": ["binance", "okx", "deribit"],
                    "role": "collector"
                },
                tags=["collector", "data"]
            )

            storage_url = await self.discovery.get_service_url("data-storage-service")
            if storage_url:
                print(f"连接到存储服务: {storage_url}")
            return storage_url

    collector = DataCollector()
    assert await collector.start() is None
    me = collector.discovery.my_instance
    assert me.metadata["exchanges"] == ["binance", "okx", "deribit"]
    await collector.discovery.shutdown()


async def test_event_handlers(nats_url):  # 事件处理
    client = ServiceDiscoveryClient({'backend': 'nats', 'backend_config': {'url': nats_url}})
    await client.initialize()
    seen = []

    async def on_service_registered(instance):
        print(f"新服务注册: {instance.service_name}")
        seen.append(("registered", instance.service_name))

    async def on_service_status_changed(data):
        print(f"服务状态变更: {data['service_name']} -> {data['new_status']}")
        seen.append(("status", data['service_name'], data['new_status']))

    client.add_event_handler('service_registered', on_service_registered)
    client.add_event_handler('service_status_changed', on_service_status_changed)

    await client.register_myself("my-service", "localhost", 8080)
    await client.update_my_status(ServiceStatus.HEALTHY)
    for _ in range(200):
        if len(seen) >= 2:
            break
        await asyncio.sleep(0.01)
    assert seen == [("registered", "my-service"), ("status", "my-service", ServiceStatus.HEALTHY)]
    await client.shutdown()


async def test_health_check(nats_url):  # 健康检查
    client = ServiceDiscoveryClient({'backend': 'nats', 'backend_config': {'url': nats_url}})
    await client.initialize()

    instance = await client.register_myself(
        service_name="my-service",
        host="localhost",
        port=8080,
        metadata={"health_endpoint": "/custom-health"}
    )

    is_healthy = await client.health_check_service("my-service", instance.instance_id)

    assert is_healthy is False  # nothing listens on localhost:8080 here
    await client.shutdown()


async def test_load_balancing(nats_url):  # 负载均衡
    client = ServiceDiscoveryClient({'backend': 'nats', 'backend_config': {'url': nats_url}})
    await client.initialize()

    instance = await client.get_service("data-storage-service")

    await client.registry.register_service(
        service_name="worker-service",
        host="localhost",
        port=8080,
        metadata={"weight": 150}  # 更高权重
    )

    assert instance is None
    workers = await client.discover("worker-service")
    assert [w.weight for w in workers] == [150]
    await client.shutdown()


async def test_service_isolation_by_tags(nats_url):  # 服务隔离
    client = ServiceDiscoveryClient({'backend': 'nats', 'backend_config': {'url': nats_url}})
    await client.initialize()
    await client.register_myself(
        service_name="sensitive-service",
        host="localhost",
        port=8080,
        tags=["internal", "secure"],      # 内部安全服务
        metadata={"security_level": "high"}
    )
    found = await client.discover("sensitive-service")
    assert found[0].tags == ["internal", "secure"]
    await client.shutdown()


async def test_graceful_shutdown(nats_url):  # 优雅关闭
    client = ServiceDiscoveryClient({'backend': 'nats', 'backend_config': {'url': nats_url}})
    await client.initialize()
    await client.register_myself("my-service", "localhost", 8080)

    async def graceful_shutdown():
        await client.update_my_status(ServiceStatus.MAINTENANCE)
        await asyncio.sleep(5)  # 等待请求完成

        await client.deregister_myself()
        await client.shutdown()

    # The seed installs it as a signal handler; here it runs directly (5 s of drain).
    assert signal.SIGTERM
    await graceful_shutdown()


async def test_troubleshooting(nats_url):  # 故障排除
    client = ServiceDiscoveryClient({'backend': 'nats', 'backend_config': {'url': 'nats://127.0.0.1:1'}})
    try:
        await client.initialize()
    except Exception as e:
        print(f"后端连接失败: {e}")
        failed = e
    assert isinstance(failed, PrismError) and failed.kind == "connection failed"

    client = ServiceDiscoveryClient({'backend': 'nats', 'backend_config': {'url': nats_url}})
    await client.initialize()
    await client.register_myself("my-service", "localhost", 8080)
    all_services = await client.list_all_services()
    print(f"所有服务: {list(all_services.keys())}")
    assert list(all_services.keys()) == ["my-service"]
    assert client.list_all_services()["my-service"][0].port == 8080
    await client.shutdown()
