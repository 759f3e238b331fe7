"""A Consul client, as a Consul shop runs it, against `prism serve`.

Registers a service with a TTL check through the agent API, keeps passing the check,
and discovers the service from the catalog with a second client. Prints one JSON line per
step. Stops passing when a line `stop` arrives on stdin, and exits.

    python ttl_client.py <gateway host> <gateway port>
"""
import json
import sys
import threading
import time

import consul


def say(**fields):
    print(json.dumps(fields), flush=True)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    registrar = consul.Consul(host=host, port=port)
    registrar.agent.service.register(
        "pyweb",
        service_id="pyweb-1",
        address="127.0.0.1",
        port=9090,
        tags=["py"],
        meta={"lang": "python"},
        check=consul.Check.ttl("3s"),
    )
    registrar.agent.check.ttl_pass("service:pyweb-1", notes="up")
    say(step="registered")

    stop = threading.Event()

    def keep_passing():
        while not stop.wait(1.0):
            registrar.agent.check.ttl_pass("service:pyweb-1")

    passer = threading.Thread(target=keep_passing, daemon=True)
    passer.start()

    finder = consul.Consul(host=host, port=port)
    deadline = time.time() + 10
    while True:
        index, nodes = finder.catalog.service("pyweb")
        if nodes or time.time() > deadline:
            break
        time.sleep(0.1)
    say(step="catalog", index=index, nodes=[
        {"id": n["ServiceID"], "address": n["ServiceAddress"], "port": n["ServicePort"],
         "tags": n["ServiceTags"], "meta": n["ServiceMeta"]} for n in nodes])
    _, healthy = finder.health.service("pyweb", passing=True)
    say(step="health", passing=[e["Service"]["ID"] for e in healthy])

    for line in sys.stdin:
        if line.strip() == "stop":
            break
    stop.set()
    passer.join()
    say(step="stopped")


if __name__ == "__main__":
    main()
