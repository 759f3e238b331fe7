#!/usr/bin/env python3
"""Writes records.json: instance and event records with the verdict every reader of
docs/protocol.md must reach. Written from the specification, not from the Rust code, with
the reference MessagePack library (pip install msgpack), so the corpus is what another
language's writer produces. Regenerate: python3 tests/conformance/generate.py
"""
import json
import os
import uuid

import msgpack

ID = uuid.UUID("0f8c2d4e-7b1a-4c3d-9e5f-2a6b8c9e1f00")
KEY = f"orders.{ID}"
T = 1_765_000_000_000  # milliseconds since the epoch


def instance(**changes):
    fields = {
        "service": "orders",
        "id": ID.bytes,
        "host": "10.0.0.7",
        "port": 8080,
        "scheme": "http",
        "metadata": {"region": "eu-west", "weight": 50},
        "tags": ["v2"],
        "status": "healthy",
        "weight": 50,
        "zone": "eu-west-1a",
        "registered_at": T,
        "updated_at": T,
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not DROP}


def record(inst=None, **changes):
    fields = {"v": 1, "instance": inst if inst is not None else instance(), "ttl_ms": 10_000, "reason": None}
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not DROP}


def event(inst=None, **changes):
    fields = {
        "v": 1,
        "event": "status",
        "instance": inst if inst is not None else instance(),
        "previous_status": "starting",
        "reason": "ready",
        "at": T,
        "origin": "6d1e9c7a-9f3b-4b8e-8c2a-1d4f5e6a7b8c",
    }
    fields.update(changes)
    return {k: v for k, v in fields.items() if v is not DROP}


DROP = object()


def pack(value):
    return msgpack.packb(value, use_bin_type=True)


def raw(hexstr):
    return bytes.fromhex(hexstr)


class Wide:
    """An unsigned integer in the 64-bit encoding (readers accept any width)."""


def packed_with_wide_port():
    # port 8080 as uint64 (0xcf): build the instance map by hand
    inst = instance()
    body = bytearray()
    body += bytes([0x80 | len(inst)])
    for k, v in inst.items():
        body += pack(k)
        body += b"\xcf" + (8080).to_bytes(8, "big") if k == "port" else pack(v)
    rec = {"v": 1, "ttl_ms": 10_000}
    out = bytearray([0x80 | (len(rec) + 1)])
    for k, v in rec.items():
        out += pack(k) + pack(v)
    out += pack("instance") + body
    return bytes(out)


def deep_metadata(levels):
    value = "leaf"
    for _ in range(levels):
        value = [value]
    return value


cases = []


def put(name, body, valid, why, key=KEY, nats_ttl="10s"):
    cases.append({"kind": "put", "name": name, "key": key, "nats_ttl": nats_ttl,
                  "body": body.hex(), "valid": valid, "why": why})


def ev(name, body, valid, why):
    cases.append({"kind": "event", "name": name, "body": body.hex(), "valid": valid, "why": why})


# Valid puts.
put("full record", pack(record(reason="ready")), True, "every field set")
put("required fields only", pack({"v": 1, "instance": instance(metadata=DROP, tags=DROP, zone=DROP)}), True,
    "ttl_ms, reason, metadata, tags and zone are optional")
put("optional fields nil", pack(record(instance(metadata=None, tags=None, zone=None), ttl_ms=None, reason=None)), True,
    "an optional field may be nil")
put("unknown fields", pack(record(instance(shiny={"new": [1, 2]}), extra=b"\x00\x01")), True,
    "readers ignore fields they do not know, whatever their type")
put("fields in another order", pack(dict(reversed(list(record().items())))), True, "order is not significant")
put("uuid as 16 integers", pack(record(instance(id=list(ID.bytes)))), True,
    "an array of exactly 16 integers 0..255 is accepted for the id")
put("wide integer encoding", packed_with_wide_port(), True, "any integer encoding that fits")
put("newer version", pack(record(v=2)), True, "readers accept any v >= 1")
put("port 0", pack(record(instance(port=0))), True, "port 0 is allowed")
put("ttl in Go duration form", pack(record()), True, "Nats-TTL 1m30s", nats_ttl="1m30s")
put("ttl of one hour", pack(record()), True, "the longest TTL peers accept", nats_ttl="3600")
put("metadata nested json-like values", pack(record(instance(metadata={"a": [1, 2.5, None, True, {"b": "c"}]}))), True,
    "metadata holds nil, booleans, numbers, strings, arrays and string-keyed maps")
put("metadata value nested 32 levels", pack(record(instance(metadata={"d": deep_metadata(32)}))), True,
    "a metadata value may be nested 32 levels (section 3.3)")

# Invalid puts.
put("no Nats-TTL", pack(record()), False, "a record without a TTL could never expire", nats_ttl=None)
put("Nats-TTL never", pack(record()), False, "a record that never expires", nats_ttl="never")
put("Nats-TTL above an hour", pack(record()), False, "longer than 3600 s", nats_ttl="2h")
put("integer field names", pack({0: 1, 1: instance()}), False, "field names must be strings")
put("record as positional array", pack([1, instance(), 10_000, None]), False, "a record is a map")
put("instance as positional array", pack(record(list(instance().values()))), False, "an instance is a map")
put("instance field names as binary", pack(record({k.encode(): v for k, v in instance().items()})), False,
    "field names must be strings, not binary")
put("service as binary", pack(record(instance(service=b"orders"))), False, "strings must be str, not bin")
put("host as binary", pack(record(instance(host=b"10.0.0.7"))), False, "strings must be str, not bin")
put("status as binary", pack(record(instance(status=b"healthy"))), False, "strings must be str, not bin")
put("reason as binary", pack(record(reason=b"ready")), False, "strings must be str, not bin")
put("tag as binary", pack(record(instance(tags=[b"v2"]))), False, "tags are strings")
put("binary metadata value", pack(record(instance(metadata={"k": b"\x00"}))), False, "metadata holds no binary")
put("integer metadata key", pack(record(instance(metadata={1: "x"}))), False, "metadata keys are strings")
put("extension in metadata", pack(record(instance(metadata={"k": msgpack.ExtType(1, b"x")}))), False,
    "metadata holds no extension types")
put("uuid as string", pack(record(instance(id=str(ID)))), False, "the id is bin(16), not a string")
put("uuid of 15 bytes", pack(record(instance(id=ID.bytes[:15]))), False, "the id is exactly 16 bytes")
put("version 0", pack(record(v=0)), False, "v must be at least 1")
put("missing host", pack(record(instance(host=DROP))), False, "host is required")
put("missing weight", pack(record(instance(weight=DROP))), False, "weight is required on the wire")
put("nil status", pack(record(instance(status=None))), False, "a required field may not be nil")
put("status in capitals", pack(record(instance(status="Healthy"))), False, "enumerations are case-sensitive")
put("port above 16 bits", pack(record(instance(port=70000))), False, "port is uint16")
put("negative weight", pack(record(instance(weight=-1))), False, "weight is uint32")
put("float port", pack(record(instance(port=8080.0))), False, "no floats where an integer is expected")
put("negative timestamp", pack(record(instance(registered_at=-1))), False, "timestamps are unsigned")
put("body names another service", pack(record(instance(service="billing"))), False, "body and key must agree")
put("body names another id", pack(record(instance(id=uuid.uuid4().bytes))), False, "body and key must agree")
put("key with uppercase uuid", pack(record()), False, "keys use the lowercase hyphenated uuid",
    key=f"orders.{str(ID).upper()}")
put("empty host", pack(record(instance(host=""))), False, "host is 1 to 253 bytes")
put("service name with a dot", pack(record(instance(service="or.ders"))), False, "a service name is one subject token",
    key=f"or.ders.{ID}")
put("metadata value nested 33 levels", pack(record(instance(metadata={"d": deep_metadata(33)}))), False,
    "deeper than the 32 levels of section 3.3")
put("payload nested 41 levels", pack(record(instance(metadata={"d": deep_metadata(38)}))), False,
    "deeper than 40 levels in the whole payload (refused before decoding)")
put("not MessagePack", raw("c1"), False, "0xc1 is never used")
put("truncated", pack(record())[:-3], False, "the payload ends inside a value")

# Events.
ev("status event", pack(event()), True, "every field set")
ev("registered event, optional fields omitted", pack(event(event="registered", previous_status=DROP, reason=DROP)), True,
   "previous_status and reason are optional")
ev("expired event", pack(event(event="expired", previous_status=None, reason="ttl")), True, "an expiry")
ev("event name in capitals", pack(event(event="Status")), False, "event names are lowercase")
ev("unknown event name", pack(event(event="renamed")), False, "only the five event names")
ev("integer field names", pack({i: v for i, v in enumerate(event().values())}), False, "field names must be strings")
ev("event as positional array", pack(list(event().values())), False, "an event record is a map")
ev("origin as binary", pack(event(origin=b"peer")), False, "strings must be str, not bin")
ev("float time", pack(event(at=1.5)), False, "at is an unsigned integer")
ev("missing origin", pack(event(origin=DROP)), False, "origin is required")

here = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(here, "records.json"), "w") as out:
    json.dump({"about": "prism-mesh protocol v1 conformance corpus: see README.md here",
               "cases": cases}, out, indent=1)
    out.write("\n")
print(f"{len(cases)} cases")
