"""The pipeline's own murmur2 is Kafka's: the by-hash topic and the dedupe table stay co-partitioned with
every other Kafka client (aiokafka's pure-Python murmur2 is the reference)."""

from __future__ import annotations

import hashlib

import pytest
from aiokafka.partitioner import murmur2 as reference
from hypothesis import given
from hypothesis import strategies as st

from pipeline import produce
from pipeline.produce import VECTOR_MIN_KEYS, murmur2, murmur2_many, partition_for


@given(st.binary(max_size=300))
def test_murmur2_is_kafkas_for_any_bytes(data: bytes) -> None:
    assert murmur2(data) == reference(data)


def test_the_partition_of_an_event_hash_is_the_default_partitioners() -> None:
    for n in range(2000):
        key = hashlib.sha256(str(n).encode()).hexdigest().encode()
        for partitions in (1, 3, 6, 12):
            assert partition_for(key, partitions) == (reference(key) & 0x7FFFFFFF) % partitions
    assert murmur2(b"") == reference(b"")
    assert partition_for(None, 6, fallback=7) == 1


@given(st.lists(st.binary(max_size=80), max_size=40), st.integers(0, 67), st.integers(0, 60))
def test_murmur2_many_is_murmur2_of_each_key(mixed: list[bytes], length: int, same: int) -> None:
    # Keys of one length (hashed as columns once there are VECTOR_MIN_KEYS of them), mixed with any others.
    keys = [(hashlib.sha512(str(n).encode()).digest() * 2)[:length] for n in range(same)] + mixed
    assert murmur2_many(keys) == [reference(key) for key in keys]


def test_murmur2_many_takes_the_column_path_for_event_hashes(monkeypatch: pytest.MonkeyPatch) -> None:
    columns = produce._murmur2_columns
    calls: list[int] = []

    def counted(keys: list[bytes], length: int) -> list[int]:
        calls.append(len(keys))
        return columns(keys, length)

    monkeypatch.setattr(produce, "_murmur2_columns", counted)
    keys = [hashlib.sha256(str(n).encode()).hexdigest().encode() for n in range(VECTOR_MIN_KEYS * 10)]
    assert murmur2_many(keys) == [reference(key) for key in keys]
    assert calls == [len(keys)], "event hashes of one length were not hashed as columns"
    assert murmur2_many(keys[: VECTOR_MIN_KEYS - 1]) == [reference(key) for key in keys[: VECTOR_MIN_KEYS - 1]]
    assert calls == [len(keys)], "fewer than VECTOR_MIN_KEYS keys should take the scalar murmur2"
