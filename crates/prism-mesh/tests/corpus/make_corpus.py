#!/usr/bin/env python3
"""Writes the hand-made hostile corpus fed to every wire decoder by
`protocol::proptests::hostile_corpus_*` (crates/prism-mesh/src/protocol/proptests.rs).

Run from anywhere: `python3 crates/prism-mesh/tests/corpus/make_corpus.py`. The files are
checked in; this script only documents how they were made (no msgpack package needed).
`expect.txt` says what each decoder must make of each file.
"""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ID = "0f8c2d4e-6b1a-4c3d-9e2f-2a6b8c9e1f00"
# A UUID travels as MessagePack bin 16 (protocol.md section 4), never as a string.
ID_BIN = b"\xc4\x10" + bytes.fromhex(ID.replace("-", ""))


def s(text):
    b = text.encode() if isinstance(text, str) else text
    if len(b) < 32:
        return bytes([0xA0 | len(b)]) + b
    if len(b) < 256:
        return b"\xd9" + bytes([len(b)]) + b
    if len(b) < 65536:
        return b"\xda" + struct.pack(">H", len(b)) + b
    return b"\xdb" + struct.pack(">I", len(b)) + b


def u(n):
    if n < 128:
        return bytes([n])
    if n < 65536:
        return b"\xcd" + struct.pack(">H", n)
    if n < 2**32:
        return b"\xce" + struct.pack(">I", n)
    return b"\xcf" + struct.pack(">Q", n)


def m(pairs):
    """A map from a list of (encoded key, encoded value)."""
    n = len(pairs)
    head = bytes([0x80 | n]) if n < 16 else b"\xde" + struct.pack(">H", n)
    return head + b"".join(k + v for k, v in pairs)


def instance(**override):
    fields = {
        "service": s("orders"),
        "id": ID_BIN,
        "host": s("10.0.0.7"),
        "port": u(8080),
        "scheme": s("http"),
        "metadata": m([]),
        "tags": b"\x90",
        "status": s("healthy"),
        "weight": u(100),
        "zone": b"\xc0",
        "registered_at": u(1_700_000_000_000),
        "updated_at": u(1_700_000_000_000),
    }
    fields.update(override)
    return m([(s(k), v) for k, v in fields.items() if v is not None])


def record(inst=None, **override):
    fields = {"v": u(1), "instance": inst or instance(), "ttl_ms": u(10_000), "reason": b"\xc0"}
    fields.update(override)
    return m([(s(k), v) for k, v in fields.items() if v is not None])


def event(inst=None, **override):
    fields = {
        "v": u(1),
        "event": s("registered"),
        "instance": inst or instance(),
        "previous_status": b"\xc0",
        "reason": b"\xc0",
        "at": u(1_700_000_000_000),
        "origin": s("peer-1"),
    }
    fields.update(override)
    return m([(s(k), v) for k, v in fields.items() if v is not None])


DEEP = 100_000
FILES = {
    # Sanity anchors: the real shapes decode.
    "valid-instance-record.bin": record(),
    "valid-event-record.bin": event(),
    # Sizes.
    "empty.bin": b"",
    "one-byte-fixmap.bin": b"\x81",
    "one-byte-nil.bin": b"\xc0",
    "one-byte-reserved-c1.bin": b"\xc1",
    "one-byte-ff.bin": b"\xff",
    # Length prefixes promising far more than follows.
    "huge-array32-prefix.bin": b"\xdd\xff\xff\xff\xff",
    "huge-map32-prefix.bin": b"\xdf\xff\xff\xff\xff" + s("v") + u(1),
    "huge-str32-prefix-value.bin": m([(s("v"), u(1)), (s("instance"), b"\xdb\xff\xff\xff\xff" + b"x")]),
    "huge-bin32-prefix.bin": b"\xc6\xff\xff\xff\xff",
    "huge-metadata-map32-prefix.bin": record(instance(metadata=b"\xdf\xff\xff\xff\xff")),
    "huge-tags-array32-prefix.bin": record(instance(tags=b"\xdd\xff\xff\xff\xff")),
    # Nesting far past any sane depth, at the top and inside a metadata value.
    "deep-array-top-level.bin": b"\x91" * DEEP + b"\xc0",
    "deep-map-top-level.bin": (b"\x81" + s("k")) * DEEP + b"\xc0",
    "deep-array-in-metadata.bin": record(instance(metadata=m([(s("k"), b"\x91" * DEEP + b"\xc0")]))),
    "deep-map-in-metadata.bin": record(instance(metadata=m([(s("k"), (b"\x81" + s("k")) * DEEP + b"\xc0")]))),
    "nesting-1000-in-metadata.bin": record(instance(metadata=m([(s("k"), b"\x91" * 1000 + b"\xc0")]))),
    # At MAX_METADATA_DEPTH (32) a metadata value is fine; one level more decodes but fails
    # validation; beyond MAX_PAYLOAD_DEPTH (40 containers in all) it does not decode.
    "nesting-32-in-metadata.bin": record(instance(metadata=m([(s("k"), b"\x91" * 32 + b"\xc0")]))),
    "nesting-33-in-metadata.bin": record(instance(metadata=m([(s("k"), b"\x91" * 33 + b"\xc0")]))),
    "nesting-38-in-metadata.bin": record(instance(metadata=m([(s("k"), b"\x91" * 38 + b"\xc0")]))),
    # Valid MessagePack of the wrong shape or types.
    "wrong-top-level-array.bin": b"\x94" + u(1) + instance() + u(10) + b"\xc0",
    "wrong-top-level-string.bin": s("hello"),
    "wrong-v-is-string.bin": record(v=s("1")),
    "wrong-v-negative.bin": record(v=b"\xff"),
    "wrong-v-zero.bin": record(v=u(0)),
    "wrong-v-too-big.bin": record(v=u(2**40)),
    "wrong-instance-is-array.bin": record(b"\x92" + s("orders") + ID_BIN),
    "wrong-id-is-int.bin": record(instance(id=u(42))),
    "wrong-id-is-uuid-string.bin": record(instance(id=s(ID))),
    "wrong-id-bin-15-bytes.bin": record(instance(id=b"\xc4\x0f" + ID_BIN[2:17])),
    "wrong-port-too-big.bin": record(instance(port=u(70_000))),
    "wrong-port-negative.bin": record(instance(port=b"\xd0\x80")),
    "wrong-status-unknown-name.bin": record(instance(status=s("on-fire"))),
    "wrong-weight-float.bin": record(instance(weight=b"\xcb" + struct.pack(">d", 1.5))),
    "wrong-timestamp-negative.bin": record(instance(registered_at=b"\xd3" + struct.pack(">q", -1))),
    "wrong-metadata-int-keys.bin": record(instance(metadata=m([(u(1), u(2))]))),
    "wrong-tags-not-strings.bin": record(instance(tags=b"\x92\x01\x02")),
    "missing-instance.bin": record(instance=None),
    "missing-service.bin": record(instance(service=None)),
    "json-text.bin": b'{"v":1,"instance":{"service":"orders"}}',
    "event-bytes-as-record-fields-swapped.bin": event(event=s("exploded")),
    "event-at-is-string.bin": event(at=s("yesterday")),
    # Well-formed records that break the limits of section 3.3 (decode, then fail validation).
    "invalid-host-1mb.bin": record(instance(host=s("h" * (1 << 20)))),
    "invalid-metadata-1mb-string.bin": record(instance(metadata=m([(s("blob"), s("x" * (1 << 20)))]))),
    "invalid-service-with-dot.bin": record(instance(service=s("orders.eu"))),
    "invalid-empty-host.bin": record(instance(host=s(""))),
    "invalid-scheme-with-slash.bin": record(instance(scheme=s("http://"))),
    "invalid-100-tags.bin": record(instance(tags=b"\xdc\x00\x64" + s("t") * 100)),
    "invalid-empty-zone.bin": record(instance(zone=s(""))),
    # Not UTF-8 where strings are expected.
    "non-utf8-service.bin": record(instance(service=s(b"\xff\xfeorders"))),
    "non-utf8-metadata-key.bin": record(instance(metadata=m([(s(b"\xc3\x28"), u(1))]))),
    "non-utf8-reason.bin": record(reason=s(b"\xed\xa0\x80")),
    "non-utf8-origin.bin": event(origin=s(b"\x80\x80")),
    # Trailing garbage after a valid record (MessagePack reads one value and stops).
    "valid-record-trailing-garbage.bin": record() + b"\xc1\xff\x00garbage",
}

if __name__ == "__main__":
    for name, data in FILES.items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(FILES)} files to {HERE}")
