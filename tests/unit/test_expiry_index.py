"""The dedupe expiry index: a sweep returns what is due, bucket by bucket, and never what is not."""

from __future__ import annotations

import pytest

from pipeline.expiry_index import ExpiryIndex

H1, H2, H3 = "a" * 64, "0123456789abcdef" * 4, "f" * 64


def test_keys_come_due_once_their_whole_bucket_is_older_than_the_window() -> None:
    index = ExpiryIndex(bucket_ms=1000)
    index.add(H1, 10_000)  # bucket 10: 10_000..10_999
    index.add(H2, 10_999)
    index.add(H3, 11_000)  # bucket 11
    assert len(index) == 3
    # window 5 s: H2 (seen at 10_999) expires at 15_999; the bucket is due only then
    assert index.pop_due(now_ms=15_998, window_ms=5000) == []
    assert sorted(index.pop_due(now_ms=15_999, window_ms=5000)) == sorted([H1, H2])
    assert index.pop_due(now_ms=15_999, window_ms=5000) == []  # popped: not returned twice
    assert index.pop_due(now_ms=16_999, window_ms=5000) == [H3]
    assert len(index) == 0


@pytest.mark.parametrize("key", ["A" * 64, "short", "g" * 64, "é" * 32])
def test_keys_that_are_not_lower_case_hashes_come_back_unchanged(key: str) -> None:
    index = ExpiryIndex(bucket_ms=1000)
    index.add(key, 0)
    index.add(H1, 0)
    assert sorted(index.pop_due(now_ms=10_000, window_ms=1000)) == sorted([key, H1])


def test_a_sweep_touches_only_what_is_due() -> None:
    index = ExpiryIndex(bucket_ms=60_000)
    for n in range(10_000):
        index.add(f"{n:064x}", 12_000_000 + n * 100)  # 1,000 s of entries from a bucket's start: 17 buckets
    due = index.pop_due(now_ms=12_000_000 + 120_000 - 1 + 1000, window_ms=1000)
    assert len(due) == 1200 and len(index) == 8800  # the first two minutes' buckets only
