#!/usr/bin/env python3
"""Writes the named seed inputs of every fuzz target into corpus/<target>/seed-*.

Run from anywhere: `python3 fuzz/make_seeds.py`. The seeds are checked in; this script
documents how they were made. Record bodies come from the hand-made hostile corpus in
crates/prism-mesh/tests/corpus/ (see its make_corpus.py), so both stay one set of bytes.
Inputs a fuzzing run found and `cargo fuzz cmin` kept sit beside the seeds, named by hash.
"""
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
RECORDS = os.path.join(HERE, "..", "crates", "prism-mesh", "tests", "corpus")
ID = "0f8c2d4e-6b1a-4c3d-9e2f-2a6b8c9e1f00"  # the id of the hostile corpus' records
KEY = f"orders.{ID}".encode()


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"seed-{name}"), "wb") as f:
        f.write(data)


def record(name):
    with open(os.path.join(RECORDS, name), "rb") as f:
        return f.read()


# Record bodies: every file of the hostile corpus, for both record decoders.
for name in sorted(os.listdir(RECORDS)):
    if name.endswith(".bin"):
        for target in ("instance_record", "event_record"):
            write(target, name[: -len(".bin")], record(name))

for name, key in {
    "canonical": KEY,
    "uppercase-id": KEY.upper(),
    "simple-id": b"orders." + ID.replace("-", "").encode(),
    "braced-id": b"orders.{" + ID.encode() + b"}",
    "no-dot": b"orders",
    "two-dots": b"orders.eu." + ID.encode(),
    "wildcard-service": b"ord*rs." + ID.encode(),
    "empty-service": b"." + ID.encode(),
    "non-utf8": b"\xffrders." + ID.encode(),
}.items():
    write("instance_key", name, key)

for name, value in {
    "seconds": b"30s",
    "bare-number": b"30",
    "compound": b"1m30s",
    "never": b"never",
    "zero": b"0s",
    "fraction": b"1.5s",
    "huge": b"18446744073709551615",
    "huge-unit": b"18446744073709551615s",
    "spaces": b"  10s ",
    "days": b"400days",
}.items():
    write("ttl_header", name, value)


def message(key=KEY, marker=b"", operation=b"", reason=b"", ttl=b"", body=b""):
    """Key, Nats-Marker-Reason, KV-Operation, Prism-Reason, Nats-TTL and body, as
    prism_mesh::fuzzing::bucket_message splits them (an empty header is absent)."""
    return b"\n".join([key, marker, operation, reason, ttl, body])


VALID = record("valid-instance-record.bin")
for name, data in {
    "put": message(ttl=b"30s", body=VALID),
    "put-without-ttl": message(body=VALID),
    "put-ttl-never": message(ttl=b"never", body=VALID),
    "put-ttl-above-bound": message(ttl=b"2h", body=VALID),
    "put-under-another-key": message(key=b"orders.00000000-0000-4000-8000-000000000000", ttl=b"30s", body=VALID),
    "put-garbage-body": message(ttl=b"30s", body=b"\xc1\xc1\xc1"),
    "put-deep-metadata": message(ttl=b"30s", body=record("nesting-1000-in-metadata.bin")),
    "delete": message(operation=b"DEL", reason=b"rolling deploy", ttl=b"1m"),
    "delete-lowercase": message(operation=b"del", ttl=b"30s", body=VALID),
    "purge": message(operation=b"PURGE"),
    "marker-expired": message(marker=b"MaxAge", operation=b"PURGE"),
    "marker-removed": message(marker=b"Remove"),
    "marker-on-a-put": message(marker=b"MaxAge", ttl=b"30s", body=VALID),
}.items():
    write("bucket_message", name, data)
